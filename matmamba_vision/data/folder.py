"""ImageNet-style folders (``ROOT/train/CLASS/*.jpg``, ``ROOT/val/CLASS/*.jpg``) through timm's dataset."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Callable, List, Optional

from PIL import Image
from timm.data import ImageDataset, create_dataset

from .holdout import HOLDOUT_SPLITS, holdout_subset, source_split

__all__ = ["SPLIT_DIRS", "split_dir", "CheckedImageDataset", "create_folder_dataset", "check_images"]

_logger = logging.getLogger(__name__)
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "minitrain": ("train",), "minival": ("train",)}


def split_dir(data_dir: str, split: str) -> Optional[Path]:
    """The folder of ``split`` under ``data_dir`` (``val`` also found as ``validation``; ``minitrain`` and
    ``minival`` are parts of ``train``), or None."""
    if split not in SPLIT_DIRS:
        raise ValueError(f"split must be one of {sorted(SPLIT_DIRS)}, got {split!r}")
    for name in SPLIT_DIRS[split]:
        if (Path(data_dir) / name).is_dir():
            return Path(data_dir) / name
    return None


class CheckedImageDataset(ImageDataset):
    """timm's ImageDataset, but an image that cannot be decoded raises ValueError naming the file, or, with
    ``skip_corrupt``, is logged with its path and replaced by the next readable sample."""

    def __init__(self, *args, skip_corrupt: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.skip_corrupt = skip_corrupt

    @property
    def classes(self) -> List[str]:
        mapping = self.reader.class_to_idx
        return sorted(mapping, key=mapping.get)

    def __getitem__(self, index: int):
        for _ in range(len(self.reader)):
            path = self.reader.filename(index, absolute=True)
            target = self.reader.samples[index][1]
            try:
                with Image.open(path) as im:
                    img = im.convert(self.input_img_mode or im.mode)
                break
            except (OSError, ValueError, SyntaxError) as e:
                if not self.skip_corrupt:
                    raise ValueError(f"unreadable image {path}: {e} (pass --skip-corrupt to skip such files)") from e
                _logger.warning("skipped corrupt image %s: %s", path, e)
                index = (index + 1) % len(self.reader)
        else:
            raise ValueError(f"no readable image in {self.reader.root}")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def check_images(dataset: CheckedImageDataset, max_files: int = 20000, seed: int = 0) -> None:
    """Open the headers of the dataset's files (all of them, or a random ``max_files``); ValueError names
    the first unreadable one. Cheap: PIL reads only the header."""
    indices = list(range(len(dataset.reader)))
    if len(indices) > max_files:
        indices = sorted(random.Random(seed).sample(indices, max_files))
    for i in indices:
        path = dataset.reader.filename(i, absolute=True)
        try:
            with Image.open(path) as im:
                _ = im.size  # header parsed
        except Exception as e:  # noqa: BLE001 - any failure here means the file cannot be used
            raise ValueError(f"unreadable image {path}: {e}") from e


def create_folder_dataset(
    data_dir: str,
    split: str,
    transform: Optional[Callable] = None,
    img_mode: str = "RGB",
    skip_corrupt: bool = False,
    verify: bool = True,
) -> CheckedImageDataset:
    """One split of an ImageNet-style folder (``minitrain``/``minival``: the parts of ``train`` of
    :mod:`.holdout`, stratified by the folder's targets); missing or empty folders, class lists that differ
    between ``train`` and ``val``, and (with ``verify`` and no ``skip_corrupt``) unreadable files raise ValueError."""
    if not data_dir or not Path(data_dir).is_dir():
        raise ValueError(f"data_dir: folder {data_dir!r} does not exist")
    root = split_dir(data_dir, split)
    if root is None:
        raise ValueError(f"data_dir: {data_dir} has no {'/'.join(SPLIT_DIRS[split])}/ folder for split {split!r}")

    def load(path: Path, tf=None) -> CheckedImageDataset:
        try:
            reader_ds = create_dataset(
                "", root=str(path), split=source_split(split), search_split=False, input_img_mode=img_mode
            )
        except RuntimeError as e:  # timm: 'Found 0 images in subfolders of ...'
            raise ValueError(f"data_dir: {path} is empty: {e}") from e
        if not len(reader_ds.reader.class_to_idx) or not len(reader_ds):
            raise ValueError(f"data_dir: {path} holds no class folders with images")
        parts = [Path(f).relative_to(path).parts for f, _ in reader_ds.reader.samples]
        nested = next((p for p in parts if len(p) != 2), None)
        if nested is not None:  # timm's reader would name the class after the innermost folder
            raise ValueError(
                f"data_dir: {path / Path(*nested)} is not directly in a class folder; the layout is "
                f"DATA_DIR/{split}/CLASS/IMAGE (no images at the top, no nested folders)"
            )
        used = {p[0] for p in parts}
        empty = sorted(
            d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and d.name not in used
        )
        if empty:
            raise ValueError(f"data_dir: class folders without images in {path}: {empty[:10]}")
        return CheckedImageDataset(
            str(path), reader=reader_ds.reader, input_img_mode=img_mode, transform=tf, skip_corrupt=skip_corrupt
        )

    dataset = load(root, transform)
    if split in HOLDOUT_SPLITS:
        samples = dataset.reader.samples
        subset = holdout_subset(split, [target for _, target in samples])
        dataset.reader.samples = [samples[i] for i in subset]
    other_split = "train" if split == "val" else "val"
    other = split_dir(data_dir, other_split)
    if other is not None:
        other_classes = load(other).classes
        if other_classes != dataset.classes:
            only_here = sorted(set(dataset.classes) - set(other_classes))
            only_there = sorted(set(other_classes) - set(dataset.classes))
            raise ValueError(
                f"data_dir: class folders differ between {split} and {other_split} in {data_dir} "
                f"(only in {split}: {only_here[:10]}; only in {other_split}: {only_there[:10]})"
            )
    if verify and not skip_corrupt:
        check_images(dataset)
    return dataset
