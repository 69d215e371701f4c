"""Checkpoints inside an epoch and where a run resumes.

An in-epoch checkpoint (``checkpoint-E-B``, see :mod:`.checkpoint_files`) is epoch E (from 0) after its first B
batches. Its state also holds the epoch's running train-loss sums and every rank's RNG and loader state (the
position in the epoch's data order), so a run resumed from it continues the epoch where it stopped and ends
bit-identical to an uninterrupted one. Only the newest in-epoch checkpoint is kept, and none older than the
newest end-of-epoch ``checkpoint-E``.

:class:`CheckpointTrigger` decides, after every optimiser step, whether to write one (``--checkpoint-interval-steps``
on the global step count, so a resumed run writes at the same steps; ``--checkpoint-interval-minutes`` since
the last checkpoint) or to stop for a preemption signal; with several ranks the decision is one all-reduce,
so every rank writes and stops at the same step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from .checkpoint_files import newest_checkpoint

__all__ = [
    "resume_position",
    "CheckpointTrigger",
    "resolve_auto_resume",
    "gather_rank_states",
]


def resume_position(state: Dict[str, Any]) -> Tuple[int, int]:
    """(epoch to continue, batches of it already done) for a checkpoint's state."""
    if state.get("batch") is not None:
        return int(state["epoch"]), int(state["batch"])
    return int(state["epoch"]) + 1, 0


def resolve_auto_resume(output: str, experiment: str) -> Optional[Path]:
    """``--resume auto``: the newest complete checkpoint in OUTPUT/EXPERIMENT, or None (start fresh)."""
    if not experiment:
        raise ValueError(
            "--resume auto needs --experiment: the default run folder's name holds the start time, "
            "so a repeated command would not find it"
        )
    return newest_checkpoint(Path(output) / experiment)


def gather_rank_states(state: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every rank's ``state`` in rank order (one entry without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    gathered: List[Optional[Dict]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, state)
    return gathered  # type: ignore[return-value]


class CheckpointTrigger:
    """After each optimiser step, :meth:`poll` returns ``(write, stop)``: whether to write an in-epoch checkpoint
    now and whether to stop for a preemption signal. The same answer on every rank (a MAX all-reduce of the
    local flags, only when a process group is up)."""

    def __init__(
        self,
        every_steps: int = 0,
        every_minutes: float = 0.0,
        preemption=None,
        device: torch.device = torch.device("cpu"),
    ):
        self.every_steps, self.every_s = every_steps, every_minutes * 60.0
        self.preemption, self.device = preemption, device
        self.last = time.monotonic()
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def written(self) -> None:
        self.last = time.monotonic()

    def stop_requested(self) -> bool:
        """Whether any rank got a preemption signal (collective with several ranks)."""
        local = bool(self.preemption is not None and self.preemption.requested)
        if not self.distributed:
            return local
        flag = torch.tensor([float(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def poll(self, step: int, last: bool = False) -> Tuple[bool, bool]:
        """``step``: optimiser steps done in all; ``last``: the epoch's last step (its end-of-epoch checkpoint
        follows, so an interval falling there writes nothing extra; a stop still does, before validation)."""
        stop = bool(self.preemption is not None and self.preemption.requested)
        due = bool(self.every_steps and step % self.every_steps == 0)
        timed = bool(self.every_s and time.monotonic() - self.last >= self.every_s)
        if self.distributed:
            flags = torch.tensor([float(stop), float(timed)], device=self.device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            stop, timed = bool(flags[0].item()), bool(flags[1].item())
        return stop or (not last and (due or timed)), stop
