"""Validation at every trained granularity: top-1, top-5 and cross-entropy, summed over ranks."""

from __future__ import annotations

from typing import Dict, Iterable, Sequence

import torch

from ..accuracy import accuracy_pass
from .distributed import all_reduce_sum

__all__ = ["validate"]


@torch.no_grad()
def validate(
    model: torch.nn.Module, loader: Iterable, granularities: Sequence[int], device: torch.device, amp_dtype=None
) -> Dict[int, Dict[str, float]]:
    """``{g: {'loss', 'top1', 'top5'}}`` (percentages) over the whole loader, each g on the same batches (the
    evaluation scripts' loop, :func:`matmamba_vision.accuracy.accuracy_pass`)."""
    was_training = model.training
    model.eval()
    try:
        meters = accuracy_pass(model, loader, list(granularities), device, amp_dtype)
    finally:
        model.train(was_training)
    totals = all_reduce_sum(torch.stack([m.totals() for m in meters]).to(device)).cpu()
    results = {}
    for meter, g, t in zip(meters, granularities, totals):
        t = t.clone()
        t[-1] = max(t[-1], 1)  # an empty split: zeros, as before, not an error mid-training
        r = meter.result(t)
        results[int(g)] = {"loss": r["loss"], "top1": r["top1"], "top5": r["top5"]}
    return results
