"""Shared fixtures: deterministic seeds, two threads (the CI machine has two cores), golden-file paths."""
from pathlib import Path

import pytest
import torch

import matmamba_vision  # noqa: F401  (registers the models with timm)

DATA_DIR = Path(__file__).parent / "data"
SHARED_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
