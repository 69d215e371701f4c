"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package (gzipped IDX files)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .holdout import SPLITS, holdout_subset, source_split

__all__ = ["FMNIST_DIR", "FMNIST_CLASSES", "fmnist_root", "read_idx", "load_fmnist", "FashionMNIST"]

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
FMNIST_CLASSES: List[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_PREFIX = {"train": "train", "val": "t10k"}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def fmnist_root(root: Optional[str] = None) -> Path:
    """The folder of the IDX files: ``root``, else ``$MATMAMBA_FMNIST_DIR``, else Debian's location."""
    path = Path(root or os.environ.get("MATMAMBA_FMNIST_DIR") or FMNIST_DIR)
    if not path.is_dir():
        raise ValueError(
            f"data_dir: Fashion-MNIST folder {path} does not exist; install Debian's dataset-fashion-mnist "
            "(apt-get install dataset-fashion-mnist) or pass the folder holding the *-ubyte.gz files"
        )
    return path


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array; a malformed file raises ValueError."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # EOFError: a truncated gzip stream
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim, dtype = data[3], np.dtype(_IDX_DTYPES[data[2]])
    if len(data) < 4 + 4 * ndim or (len(data) - 4 - 4 * ndim) % dtype.itemsize:
        raise ValueError(f"{path}: truncated IDX file ({len(data)} bytes for a {ndim}-d {dtype} array)")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({array.size} values for shape {shape})")
    return array.reshape(shape)


def load_fmnist(split: str = "train", root: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of ``split`` ('train': 60k, 'val': the 10k test set,
    'minitrain'/'minival': the 50k/10k parts of 'train' of :mod:`.holdout`)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} for Fashion-MNIST, got {split!r}")
    base = fmnist_root(root)
    files = [base / f"{_PREFIX[source_split(split)]}-{kind}-ubyte.gz" for kind in ("images-idx3", "labels-idx1")]
    for f in files:
        if not f.is_file():
            raise ValueError(f"data_dir: Fashion-MNIST file {f} is missing")
    images, labels = (read_idx(f) for f in files)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"{base}: image and label files of split {split!r} do not match")
    subset = holdout_subset(split, labels)
    if subset is not None:
        images, labels = images[subset], labels[subset]
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNIST(Dataset):
    """Fashion-MNIST as PIL images (converted to ``img_mode``, e.g. 'RGB' for 3-channel models)."""

    classes = FMNIST_CLASSES

    def __init__(
        self,
        split: str = "train",
        root: Optional[str] = None,
        transform: Optional[Callable] = None,
        img_mode: str = "L",
    ):
        self.images, self.targets = load_fmnist(split, root)
        self.split, self.transform, self.img_mode = split, transform, img_mode

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index].numpy(), mode="L")
        if self.img_mode != "L":
            img = img.convert(self.img_mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
