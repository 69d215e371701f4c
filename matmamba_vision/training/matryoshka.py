"""One optimiser step of Matryoshka training.

- ``sum``: every granularity runs on the same micro-batch; their losses are averaged and back-propagated
  once (per micro-batch), then one optimiser step.
- ``cycle`` (official schedule): the batch is cut into one micro-batch per granularity (times the
  accumulation steps); micro-step ``i`` runs granularity ``i mod K``; one optimiser step per cycle.

Two additions beyond the paper:

- in-place distillation (``distill_weight > 0``, as slimmable networks train): the widest trained
  granularity's logits, detached, teach every narrower width on the same micro-batch (in cycle mode they come
  from an extra forward without gradients on that micro-batch);
- sampled widths (``sample_pool`` + ``num_sampled``): each step also trains ``num_sampled`` widths drawn
  without replacement from ``sample_pool`` (torch's global RNG, so a resumed run draws as the original did);
  sum mode draws per micro-batch, cycle mode once per step and runs draw n on micro-batch n.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import dispatch_clip_grad

from .distributed import all_reduce_mean, all_reduce_sum

__all__ = [
    "NonFiniteLossError",
    "MatryoshkaStep",
    "build_criterion",
    "micro_batch_size",
    "distill_loss",
    "untrained_widths",
]

MODES = ("sum", "cycle")


class NonFiniteLossError(RuntimeError):
    """A NaN/inf training loss; the optimiser step was not taken."""


def build_criterion(mixup_active: bool, smoothing: float) -> nn.Module:
    """timm's choice: soft-target CE with mixup/cutmix (smoothing folded into the targets), else
    label-smoothing CE, else plain CE."""
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(teacher || student) of the temperature-softened distributions, times T^2 (Hinton et al.), per-sample
    mean; ``teacher`` is used as given (detach it first)."""
    t = float(temperature)
    log_p = F.log_softmax(student.float() / t, dim=-1)
    q = F.softmax(teacher.float() / t, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean") * (t * t)


def untrained_widths(model: nn.Module, granularities: Sequence[int]) -> List[int]:
    """Valid uniform widths strictly between the smallest and largest of ``granularities``, not among them
    (the pool ``--sample-granularities`` draws from)."""
    lo, hi = min(granularities), max(granularities)
    pool = []
    for g in range(lo + 1, hi):
        try:
            model.resolve_granularity(g)
        except ValueError:
            continue
        if g not in granularities:
            pool.append(g)
    return pool


def micro_batch_size(global_batch: int, world_size: int, accum_steps: int, mode: str, num_granularities: int) -> int:
    """Images per forward pass; ValueError when the global batch does not split evenly."""
    if mode not in MODES:
        raise ValueError(f"--matryoshka-mode must be one of {MODES}, got {mode!r}")
    if global_batch <= 0 or accum_steps <= 0:
        raise ValueError(f"--batch-size ({global_batch}) and --grad-accum-steps ({accum_steps}) must be positive")
    if global_batch % world_size:
        raise ValueError(f"--batch-size {global_batch} (global) does not split over {world_size} ranks")
    per_rank = global_batch // world_size
    parts = accum_steps * (num_granularities if mode == "cycle" else 1)
    if per_rank % parts:
        what = f"--grad-accum-steps {accum_steps}" + (
            f" x {num_granularities} granularities (cycle mode)" if mode == "cycle" else ""
        )
        raise ValueError(f"--batch-size {global_batch}: the per-rank batch {per_rank} does not split into {what}")
    return per_rank // parts


@dataclass
class MatryoshkaStep:
    """Runs one optimiser step on one rank's batch and returns the (rank-averaged) loss per granularity."""

    model: nn.Module  # possibly DDP-wrapped / compiled
    core: nn.Module  # the MatMambaVision underneath (granularity control)
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    granularities: Sequence[int]
    mode: str = "sum"
    accum_steps: int = 1
    clip_grad: float = 0.0
    clip_mode: str = "norm"
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    mixup_fn: Optional[Callable] = None
    device_type: str = "cpu"
    distill_weight: float = 0.0  # 0: off; else loss = (1 - w) CE + w KD for every narrower width
    distill_temperature: float = 1.0
    sample_pool: Sequence[int] = ()  # widths the extra per-step draws come from
    num_sampled: int = 0
    _params: List[nn.Parameter] = field(default_factory=list, init=False)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"--matryoshka-mode must be one of {MODES}, got {self.mode!r}")
        if not 0 <= self.distill_weight <= 1:
            raise ValueError(f"--distill-weight must be in [0, 1], got {self.distill_weight}")
        if not self.distill_temperature > 0:
            raise ValueError(f"--distill-temperature must be positive, got {self.distill_temperature}")
        if self.num_sampled < 0 or self.num_sampled > len(self.sample_pool):
            raise ValueError(
                f"--sample-granularities must be in [0, {len(self.sample_pool)}] (the untrained valid "
                f"widths between the trained ones: {list(self.sample_pool)}), got {self.num_sampled}"
            )
        self._params = [p for p in self.model.parameters() if p.requires_grad]

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _no_sync(self, last: bool):
        return nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _draw(self) -> List[int]:
        """``num_sampled`` widths from the pool, without replacement (torch's global RNG)."""
        if not self.num_sampled:
            return []
        return [self.sample_pool[i] for i in torch.randperm(len(self.sample_pool))[: self.num_sampled].tolist()]

    def _losses(self, x: torch.Tensor, y: torch.Tensor, widths: Sequence[int]) -> List[torch.Tensor]:
        """One loss per width of ``widths`` on the same micro-batch (in that order). With distillation the widest
        trained granularity is the teacher: its logits come from this pass when it is among ``widths``, else
        from an extra forward without gradients."""
        teacher_g = max(self.granularities)
        teacher = None
        with self._autocast():
            if self.distill_weight > 0 and teacher_g not in widths:
                with torch.no_grad(), self.core.granularity(teacher_g):
                    teacher = self.model(x).detach()
            by_g = {}
            for g in sorted(widths, reverse=True):  # the teacher runs first
                with self.core.granularity(g):
                    logits = self.model(x)
                loss = self.criterion(logits, y)
                if self.distill_weight > 0:
                    if g == teacher_g:
                        teacher = logits.detach()
                    else:
                        kd = distill_loss(logits, teacher, self.distill_temperature)
                        loss = (1 - self.distill_weight) * loss.float() + self.distill_weight * kd
                by_g[g] = loss.float()
        return [by_g[g] for g in widths]

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> Dict[int, float]:
        k = len(self.granularities)
        parts = self.accum_steps * (k if self.mode == "cycle" else 1)
        micro = list(zip(images.chunk(parts), targets.chunk(parts)))
        losses: List[List[torch.Tensor]] = [[] for _ in range(k)]
        sampled_ok = True  # the sampled widths' losses (not reported per width) were finite
        # cycle mode: the step's draws ride on its micro-batches, draw n on micro-batch n mod parts; every width's
        # loss weighs 1 / (accum (K + N)), so the step's loss stays the mean over the widths trained
        drawn = self._draw() if self.mode == "cycle" else []
        for i, (x, y) in enumerate(micro):
            if self.mixup_fn is not None:
                x, y = self.mixup_fn(x, y)
            with self._no_sync(i == parts - 1):
                if self.mode == "sum":
                    per_g = self._losses(x, y, [*self.granularities, *self._draw()])
                    loss = torch.stack(per_g).mean()
                    for j, l in enumerate(per_g[:k]):
                        losses[j].append(l.detach())
                else:
                    j = i % k
                    per_g = self._losses(
                        x, y, [self.granularities[j]] + [g for n, g in enumerate(drawn) if n % parts == i]
                    )
                    loss = torch.stack(per_g).sum() * (k / (k + len(drawn)))
                    losses[j].append(per_g[0].detach())
                if len(per_g) > (k if self.mode == "sum" else 1):
                    sampled_ok = sampled_ok and bool(torch.isfinite(loss.detach()))
                self._backward(loss / parts)
        per_g = torch.stack([torch.stack(l).mean() for l in losses])
        finite = all_reduce_sum((torch.isfinite(per_g).all() & sampled_ok).float().view(1))
        if finite.item() < _world_size():
            bad = [g for g, v in zip(self.granularities, per_g.tolist()) if not torch.isfinite(torch.tensor(v))]
            bad = bad or (["a sampled width"] if not sampled_ok else [])
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(f"non-finite training loss at granularities {bad or '(another rank)'}")
        if self.clip_grad and self.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self._params, self.clip_grad, mode=self.clip_mode)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        per_g = all_reduce_mean(per_g)
        return {int(g): float(v) for g, v in zip(self.granularities, per_g.tolist())}


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
