"""The names of a run folder's checkpoint files, one grammar for all of them, and finding and pruning them.

    checkpoint-E.safetensors, checkpoint-E.state.pt          the end of epoch E (from 0)
    checkpoint-E-B.safetensors, checkpoint-E-B.state.pt      epoch E after its first B batches (in-epoch)
    model_best.safetensors, model_best_ema.safetensors       the best validation top-1 (and its EMA), weights only
    model_best[_ema]-epochE.abandoned.safetensors            a best of epochs a resume replays, moved aside
    model_best/                                              the best as a timm folder (config.json, model.safetensors)

A checkpoint's state file is written after its weights and is its commit point: a state file means a complete
checkpoint. Checkpoints are ordered by training progress: epoch, then batches, an end-of-epoch one after every
in-epoch one of its epoch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = [
    "BEST_DIR",
    "WEIGHTS",
    "STATE",
    "CheckpointName",
    "parse_name",
    "run_files",
    "checkpoints",
    "newest_checkpoint",
    "weights_of",
    "prune_epochs",
    "prune_mid_epoch",
]

BEST_DIR = "model_best"  # the best model as a timm folder: config.json + model.safetensors
WEIGHTS, STATE = ".safetensors", ".state.pt"

EPOCH, MID_EPOCH, BEST, ABANDONED = "epoch", "mid_epoch", "best", "abandoned"

_NUM = r"(?:0|[1-9]\d*)"  # numbers as written, no leading zero: a name and its file are one to one
_NAME_RE = re.compile(
    rf"^(?:checkpoint-(?P<epoch>{_NUM})(?:-(?P<batch>{_NUM}))?(?P<suffix>\.safetensors|\.state\.pt)"
    rf"|model_best(?P<ema>_ema)?(?:-epoch(?P<abandoned>{_NUM})\.abandoned)?\.safetensors)$"
)


@dataclass(frozen=True)
class CheckpointName:
    """One checkpoint's name: ``kind`` is ``epoch``, ``mid_epoch``, ``best`` or ``abandoned``; ``epoch`` is None
    for a current best; ``ema`` only for the best kinds."""

    kind: str
    epoch: Optional[int] = None
    batch: Optional[int] = None
    ema: bool = False

    @classmethod
    def at_epoch(cls, epoch: int) -> "CheckpointName":
        return cls(EPOCH, epoch)

    @classmethod
    def mid_epoch(cls, epoch: int, batches: int) -> "CheckpointName":
        return cls(MID_EPOCH, epoch, batches)

    @classmethod
    def best(cls, ema: bool = False) -> "CheckpointName":
        return cls(BEST, ema=ema)

    @classmethod
    def abandoned(cls, epoch: int, ema: bool = False) -> "CheckpointName":
        return cls(ABANDONED, epoch, ema=ema)

    @property
    def stem(self) -> str:
        if self.kind == EPOCH:
            return f"checkpoint-{self.epoch}"
        if self.kind == MID_EPOCH:
            return f"checkpoint-{self.epoch}-{self.batch}"
        best = "model_best_ema" if self.ema else "model_best"
        return best if self.kind == BEST else f"{best}-epoch{self.epoch}.abandoned"

    @property
    def is_best(self) -> bool:
        """A best model's weights, current or abandoned."""
        return self.kind in (BEST, ABANDONED)

    @property
    def weights(self) -> str:
        return self.stem + WEIGHTS

    @property
    def state(self) -> str:
        """The training-state file's name (epoch and in-epoch checkpoints; a best is weights only)."""
        if self.kind not in (EPOCH, MID_EPOCH):
            raise ValueError(f"{self.weights} is weights only: no training state file")
        return self.stem + STATE

    @property
    def progress(self) -> Tuple[int, float]:
        """(epoch, batches done in it; inf at its end): the order of training checkpoints."""
        return self.epoch, (math.inf if self.batch is None else self.batch)


def parse_name(filename: str) -> Optional[Tuple[CheckpointName, str]]:
    """(name, suffix: ``.safetensors`` or ``.state.pt``) of a checkpoint file name, or None for any other file."""
    m = _NAME_RE.match(filename)
    if m is None:
        return None
    if m.group("epoch") is not None:
        epoch, batch = int(m.group("epoch")), m.group("batch")
        name = CheckpointName.at_epoch(epoch) if batch is None else CheckpointName.mid_epoch(epoch, int(batch))
        return name, m.group("suffix")
    ema = m.group("ema") is not None
    if m.group("abandoned") is not None:
        return CheckpointName.abandoned(int(m.group("abandoned")), ema), WEIGHTS
    return CheckpointName.best(ema), WEIGHTS


def run_files(directory: Path) -> List[Tuple[CheckpointName, str, Path]]:
    """Every checkpoint file in ``directory`` (not ``model_best/``), as (name, suffix, path), sorted by file name."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(*parsed, p) for p in sorted(directory.iterdir()) if (parsed := parse_name(p.name)) and p.is_file()]
    return found


def checkpoints(directory: Path, kinds: Tuple[str, ...] = (EPOCH, MID_EPOCH)) -> List[Tuple[CheckpointName, Path]]:
    """The complete training checkpoints of ``kinds`` in ``directory``, as (name, state file), oldest first."""
    found = [(name, p) for name, suffix, p in run_files(directory) if suffix == STATE and name.kind in kinds]
    return sorted(found, key=lambda item: item[0].progress)


def newest_checkpoint(directory: Path) -> Optional[Path]:
    """The state file of the furthest-trained complete checkpoint in ``directory`` (end-of-epoch or in-epoch),
    or None."""
    found = checkpoints(directory)
    return found[-1][1] if found else None


def weights_of(state: Path) -> Path:
    """The weights file beside a checkpoint's state file (``checkpoint-E[-B].safetensors``)."""
    parsed = parse_name(Path(state).name)
    if parsed is None or parsed[1] != STATE:
        raise ValueError(f"{state}: not a checkpoint state file (checkpoint-E[-B].state.pt)")
    return Path(state).with_name(parsed[0].weights)


def _remove(directory: Path, name: CheckpointName) -> None:
    (Path(directory) / name.state).unlink(missing_ok=True)  # the state first: weights alone are never a checkpoint
    (Path(directory) / name.weights).unlink(missing_ok=True)


def prune_epochs(directory: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` end-of-epoch checkpoints."""
    for name, _ in checkpoints(directory, (EPOCH,))[:-keep]:
        _remove(directory, name)


def prune_mid_epoch(directory: Path) -> None:
    """Remove every in-epoch checkpoint but the newest, and those older than the newest end-of-epoch one."""
    found = checkpoints(directory)
    newest = found[-1][0] if found else None
    for name, _ in found:
        if name.kind == MID_EPOCH and name != newest:
            _remove(directory, name)
