"""Helpers shared by the train/data tests: tiny image folders and tiny-model flags."""

from __future__ import annotations

import importlib.util
import os
import socket
import sys
from pathlib import Path
from typing import List, Sequence

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "--model",
    "matmamba_vision_tiny_patch4_28",
    "--model-kwargs",
    "{embed_dim: 32, depth: 2, d_state: 8, headdim: 4}",
]


def load_script(name: str):
    """One of the repository's scripts (``validate``, ``retrieval``, ``export``, ...) loaded as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_image_folder(
    root: Path,
    classes: Sequence[str] = ("ankle", "bag", "coat"),
    per_class: int = 4,
    size=(28, 28),
    splits=("train", "val"),
    seed: int = 0,
) -> Path:
    """ROOT/{train,val}/CLASS/*.png|*.jpg with a class-dependent mean colour (learnable), alternating formats."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = 40 + 80 * c
                arr = np.clip(rng.normal(base, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
    return root


def truncated_jpeg(path: Path, size=(64, 64)) -> Path:
    """A JPEG whose header parses but whose pixel data is cut off (fails only when decoded)."""
    arr = np.random.default_rng(1).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 200])
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(args: List[str]) -> List[str]:
    return [sys.executable, str(REPO / "train.py"), *args]


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env
