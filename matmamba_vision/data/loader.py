"""Loaders for every data source behind two calls: :func:`create_eval_loader` and :func:`create_train_loader`.

Both return an object that iterates over ``(images float tensor, targets long tensor)`` batches and carries
``.classes`` (class names) and ``.num_samples``. Data sources (``dataset``):

- ``''``: Fashion-MNIST when ``data_dir`` is None, an ImageNet-style folder otherwise;
- ``'fmnist'``: Fashion-MNIST (Debian's IDX files; ``data_dir`` may point at another copy);
- ``'folder'``: ``data_dir/train/CLASS/*`` and ``data_dir/val/CLASS/*`` through timm's dataset;
- ``'ffcv'``: ``data_dir/{train,val}.beton`` written by ``python -m matmamba_vision.data.ffcv_writer``.

Splits: ``train``, ``val`` and, for Fashion-MNIST and folders, ``minitrain``/``minival`` (:mod:`.holdout`).
"""

from __future__ import annotations

import json
from typing import Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from .batches import (
    EvalLoader,
    ResumableDistributedSampler,
    ShardSampler,
    TensorTrainLoader,
    TrainLoader,
    ignore_preemption_signals,
)
from .ffcv_pipeline import beton_path, create_ffcv_loader, ffcv_meta_path
from .fmnist import FMNIST_CLASSES, FashionMNIST, load_fmnist
from .folder import create_folder_dataset
from .holdout import HOLDOUT_SPLITS, SPLITS, holdout_record
from .transforms import (
    TensorAugment,
    create_eval_transform,
    create_train_transform,
    image_mode,
    official_aa,
    to_channels,
)

__all__ = [
    "DATASETS",
    "resolve_dataset",
    "dataset_classes",
    "EvalLoader",
    "TrainLoader",
    "TensorTrainLoader",
    "ShardSampler",
    "ResumableDistributedSampler",
    "create_eval_loader",
    "create_train_loader",
    "fmnist_data_config",
    "check_split",
    "train_holdout_record",
]

DATASETS = ("", "fmnist", "folder", "ffcv")


def resolve_dataset(dataset: str, data_dir: Optional[str]) -> str:
    """'' -> 'fmnist' without ``data_dir``, 'folder' with one; ValueError for unknown names."""
    dataset = (dataset or "").lower()
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS[1:]} (or '' to choose from data_dir), got {dataset!r}")
    if dataset == "":
        return "folder" if data_dir else "fmnist"
    if dataset in ("folder", "ffcv") and not data_dir:
        raise ValueError(f"dataset {dataset!r} needs data_dir")
    return dataset


def check_split(kind: str, split: str, any_ffcv_name: bool = False) -> None:
    """ValueError for a split name that is not one of ``SPLITS`` (with ``any_ffcv_name``, ffcv data may name any
    ``.beton`` file), or for minitrain/minival with ffcv data (they are carved from fmnist or folder data)."""
    if kind == "ffcv" and split in HOLDOUT_SPLITS:
        raise ValueError(
            f"split {split!r}: the held-out splits {list(HOLDOUT_SPLITS)} are for fmnist/folder data, not ffcv "
            "(train from the image folder, or use the train/val .beton files)"
        )
    if split not in SPLITS and not (kind == "ffcv" and any_ffcv_name):
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")


def train_holdout_record(dataset: str = "", data_dir: Optional[str] = None) -> dict:
    """:func:`~.holdout.holdout_record` of the data's train split (the labels are read, not the images)."""
    kind = resolve_dataset(dataset, data_dir)
    check_split(kind, "minival")
    if kind == "fmnist":
        labels = load_fmnist("train", data_dir)[1].numpy()
    else:
        labels = [t for _, t in create_folder_dataset(data_dir, "train", verify=False).reader.samples]
    return holdout_record(labels)


def _rank_world(distributed: bool) -> Tuple[int, int]:
    if distributed and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _in_chans(data_config: dict) -> int:
    return int(data_config["input_size"][0])


def fmnist_data_config(in_chans: int = 1) -> dict:
    """A data config for Fashion-MNIST when no model config is given (28 px, its own mean/std)."""
    mean, std = (0.2860,) * in_chans, (0.3530,) * in_chans
    return dict(
        input_size=(in_chans, 28, 28), interpolation="bilinear", mean=mean, std=std, crop_pct=1.0, crop_mode="center"
    )


def _folder_or_fmnist_dataset(
    kind: str, data_dir: Optional[str], split: str, transform, in_chans: int, skip_corrupt: bool = False
):
    if kind == "fmnist":
        return FashionMNIST(split, root=data_dir, transform=transform, img_mode=image_mode(in_chans))
    return create_folder_dataset(
        data_dir, split, transform=transform, img_mode=image_mode(in_chans), skip_corrupt=skip_corrupt
    )


def dataset_classes(dataset: str = "", data_dir: Optional[str] = None, split: str = "train") -> list:
    """Class names of a split without building a loader (folder listing, Fashion-MNIST's, or the .beton's JSON)."""
    kind = resolve_dataset(dataset, data_dir)
    check_split(kind, split, any_ffcv_name=True)
    if kind == "fmnist":
        return list(FMNIST_CLASSES)
    if kind == "ffcv":
        meta = ffcv_meta_path(beton_path(data_dir, split))
        if not meta.is_file():
            raise ValueError(f"data_dir: {meta} (class names of {beton_path(data_dir, split).name}) is missing")
        return list(json.loads(meta.read_text())["classes"])
    return create_folder_dataset(data_dir, split, verify=False).classes


