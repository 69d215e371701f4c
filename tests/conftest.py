"""Shared fixtures: deterministic seeds, two threads (the CI machine has two cores), golden-file paths."""

import os
from pathlib import Path

import pytest
import torch

import matmamba_vision  # noqa: F401  (registers the models with timm)

DATA_DIR = Path(__file__).parent / "data"
SHARED_GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden"

# The Triton kernel tests need the interpreter chosen before triton is imported: tests/test_triton_kernels.py
# runs them in a TRITON_INTERPRET=1 subprocess, which alone collects them.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["triton_interp"]

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
