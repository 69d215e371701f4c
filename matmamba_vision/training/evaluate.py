"""Validation at every trained granularity: top-1, top-5 and cross-entropy, summed over ranks."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Dict, Iterable, Sequence

import torch
import torch.nn.functional as F

from .distributed import all_reduce_sum

__all__ = ["validate"]


@torch.no_grad()
def validate(model: torch.nn.Module, loader: Iterable, granularities: Sequence[int], device: torch.device,
             amp_dtype=None) -> Dict[int, Dict[str, float]]:
    """``{g: {'loss', 'top1', 'top5'}}`` (percentages) over the whole loader, each g on the same batches."""
    was_training = model.training
    model.eval()
    k = len(granularities)
    sums = torch.zeros(k, 4, dtype=torch.float64)  # loss sum, top-1 hits, top-5 hits, samples
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
    try:
        for images, targets in loader:
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            for i, g in enumerate(granularities):
                with model.granularity(g), autocast:
                    logits = model(images)
                logits = logits.float()
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hit = top.eq(targets.view(-1, 1))
                sums[i, 0] += F.cross_entropy(logits, targets, reduction="sum").item()
                sums[i, 1] += hit[:, :1].sum().item()
                sums[i, 2] += hit.any(dim=1).sum().item()
                sums[i, 3] += len(targets)
    finally:
        model.train(was_training)
    sums = all_reduce_sum(sums.to(device)).cpu()
    n = sums[:, 3].clamp(min=1)
    return {
        int(g): {"loss": float(sums[i, 0] / n[i]), "top1": float(100 * sums[i, 1] / n[i]),
                 "top5": float(100 * sums[i, 2] / n[i])}
        for i, g in enumerate(granularities)
    }
