"""The one place for transforms: timm's train/eval pipelines, mixup/cutmix, and the tensor-side
augmentation of the preloaded Fashion-MNIST fast path."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from timm.data import Mixup, create_transform, resolve_data_config
from timm.data.random_erasing import RandomErasing
from timm.data.transforms_factory import transforms_imagenet_train
from torchvision.transforms import RandomHorizontalFlip

from ..models.matmamba_vision import DATA_CONFIG_KEYS

__all__ = [
    "AA_OFFICIAL",
    "official_aa",
    "image_mode",
    "model_data_config",
    "create_eval_transform",
    "create_train_transform",
    "create_mixup",
    "TensorAugment",
    "normalize_uint8",
    "split_batch",
    "to_channels",
]


# our --aa values for the official run's RandAugment (data/official_randaugment.py): quirks kept / corrected
AA_OFFICIAL = ("official", "official-fixed")


def official_aa(aa: Optional[str]) -> Optional[bool]:
    """``--aa`` -> None (not the official RandAugment), False (``official``) or True (``official-fixed``)."""
    if not aa or not aa.startswith("official"):
        return None
    if aa not in AA_OFFICIAL:
        raise ValueError(
            f"--aa must be {AA_OFFICIAL[0]!r} (the official RandAugment, its quirks kept), "
            f"{AA_OFFICIAL[1]!r} (TranslateY and Equalize corrected) or a timm policy, got {aa!r}"
        )
    return aa == "official-fixed"


def official_randaugment(fixed: bool, ffcv: bool = False):
    """The official RandAugment (2 ops, magnitude 9) as a PIL transform or (``ffcv``) an ffcv Operation;
    ValueError when numba (or ffcv) is missing."""
    try:
        if ffcv:
            from .ffcv_ops import OfficialRandAugmentOp

            return OfficialRandAugmentOp(fixed=fixed)
        from .official_randaugment import OfficialRandAugment

        return OfficialRandAugment(fixed=fixed)
    except ImportError as e:
        raise ValueError(
            f"--aa {AA_OFFICIAL[int(fixed)]} needs numba: pip install 'matmamba-vision[augment]' ({e})"
        ) from e


def image_mode(in_chans: int) -> str:
    """PIL mode that feeds a model with ``in_chans`` channels: 'L' (grey) or 'RGB'."""
    modes = {1: "L", 3: "RGB"}
    if in_chans not in modes:
        raise ValueError(f"in_chans must be 1 or 3 for image data, got {in_chans}")
    return modes[in_chans]


def model_data_config(model, args: Optional[dict] = None) -> dict:
    """timm's ``resolve_data_config`` for ``model``, made consistent with the model itself: the input size
    is the model's (channels and pixels) and a grey mean/std is repeated for a 3-channel model."""
    cfg = resolve_data_config(dict(args or {}), model=model)
    in_chans = int(getattr(model, "in_chans", cfg["input_size"][0]))
    size = getattr(getattr(model, "patch_embed", None), "img_size", None) or cfg["input_size"][1:]
    if not getattr(model, "dynamic_img_size", False):
        cfg["input_size"] = (in_chans, *map(int, size))
    else:
        cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
    for key in ("mean", "std"):
        v = tuple(cfg[key])
        if len(v) != in_chans:
            if len(v) == 1:
                v = v * in_chans
            elif in_chans == 1:
                v = (sum(v) / len(v),)
            else:
                raise ValueError(f"data config {key} {v} does not fit in_chans={in_chans}")
        cfg[key] = v
    return cfg


def _eval_keys(data_config: dict) -> dict:
    return {k: data_config[k] for k in DATA_CONFIG_KEYS if k in data_config}


def create_eval_transform(data_config: dict):
    """timm's evaluation transform (resize, centre crop by ``crop_pct``, to tensor, normalise)."""
    return create_transform(**_eval_keys(data_config), is_training=False)


