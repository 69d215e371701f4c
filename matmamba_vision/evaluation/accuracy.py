"""Classification metrics accumulated over batches: top-1, top-5 (top-k) accuracy and cross-entropy loss."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F

__all__ = ["AccuracyMeter", "topk_correct"]


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, int]:
    """Number of samples whose target is among the ``k`` highest logits, for each k (k capped at classes)."""
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(f"logits must be (batch, classes) and targets (batch,), got {tuple(logits.shape)} "
                         f"and {tuple(targets.shape)}")
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hits = pred.eq(targets[:, None])
    return {k: int(hits[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


class AccuracyMeter:
    """Running sums for one configuration; :meth:`result` gives percentages and the mean loss."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.count = 0
        self.loss_sum = 0.0
        self.correct = {k: 0 for k in self.ks}

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.float()
        for k, c in topk_correct(logits, targets, self.ks).items():
            self.correct[k] += c
        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        self.count += targets.shape[0]

    def result(self) -> Dict[str, float]:
        if self.count == 0:
            raise ValueError("no samples were evaluated (the split is empty)")
        out = {f"top{k}": 100.0 * self.correct[k] / self.count for k in self.ks}
        out["loss"] = self.loss_sum / self.count
        out["samples"] = self.count
        return out
