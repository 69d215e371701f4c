"""The recipe card printed at the start of a run (and kept in ``args.yaml``), and the official run's LR formula.

The card states what one optimiser update holds (images, micro-batches per granularity), how many updates the
run makes, the LR at its landmarks (read from the run's own scheduler) and the weight-decay set and
augmentation, so a run can be compared with the paper's recipe at a glance.
"""

from __future__ import annotations

import argparse
import math
from typing import List, Optional, Sequence

import torch

__all__ = ["official_lr", "scheduled_lr", "recipe_card"]


def official_lr(micro_step: int, lr: float, warmup: int, total: int, decay_frac: float) -> float:
    """The official ``get_lr`` of a micro-step: linear warm-up ``lr * (step + 1) / warmup``, then cosine from
    ``lr`` to ``decay_frac * lr`` over the micro-steps ``warmup .. total``, then the minimum."""
    low = lr * decay_frac
    if micro_step < warmup:
        return lr * (micro_step + 1) / warmup
    if micro_step > total:
        return low
    ratio = (micro_step - warmup) / (total - warmup)
    return low + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - low)


def scheduled_lr(scheduler, update: int, base_lr: float, updates_per_epoch: int = 1) -> Optional[float]:
    """The LR that ``scheduler`` (timm's) gives update ``update`` (0-based; a per-epoch schedule reads its
    epoch); ``base_lr`` without a scheduler; None for a schedule that follows the metric (plateau)."""
    if scheduler is None:
        return base_lr
    get = getattr(scheduler, "_get_lr", None)
    if get is None or getattr(scheduler, "lr_scheduler", None) is not None:
        return None
    t = update // updates_per_epoch if getattr(scheduler, "t_in_epochs", False) else update
    return float(get(t)[0])


def _decay_split(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> str:
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = [
        names.get(id(p), "?") for g in optimizer.param_groups if g.get("weight_decay", 0) > 0 for p in g["params"]
    ]
    others = sum(len(g["params"]) for g in optimizer.param_groups) - len(decayed)
    wd = max((g.get("weight_decay", 0) for g in optimizer.param_groups), default=0)
    embeds = [n for n in ("pos_embed", "cls_token") if n in decayed]
    return (
        f"weight decay {wd:g} on {len(decayed)} tensors (>= 2-D{', incl. ' + ', '.join(embeds) if embeds else ''}),"
        f" none on {others}"
    )


def _augmentation(args: argparse.Namespace) -> str:
    size = args.img_size or "(the model's input size)"
    crop = f"RandomResizedCrop {size} + flip {args.hflip:g}"
    aa = {
        "official": "official RandAugment (2 ops, magnitude 9, TranslateY/Equalize as the official run)",
        "official-fixed": "official RandAugment (2 ops, magnitude 9, TranslateY/Equalize corrected)",
    }.get(args.aa or "", f"timm RandAugment {args.aa}" if args.aa else "no RandAugment")
    jitter = (
        f"colour jitter {args.color_jitter:g} "
        f"(p {args.color_jitter_prob if args.color_jitter_prob is not None else 1:g})"
        if args.color_jitter
        else "no colour jitter"
    )
    erase = (
        f"random erasing p {args.reprob:g} (2-{100 * args.re_max_area:.0f} % box, {args.remode})"
        if args.reprob
        else "no random erasing"
    )
    mix = f"mixup {args.mixup:g} / cutmix {args.cutmix:g}" if args.mixup or args.cutmix else "no mixup/cutmix"
    return f"{crop}, {aa}, {jitter}, {erase}, {mix}, smoothing {args.smoothing:g}"


def recipe_card(
    args: argparse.Namespace,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    granularities: Sequence[int],
    world_size: int,
    micro: int,
    updates_per_epoch: int,
    num_epochs: int,
) -> List[str]:
    """The card's lines: per update, update count, LR landmarks, weight decay, augmentation."""
    k = len(granularities)
    if args.matryoshka_mode == "cycle":
        per_g = args.batch_size // k
        holds = (
            f"{args.batch_size} images = {k} granularities {tuple(granularities)} x {per_g} images each "
            f"({world_size} ranks x {micro} x {args.grad_accum_steps} accumulation), one granularity per "
            f"micro-batch, loss / {k * args.grad_accum_steps} each"
        )
    else:
        holds = (
            f"{args.batch_size} images ({world_size} ranks x {micro} x {args.grad_accum_steps} accumulation), "
            f"each at all {k} granularities {tuple(granularities)}, losses averaged"
        )
    total = updates_per_epoch * num_epochs
    warm = round(args.warmup_epochs * updates_per_epoch) if scheduler is not None else 0
    lines = [
        f"per update: {holds}",
        f"updates: {updates_per_epoch} per epoch x {num_epochs} epochs = {total}; warm-up {warm} updates",
    ]
    marks = {0: "update 0", warm: f"update {warm} (end of warm-up)", total - 1: f"the last update ({total - 1})"}
    lrs = [
        (scheduled_lr(scheduler, t, args.lr, updates_per_epoch), name)
        for t, name in sorted(marks.items())
        if 0 <= t < total
    ]
    if all(v is not None for v, _ in lrs):
        lines.append(f"LR ({args.sched}): " + " -> ".join(f"{v:.3g} at {name}" for v, name in lrs))
    else:
        lines.append(f"LR ({args.sched}): set by the validation metric, starting at {args.lr:g}")
    lines.append(_decay_split(optimizer, model))
    lines.append(f"augmentation: {_augmentation(args)}")
    return lines