def create_train_transform(
    data_config: dict,
    auto_augment: Optional[str] = None,
    color_jitter: float = 0.0,
    color_jitter_prob: Optional[float] = None,
    re_prob: float = 0.0,
    re_mode: str = "pixel",
    re_count: int = 1,
    scale: Optional[Sequence[float]] = None,
    ratio: Optional[Sequence[float]] = None,
    hflip: float = 0.5,
    re_max_area: float = 1 / 3,
):
    """timm's training transform: RandomResizedCrop + flip, RandAugment (a timm policy such as
    ``'rand-m9-n2-mstd0.5-inc1'``, or ``'official'`` / ``'official-fixed'``: the official run's, after the
    flip), colour jitter (applied with ``color_jitter_prob``; kept beside RandAugment, which timm would otherwise
    drop it for), normalise, random erasing of 2 % to ``re_max_area`` of the image."""
    cfg = _eval_keys(data_config)
    fixed = official_aa(auto_augment)
    # timm's train pipeline itself: create_transform does not pass force_color_jitter on
    pipeline = transforms_imagenet_train(
        tuple(cfg["input_size"][-2:]),
        interpolation=cfg.get("interpolation", "bilinear"),
        mean=cfg["mean"],
        std=cfg["std"],
        auto_augment=(auto_augment or None) if fixed is None else None,
        color_jitter=color_jitter,
        color_jitter_prob=color_jitter_prob,
        force_color_jitter=bool(color_jitter),
        re_prob=re_prob,
        re_mode=re_mode,
        re_count=re_count,
        scale=tuple(scale) if scale else None,
        ratio=tuple(ratio) if ratio else None,
        hflip=hflip,
    )
    steps = pipeline.transforms
    if fixed is not None:  # after the crop and flip, as the official pipeline
        steps.insert(1 + any(isinstance(t, RandomHorizontalFlip) for t in steps), official_randaugment(fixed))
    for i, t in enumerate(steps):
        if isinstance(t, RandomErasing):
            steps[i] = RandomErasing(re_prob, max_area=re_max_area, mode=re_mode, max_count=re_count, device="cpu")
    return pipeline


def create_mixup(
    mixup: float = 0.0,
    cutmix: float = 0.0,
    smoothing: float = 0.0,
    num_classes: int = 1000,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
) -> Optional[Mixup]:
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None when both are off."""
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=prob,
        switch_prob=switch_prob,
        mode=mode,
        label_smoothing=smoothing,
        num_classes=num_classes,
    )


def normalize_uint8(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float, as ``ToTensor`` then ``Normalize(mean, std)``."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.float().div_(255.0) - mean_t) / std_t


class TensorAugment:
    """Cheap batch augmentation of small uint8 images: random translation (pad ``pad`` pixels, random crop
    back), horizontal flip with ``hflip``, normalisation, then timm's RandomErasing with ``re_prob`` (up to
    ``re_count`` boxes). Randomness comes from the given generator (and torch's global RNG for erasing), so
    runs replay."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        pad: int = 2,
        hflip: float = 0.5,
        re_prob: float = 0.0,
        re_mode: str = "pixel",
        re_count: int = 1,
        re_max_area: float = 1 / 3,
    ):
        self.mean, self.std, self.pad, self.hflip = tuple(mean), tuple(std), pad, hflip
        self.erase = (
            RandomErasing(re_prob, max_area=re_max_area, mode=re_mode, max_count=re_count, device="cpu")
            if re_prob > 0
            else None
        )

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = images.shape
        if self.pad:
            padded = F.pad(images, (self.pad,) * 4)
            shifts = torch.randint(0, 2 * self.pad + 1, (b, 2), generator=generator).tolist()
            images = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts)])
        if self.hflip > 0:
            flip = torch.rand(b, generator=generator) < self.hflip
            images = torch.where(flip.view(b, 1, 1, 1), images.flip(-1), images)
        x = normalize_uint8(images, self.mean, self.std)
        if self.erase is not None:
            x = self.erase(x)
        return x


def split_batch(n: int, parts: int, what: str) -> int:
    """``n // parts``; ValueError when ``n`` does not split evenly (``what`` names the setting)."""
    if parts <= 0 or n % parts:
        raise ValueError(f"{what}: {n} does not split into {parts} equal parts")
    return n // parts


def to_channels(images: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Grey (B, 1, H, W) -> ``in_chans`` channels by repetition (as PIL's 'L' -> 'RGB')."""
    if images.shape[1] == in_chans:
        return images
    if images.shape[1] == 1:
        return images.expand(-1, in_chans, -1, -1).contiguous()
    raise ValueError(f"cannot convert {images.shape[1]}-channel images to in_chans={in_chans}")
