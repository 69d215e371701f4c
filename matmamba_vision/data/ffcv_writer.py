"""Write FFCV ``.beton`` files from an ImageNet-style folder (or Fashion-MNIST)::

    python -m matmamba_vision.data.ffcv_writer --data-dir /data/imagenet --output /data/imagenet-ffcv

writes ``OUTPUT/train.beton`` and ``OUTPUT/val.beton`` as the official run's files (``train_500_0.0_100``: raw
pixels, longest side at most 500 px, resized with OpenCV's INTER_AREA, which ffcv's writer uses) plus
``OUTPUT/{split}.json`` with class names and sample counts. ``--write-mode jpg`` stores JPEG instead (about a
fifth of the size; quality ``--jpeg-quality``). Needs the optional ffcv extra.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from torch.utils.data import Dataset

from ..flags import FlagType, nonneg_int, parse_flags, positive_int, run_script
from ..weights import atomic_write
from .ffcv_pipeline import beton_path, ffcv_meta_path, require_ffcv
from .fmnist import FashionMNIST
from .folder import create_folder_dataset

__all__ = ["write_beton", "main"]

JPEG_QUALITY = FlagType("jpeg_quality", int, lambda v: 1 <= v <= 100, "in [1, 100]")


class _RGBArrays(Dataset):
    """(H, W, 3) uint8 arrays and int labels from a PIL-yielding dataset (grey images become RGB)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        img, target = self.dataset[index]
        return np.asarray(img.convert("RGB"), dtype=np.uint8), int(target)


def write_beton(
    dataset,
    classes: Sequence[str],
    output: Path,
    max_resolution: int = 500,
    jpeg_quality: int = 100,
    write_mode: str = "raw",
    workers: int = 2,
) -> Path:
    """Write ``dataset`` (PIL image, label) to ``output`` (.beton) and its class list beside it."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if write_mode not in ("jpg", "raw", "smart", "proportion"):
        raise ValueError(f"write_mode must be one of jpg, raw, smart, proportion; got {write_mode!r}")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality),
        "label": IntField(),
    }
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        DatasetWriter(str(tmp), fields, num_workers=max(1, workers)).from_indexed_dataset(_RGBArrays(dataset))
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written file left behind
        raise
    tmp.replace(output)
    meta = json.dumps({"classes": list(classes), "num_samples": len(dataset)}, indent=1)
    atomic_write(ffcv_meta_path(output), lambda p: Path(p).write_text(meta))
    return output


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="folder", choices=("folder", "fmnist"), help="source of the images")
    p.add_argument("--data-dir", default=None, help="folder with train/ and val/ (or Fashion-MNIST's IDX files)")
    p.add_argument("--output", required=True, help="folder for {split}.beton and {split}.json")
    p.add_argument("--splits", nargs="+", default=["train", "val"], choices=("train", "val"))
    p.add_argument("--max-resolution", type=positive_int, default=500, help="longest side stored (official: 500)")
    p.add_argument("--jpeg-quality", type=JPEG_QUALITY, default=100, help="for jpg, smart, proportion (official: 100)")
    p.add_argument(
        "--write-mode",
        default="raw",
        choices=("jpg", "raw", "smart", "proportion"),
        help="ffcv RGBImageField mode (official: raw pixels)",
    )
    p.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images (logged) instead of stopping")
    p.add_argument("-j", "--workers", type=nonneg_int, default=4)
    try:  # checked before writing: ffcv's writer workers fail on bad values and the main process waits forever
        args = parse_flags(p, argv)
    except ValueError as e:
        p.error(str(e))
    if args.dataset == "folder" and not args.data_dir:
        p.error("--data-dir is required for --dataset folder")
    if not args.output:
        p.error(f"--output must be a folder, got {args.output!r}")
    if Path(args.output).exists() and not Path(args.output).is_dir():
        p.error(f"--output {args.output} is a file, not a folder")
    for split in args.splits:
        if args.dataset == "fmnist":
            ds = FashionMNIST(split, root=args.data_dir)
        else:
            ds = create_folder_dataset(args.data_dir, split, img_mode="RGB", skip_corrupt=args.skip_corrupt)
        out = write_beton(
            ds,
            ds.classes,
            beton_path(args.output, split),
            args.max_resolution,
            args.jpeg_quality,
            args.write_mode,
            args.workers,
        )
        print(f"wrote {out} ({len(ds)} images, {len(ds.classes)} classes)")


if __name__ == "__main__":
    run_script(main)  # bad flags or data: one clear line, no traceback, exit 2
