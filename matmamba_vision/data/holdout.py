"""A held-out validation split carved from the training split: ``minival`` (a stratified, seeded subset of
``train``) and ``minitrain`` (the rest), so that choices are made without looking at the test set."""

from __future__ import annotations

import hashlib
from typing import Any, Dict, Optional

import numpy as np

__all__ = [
    "HOLDOUT_SEED",
    "HOLDOUT_SPLITS",
    "SPLITS",
    "holdout_size",
    "holdout_indices",
    "holdout_record",
    "holdout_subset",
    "source_split",
    "splits_overlap",
    "SPLITS_HELP",
]

HOLDOUT_SEED = 0
HOLDOUT_SPLITS = ("minitrain", "minival")
SPLITS = ("train", "val", *HOLDOUT_SPLITS)
SPLITS_HELP = "train, val, or minitrain/minival (train less a held-out 1/6, and that held-out part; fmnist/folder)"


def source_split(split: str) -> str:
    """The stored split a split's images come from: 'train' for minitrain/minival, else ``split`` itself."""
    return "train" if split in HOLDOUT_SPLITS else split


def splits_overlap(a: str, b: str) -> bool:
    """Whether two splits share images: the same split, or 'train' and one of its parts minitrain/minival."""
    return a == b or {a, b} in ({"train", "minitrain"}, {"train", "minival"})


def _labels(labels: Any) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or not len(arr) or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(
            f"labels must be a non-empty 1-d array of integer class ids, got shape {arr.shape} {arr.dtype}"
        )
    return arr.astype(np.int64)


def holdout_size(n: int) -> int:
    """Held-out images for a training split of ``n``: ``min(10_000, n // 6)`` (Fashion-MNIST: 10,000 of 60,000)."""
    if int(n) < 6:
        raise ValueError(f"n: a held-out split needs a training split of at least 6 images, got {n}")
    return min(10_000, int(n) // 6)


def holdout_indices(labels: Any, size: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified subset of ``size`` images: each class gets its share of ``size``
    (largest-remainder rounding, ties to the lower class id, so the total is exactly ``size``), drawn without
    replacement by ``np.random.default_rng(seed)``, class by class in increasing class id."""
    labels = _labels(labels)
    n = len(labels)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 0 < size < n:
        raise ValueError(f"size must be an integer in [1, {n - 1}] (fewer than the {n} labels), got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    classes, counts = np.unique(labels, return_counts=True)
    quota, remainder = np.divmod(counts * int(size), n)  # exact integer shares: quota + remainder / n
    order = np.lexsort((classes, -remainder))  # largest remainder first, then the lower class id
    quota[order[: int(size) - int(quota.sum())]] += 1
    rng = np.random.default_rng(int(seed))
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def holdout_subset(split: str, labels: Any) -> Optional[np.ndarray]:
    """Indices into the training split's ``labels`` of ``split`` ('minival': the held-out images, 'minitrain':
    the others), None for any other split (used whole)."""
    if split not in HOLDOUT_SPLITS:
        return None
    labels = _labels(labels)
    if len(labels) < 6:
        raise ValueError(f"split {split!r}: the train split has {len(labels)} images, a held-out split needs 6 or more")
    held = holdout_indices(labels, holdout_size(len(labels)), HOLDOUT_SEED)
    if split == "minival":
        return held
    keep = np.ones(len(labels), dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep).astype(np.int64)


def holdout_record(labels: Any) -> Dict[str, Any]:
    """What defines the held-out split of a training split with these ``labels``: sizes, seed, per-class
    counts and the SHA-256 of its sorted indices (little-endian int64), for reports and cache keys."""
    labels = _labels(labels)
    size = holdout_size(len(labels))
    held = holdout_indices(labels, size, HOLDOUT_SEED)
    classes, counts = np.unique(labels[held], return_counts=True)
    per_class = {str(int(c)): 0 for c in np.unique(labels)}
    per_class.update({str(int(c)): int(k) for c, k in zip(classes, counts)})
    return {
        "train_split": "minitrain",
        "val_split": "minival",
        "size": int(size),
        "of": int(len(labels)),
        "seed": HOLDOUT_SEED,
        "per_class": per_class,
        "sha256": hashlib.sha256(held.astype("<i8").tobytes()).hexdigest(),
    }
