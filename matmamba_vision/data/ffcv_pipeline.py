"""FFCV ``.beton`` reading: the official recipe's pipelines (random-resized-crop + flip for training, then
timm's random erasing on each batch; centre crop by ``crop_pct`` for evaluation), ffcv imported lazily (an
optional extra). The official RandAugment (``--aa official``) runs after the flip as our own compiled
Operation (:mod:`.ffcv_ops`); timm's RandAugment and colour jitter are PIL transforms with no place in ffcv's
compiled pipeline: asking for them with ffcv is an error rather than a silent omission.

On a CPU, ffcv's Loader never returns when a numba-compiled stage follows a non-compiled one, so there the
image pipeline is ``decoder, [flip], NormalizeImage, ToTensor, ToTorchImage``; on a GPU the usual
``..., ToTensor, ToDevice, ToTorchImage, NormalizeImage`` order runs normalisation on the device.
Images are stored as RGB; a 1-channel model gets the luma mix of the normalised channels (as PIL's 'L').
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .batches import EvalLoader, ShardSampler, TrainLoader
from .transforms import official_aa, official_randaugment

__all__ = ["require_ffcv", "beton_path", "ffcv_meta_path", "ffcv_pipelines", "create_ffcv_loader"]

_LUMA = (0.299, 0.587, 0.114)


def require_ffcv():
    """Import ffcv or raise ValueError saying how to install it."""
    try:
        import ffcv  # noqa: F401

        return ffcv
    except ImportError as e:
        raise ValueError(
            "dataset 'ffcv' needs the optional ffcv extra: apt-get install pkg-config libopencv-dev "
            f"libturbojpeg0-dev, then pip install 'matmamba-vision[ffcv]' ({e})"
        ) from e


def beton_path(data_dir, split: str) -> Path:
    """Where a split's FFCV file lives: ``DATA_DIR/SPLIT.beton`` (the writer's output, the loaders' input)."""
    return Path(data_dir) / f"{split}.beton"


def ffcv_meta_path(beton: Path) -> Path:
    """The JSON file beside a ``.beton`` holding its class names and sample count."""
    return Path(beton).with_suffix(".json")


def ffcv_pipelines(
    data_config: dict,
    is_training: bool,
    device: Optional[torch.device] = None,
    scale: Optional[Sequence[float]] = None,
    ratio: Optional[Sequence[float]] = None,
    hflip: float = 0.5,
    auto_augment: Optional[str] = None,
) -> dict:
    """ffcv pipelines for the ``image`` and ``label`` fields (see the module note on stage order)."""
    require_ffcv()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.transforms import NormalizeImage, RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    size = tuple(int(s) for s in data_config["input_size"][1:])
    mean = np.array(data_config["mean"], dtype=np.float32) * 255
    std = np.array(data_config["std"], dtype=np.float32) * 255
    if mean.size == 1:  # grey model: normalise the (identical-statistics) RGB channels, mixed later
        mean, std = np.repeat(mean, 3), np.repeat(std, 3)
    if is_training:
        image = [
            RandomResizedCropRGBImageDecoder(
                size, scale=tuple(scale or (0.08, 1.0)), ratio=tuple(ratio or (3 / 4, 4 / 3))
            )
        ]
        if hflip > 0:
            image.append(RandomHorizontalFlip(flip_prob=hflip))
        fixed = official_aa(auto_augment)
        if fixed is not None:
            image.append(official_randaugment(fixed, ffcv=True))
        elif auto_augment:
            raise ValueError(
                f"--aa {auto_augment!r}: only the official RandAugment (official, official-fixed) "
                "runs in the ffcv pipeline"
            )
    else:
        image = [CenterCropRGBImageDecoder(size, ratio=float(data_config.get("crop_pct") or 0.875))]
    normalize = NormalizeImage(mean, std, np.float32)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu:
        image += [ToTensor(), ToDevice(torch.device(device), non_blocking=True), ToTorchImage(), normalize]
    else:
        image += [normalize, ToTensor(), ToTorchImage()]
    label = [IntDecoder(), ToTensor(), Squeeze()]
    if on_gpu:
        label.append(ToDevice(torch.device(device), non_blocking=True))
    return {"image": image, "label": label}


class _FFCVBatches:
    """ffcv's Loader yielding contiguous float NCHW images (``in_chans`` channels) and long targets."""

    def __init__(self, loader, in_chans: int, erasing=None):
        self.loader, self.in_chans, self.erasing = loader, in_chans, erasing
        self.next_epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.loader.next_epoch = self.next_epoch
        for images, targets in self.loader:
            images = images.float().contiguous()
            if self.in_chans == 1:
                w = torch.tensor(_LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
                images = (images * w).sum(1, keepdim=True)
            if self.erasing is not None:
                images = self.erasing(images)
            yield images, targets.reshape(-1).long()  # Squeeze makes a batch of one label 0-d
        self.next_epoch += 1


def create_ffcv_loader(
    data_dir: str,
    split: str,
    data_config: dict,
    batch_size: int,
    workers: int,
    is_training: bool,
    rank: int = 0,
    world: int = 1,
    seed: int = 0,
    scale: Optional[Sequence[float]] = None,
    ratio: Optional[Sequence[float]] = None,
    hflip: float = 0.5,
    device: Optional[torch.device] = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    max_samples: Optional[int] = None,
    auto_augment: Optional[str] = None,
    re_max_area: float = 1 / 3,
):
    """A :class:`TrainLoader` (shuffled, drop-last) or :class:`EvalLoader` (in order) over ``DATA_DIR/SPLIT.beton``.

    Training batches get timm's random erasing (``re_prob``, ``re_mode``, ``re_count``, box of 2 % to
    ``re_max_area`` of the image) per image, and ``auto_augment`` ('official' or 'official-fixed'); each rank
    draws its own crops (the loader's seed includes the rank). Evaluation with ``max_samples`` reads that many
    images spread evenly over the split."""
    require_ffcv()
    from ffcv.loader import Loader, OrderOption

    beton = beton_path(data_dir, split)
    if not beton.is_file():
        raise ValueError(f"data_dir: {beton} does not exist; write it with python -m matmamba_vision.data.ffcv_writer")
    meta_file = ffcv_meta_path(beton)
    if not meta_file.is_file():
        raise ValueError(f"data_dir: {meta_file} (class names of {beton.name}) is missing")
    meta = json.loads(meta_file.read_text())
    pipelines = ffcv_pipelines(
        data_config, is_training, device, scale, ratio, hflip, auto_augment if is_training else None
    )
    n = int(meta["num_samples"])
    if is_training:
        indices = None if world == 1 else list(range(rank, n - n % world, world))
        order = OrderOption.RANDOM
    else:
        indices, order = ShardSampler(n, rank, world, max_samples).indices, OrderOption.SEQUENTIAL
    loader = Loader(
        str(beton),
        batch_size=batch_size,
        num_workers=max(1, workers),
        order=order,
        seed=seed * 7919 + rank,
        indices=indices,
        pipelines=pipelines,
        drop_last=is_training,
        os_cache=True,
    )
    erasing = None
    if is_training and re_prob > 0:
        from timm.data.random_erasing import RandomErasing

        erasing = RandomErasing(
            re_prob,
            max_area=re_max_area,
            mode=re_mode,
            max_count=re_count,
            device=str(device) if device is not None else "cpu",
        )
    batches = _FFCVBatches(loader, int(data_config["input_size"][0]), erasing)
    if is_training:
        return TrainLoader(batches, meta["classes"], n, seed=seed, rank=rank)
    return EvalLoader(batches, meta["classes"], n)
