"""Classification metrics over batches (timm's ``accuracy`` and ``AverageMeter``): top-k accuracy and
cross-entropy, and :func:`accuracy_pass`, the loop that measures them for several configurations in one data
pass; shared by training's validation and the evaluation scripts."""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.utils import AverageMeter, accuracy

__all__ = ["AccuracyMeter", "topk_correct", "accuracy_pass", "autocast_context"]


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"logits must be (batch, classes) and targets (batch,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)) -> Dict[int, int]:
    """Number of samples whose target is among the ``k`` highest logits, for each k (k capped at classes)."""
    _check_shapes(logits, targets)
    n = targets.shape[0]
    return {k: round(float(acc) * n / 100) for k, acc in zip(ks, accuracy(logits, targets, topk=tuple(ks)))}


class AccuracyMeter:
    """Running top-k accuracy (%) and mean loss of one configuration; :meth:`result` reports them.

    :meth:`totals` / ``result(totals)`` let ranks sum their counts before the result (distributed validation).
    """

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.loss = AverageMeter()
        self.top = {k: AverageMeter() for k in self.ks}

    @property
    def count(self) -> int:
        return self.loss.count

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        _check_shapes(logits, targets)
        logits, n = logits.float(), targets.shape[0]
        for k, acc in zip(self.ks, accuracy(logits, targets, topk=self.ks)):
            self.top[k].update(float(acc), n)
        self.loss.update(float(F.cross_entropy(logits, targets)), n)

    def totals(self) -> torch.Tensor:
        """(loss sum, top-k % x samples for each k, samples) in float64, to be summed over ranks."""
        return torch.tensor([self.loss.sum, *(self.top[k].sum for k in self.ks), self.loss.count], dtype=torch.float64)

    def result(self, totals: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """``{'top1', 'top5', ..., 'loss', 'samples'}`` from this meter's, or from summed ``totals``."""
        t = self.totals() if totals is None else totals
        count = int(t[-1])
        if count == 0:
            raise ValueError("no samples were evaluated (the split is empty)")
        out = {f"top{k}": float(t[1 + i]) / count for i, k in enumerate(self.ks)}
        out["loss"] = float(t[0]) / count
        out["samples"] = count
        return out


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``amp_dtype`` on ``device``'s type, or a no-op when ``amp_dtype`` is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)


@torch.no_grad()
def accuracy_pass(
    model: torch.nn.Module,
    batches: Iterable,
    configs: Sequence,
    device: torch.device,
    amp_dtype: Optional[torch.dtype] = None,
    share_prefix: bool = True,
) -> List[AccuracyMeter]:
    """One :class:`AccuracyMeter` per configuration (each what ``model.set_granularity`` takes) over ``batches``
    of (images, targets): each batch moved to ``device`` once and every configuration run on it with the model's
    ``forward_many`` (outputs bit-identical to one forward each). The model's mode is left as it is."""
    configs = list(configs)
    meters = [AccuracyMeter() for _ in configs]
    for images, targets in batches:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast_context(device, amp_dtype):
            for idx, logits in model.forward_many(images, configs, share_prefix=share_prefix):
                meters[idx].update(logits, targets)
    return meters
