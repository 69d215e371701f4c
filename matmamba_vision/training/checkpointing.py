"""Training checkpoints that lose nothing: ``checkpoint-E.safetensors`` (weights) plus ``checkpoint-E.state.pt``
(optimiser, scheduler, scaler, EMA, epoch, step, RNG states, args), each written atomically with
:mod:`matmamba_vision.checkpoint`; the state file is written last and is the commit point. The last N are
kept; ``model_best.safetensors`` (and ``model_best_ema.safetensors``) track the best validation top-1."""
from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint, load_torch, save_torch, save_weights

__all__ = ["rng_state", "set_rng_state", "CheckpointManager", "resolve_resume", "load_training_state",
           "latest_state_file"]

_logger = logging.getLogger("train")
_STATE_RE = re.compile(r"checkpoint-(\d+)\.state\.pt$")


def rng_state() -> Dict[str, Any]:
    """torch, CUDA, Python and NumPy RNG states as weights-only-loadable objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def _state_files(directory: Path) -> List[Tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint-*.state.pt") if (m := _STATE_RE.search(p.name))]
    return sorted(found)


def latest_state_file(directory: Path) -> Optional[Path]:
    """The newest complete checkpoint state file in ``directory``, or None."""
    states = _state_files(Path(directory)) if Path(directory).is_dir() else []
    return states[-1][1] if states else None


def resolve_resume(path: str) -> Path:
    """The state file to resume from: given directly, beside a weights file, or the newest in a folder."""
    p = Path(path)
    if p.is_dir():
        states = _state_files(p)
        if not states:
            raise ValueError(f"--resume: no checkpoint-*.state.pt in {p}")
        return states[-1][1]
    if p.name.endswith(".safetensors"):
        p = p.with_name(p.name[: -len(".safetensors")] + ".state.pt")
    if not p.is_file():
        raise ValueError(f"--resume: {path} is not a checkpoint state file, weights file or experiment folder")
    return p


def load_training_state(path: Path, model: torch.nn.Module) -> Dict[str, Any]:
    """Load the state file (weights-only) and the model weights it names into ``model``."""
    state = load_torch(path)
    if not isinstance(state, dict) or "weights" not in state:
        raise CheckpointError(f"{path}: not a training state file")
    load_checkpoint(model, path.parent / state["weights"])
    return state


class CheckpointManager:
    """Writes per-epoch checkpoints (rank 0 only), keeps the newest ``keep``, and the best model."""

    def __init__(self, directory: Path, keep: int = 2, enabled: bool = True):
        if keep < 1:
            raise ValueError(f"--checkpoint-hist must be at least 1, got {keep}")
        self.directory, self.keep, self.enabled = Path(directory), keep, enabled

    def save(self, epoch: int, model: torch.nn.Module, state: Dict[str, Any], metadata: Dict[str, Any]) -> Optional[Path]:
        if not self.enabled:
            return None
        weights = self.directory / f"checkpoint-{epoch}.safetensors"
        save_weights(model.state_dict(), weights, metadata=dict(metadata, epoch=epoch))
        path = save_torch(dict(state, epoch=epoch, weights=weights.name), self.directory / f"checkpoint-{epoch}.state.pt")
        self._prune()
        return path

    def save_best(self, model: torch.nn.Module, ema: Optional[torch.nn.Module], metadata: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        save_weights(model.state_dict(), self.directory / "model_best.safetensors", metadata=metadata)
        if ema is not None:
            save_weights(ema.state_dict(), self.directory / "model_best_ema.safetensors", metadata=metadata)

    def _prune(self) -> None:
        for epoch, path in _state_files(self.directory)[: -self.keep]:
            for old in (self.directory / f"checkpoint-{epoch}.safetensors", path):
                old.unlink(missing_ok=True)