def create_eval_loader(
    dataset: str = "",
    data_dir: Optional[str] = None,
    split: str = "val",
    data_config: Optional[dict] = None,
    batch_size: int = 256,
    workers: int = 2,
    distributed: bool = False,
    skip_corrupt: bool = False,
    max_samples: Optional[int] = None,
) -> EvalLoader:
    """An evaluation loader of ``split`` ('train', 'val', or for Fashion-MNIST and folders 'minitrain' and
    'minival', the parts of 'train' of :mod:`.holdout`; Fashion-MNIST's 'val' is its 10k test set) with
    evaluation transforms only (resize, centre crop, normalise), in dataset order; ``max_samples``: only that
    many images, spread evenly over the split.

    ``data_config`` is timm's resolved data config (``timm.data.resolve_data_config``); its channel count
    decides grey or RGB. With ``distributed`` each rank gets every world-size-th sample (no padding).
    Bad input (missing or empty folder, class lists differing between train and val, an unreadable image
    unless ``skip_corrupt``: then it is logged and the next image taken) raises ValueError.
    """
    kind = resolve_dataset(dataset, data_dir)
    check_split(kind, split)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    data_config = dict(data_config or fmnist_data_config())
    rank, world = _rank_world(distributed)
    if kind == "ffcv":
        return create_ffcv_loader(
            data_dir,
            split,
            data_config,
            batch_size,
            workers,
            is_training=False,
            rank=rank,
            world=world,
            max_samples=max_samples,
        )
    ds = _folder_or_fmnist_dataset(
        kind, data_dir, split, create_eval_transform(data_config), _in_chans(data_config), skip_corrupt
    )
    sampler = ShardSampler(len(ds), rank, world, max_samples)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_preemption_signals,
    )
    classes = ds.classes
    return EvalLoader(loader, classes, len(ds), ds)


def create_train_loader(
    dataset: str = "",
    data_dir: Optional[str] = None,
    split: str = "train",
    data_config: Optional[dict] = None,
    batch_size: int = 256,
    workers: int = 2,
    distributed: bool = False,
    seed: int = 0,
    auto_augment: Optional[str] = None,
    color_jitter: float = 0.0,
    color_jitter_prob: Optional[float] = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    scale: Optional[Sequence[float]] = None,
    ratio: Optional[Sequence[float]] = None,
    hflip: float = 0.5,
    translate: int = 0,
    skip_corrupt: bool = False,
    fast_fmnist: bool = True,
    device: Optional[torch.device] = None,
    re_max_area: float = 1 / 3,
) -> TrainLoader:
    """A shuffled training loader; ``batch_size`` is this rank's batch per optimiser step (the global batch
    divided by the world size), and the last partial batch is dropped.

    Fashion-MNIST at 28x28 with ``fast_fmnist`` (and no RandAugment or colour jitter) uses the preloaded
    :class:`TensorTrainLoader` (random translation by up to ``translate`` pixels, flip, erasing); everything
    else uses timm's transforms.
    """
    kind = resolve_dataset(dataset, data_dir)
    check_split(kind, split, any_ffcv_name=True)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    data_config = dict(data_config or fmnist_data_config())
    in_chans = _in_chans(data_config)
    rank, world = _rank_world(distributed)
    if kind == "ffcv":
        if (auto_augment and official_aa(auto_augment) is None) or color_jitter:
            raise ValueError(
                "--aa (timm's policies) and --color-jitter are not available with --dataset ffcv (they "
                "are PIL transforms; ffcv's pipeline runs compiled code): use --aa official (or "
                "official-fixed), train from the image folder, or turn them off with --aa '' "
                "--color-jitter 0"
            )
        return create_ffcv_loader(
            data_dir,
            split,
            data_config,
            batch_size,
            workers,
            is_training=True,
            rank=rank,
            world=world,
            seed=seed,
            scale=scale,
            ratio=ratio,
            hflip=hflip,
            device=device,
            re_prob=re_prob,
            re_mode=re_mode,
            re_count=re_count,
            auto_augment=auto_augment,
            re_max_area=re_max_area,
        )
    if (
        kind == "fmnist"
        and fast_fmnist
        and not auto_augment
        and not color_jitter
        and tuple(data_config["input_size"][1:]) == (28, 28)
    ):  # other sizes: timm's transforms (resize)
        images, targets = load_fmnist(split, data_dir)
        images = to_channels(images.unsqueeze(1), in_chans)
        augment = TensorAugment(
            data_config["mean"],
            data_config["std"],
            pad=translate,
            hflip=hflip,
            re_prob=re_prob,
            re_mode=re_mode,
            re_count=re_count,
            re_max_area=re_max_area,
        )
        if len(targets) < batch_size * world:
            raise ValueError(f"batch size {batch_size * world} exceeds the {len(targets)} training images")
        return TensorTrainLoader(images, targets, FMNIST_CLASSES, batch_size, augment, seed, rank, world)
    transform = create_train_transform(
        data_config,
        auto_augment,
        color_jitter,
        color_jitter_prob,
        re_prob,
        re_mode,
        re_count,
        scale,
        ratio,
        hflip,
        re_max_area,
    )
    ds = _folder_or_fmnist_dataset(kind, data_dir, split, transform, in_chans, skip_corrupt)
    if len(ds) < batch_size * world:
        raise ValueError(f"batch size {batch_size * world} exceeds the {len(ds)} images of {data_dir or kind}/{split}")
    sampler = ResumableDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=ignore_preemption_signals,
        generator=torch.Generator().manual_seed(seed),
    )
    return TrainLoader(loader, ds.classes, len(ds), ds, sampler=sampler, seed=seed, rank=rank)
