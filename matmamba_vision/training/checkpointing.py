"""Training checkpoints that lose nothing: ``checkpoint-E.safetensors`` (weights) plus ``checkpoint-E.state.pt``
(optimiser, a plateau scheduler's metric history, scaler, EMA, epoch, step, RNG states, args; every other
schedule is a function of the step, rebuilt from the flags at resume), each written atomically with
:mod:`matmamba_vision.weights`; the state file is written last and is the commit point. The last N are
kept; ``model_best.safetensors`` (and ``model_best_ema.safetensors``) track the best validation top-1, and the
folder ``model_best/`` holds the same weights with their config for timm (``local-dir:RUN/model_best``). The
files' names, and finding the newest checkpoint: :mod:`.checkpoint_files`.

Before training starts, :func:`matmamba_vision.runtime.check_output_dir` and :func:`check_free_space` report an
output folder that cannot be written or has too little room, and :func:`check_resume_matches` refuses to resume a
checkpoint into another model or other granularities (before anything is loaded)."""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..weights import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    load_torch,
    load_weights,
    read_weights_metadata,
    save_model_dir,
    save_torch,
    save_weights,
)
from .checkpoint_files import (
    BEST_DIR,
    STATE,
    WEIGHTS,
    CheckpointName,
    newest_checkpoint,
    prune_epochs,
    prune_mid_epoch,
    run_files,
)

__all__ = [
    "rng_state",
    "set_rng_state",
    "CheckpointManager",
    "resolve_resume",
    "load_training_state",
    "read_training_state",
    "check_resume_matches",
    "check_free_space",
    "reconcile_best",
    "REGULARISATION_ARGS",
]

# model_args a resumed run may change: regularisation and the SSD kernel choice, not the architecture
REGULARISATION_ARGS = ("drop_rate", "proj_drop_rate", "drop_path_rate", "ssd_backend")

_logger = logging.getLogger("train")
_BEST, _BEST_EMA = CheckpointName.best(), CheckpointName.best(ema=True)


def rng_state() -> Dict[str, Any]:
    """torch, CUDA, Python and NumPy RNG states as weights-only-loadable objects."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))


def resolve_resume(path: str) -> Path:
    """The state file to resume from: given directly, beside a weights file, or the newest in a folder."""
    p = Path(path)
    if p.is_dir():
        newest = newest_checkpoint(p)
        if newest is None:
            raise ValueError(f"--resume: no checkpoint-*.state.pt in {p}")
        return newest
    if p.name.endswith(WEIGHTS):
        state = p.with_name(p.name[: -len(WEIGHTS)] + STATE)
        if p.is_file() and not state.is_file():  # e.g. model_best: weights only
            raise ValueError(
                f"--resume: {path} has no training state beside it ({state.name}); resume a "
                f"checkpoint-E file or the run folder, or start from these weights with "
                f"--initial-checkpoint {path}"
            )
        p = state
    if not p.is_file():
        raise ValueError(f"--resume: {path} is not a checkpoint state file, weights file or experiment folder")
    return p


def read_training_state(path: Path) -> Dict[str, Any]:
    """The state file's contents (weights-only load); nothing is loaded into a model."""
    state = load_torch(path)
    if not isinstance(state, dict) or "weights" not in state:
        raise CheckpointError(f"{path}: not a training state file")
    return state


def load_training_state(path: Path, model: torch.nn.Module) -> Dict[str, Any]:
    """Load the state file (weights-only) and the model weights it names into ``model``."""
    state = read_training_state(path)
    load_checkpoint(model, path.parent / state["weights"])
    return state


def check_resume_matches(
    state: Dict[str, Any], path: Path, model_name: str, model_args: Dict[str, Any], granularities: List[int]
) -> None:
    """ValueError unless the run to resume trained the same model (name and architecture arguments; see
    :data:`REGULARISATION_ARGS` for those that may change) at the same granularities."""
    hint = (
        f"resume with the flags it was trained with, or start a new run from its weights with "
        f"--initial-checkpoint {path.parent / state['weights']}"
    )
    saved_name = state.get("model") or (state.get("args") or {}).get("model")
    if saved_name is not None and saved_name != model_name:
        raise ValueError(
            f"--resume {path}: trained with --model {saved_name}, this run asks for --model {model_name}; {hint}"
        )
    saved_args = state.get("model_args")
    if saved_args is not None:
        keys = sorted((set(saved_args) | set(model_args)) - set(REGULARISATION_ARGS))
        changed = [
            f"{k}: {saved_args.get(k)} -> {model_args.get(k)}"
            for k in keys
            if _plain_value(saved_args.get(k)) != _plain_value(model_args.get(k))
        ]
        if changed:
            raise ValueError(f"--resume {path}: the model differs from the one trained ({', '.join(changed)}); {hint}")
    saved_gs = state.get("granularities")
    if saved_gs is not None and sorted(saved_gs, reverse=True) != sorted(granularities, reverse=True):
        raise ValueError(
            f"--resume {path}: trained at granularities {list(saved_gs)}, this run asks for "
            f"{list(granularities)} (--granularities); {hint}"
        )


def _plain_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def checkpoint_bytes(model: torch.nn.Module, keep: int, ema: bool) -> int:
    """A generous estimate of the disk space the checkpoints of a run take at their peak: ``keep`` + 1 sets
    (the new one is written before the oldest goes) of weights + state (optimiser moments ~2x the weights,
    EMA), plus the best model (and its EMA) and its temporary copy, plus 1 MiB for logs and plots."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    copies = (max(keep, 1) + 1) * (3 + int(ema)) + 2 * (1 + int(ema)) + 2  # + model_best/ and its temporary
    return weights * copies + (1 << 20)


def check_free_space(directory: Path, model: torch.nn.Module, keep: int, ema: bool) -> None:
    """ValueError when ``directory``'s file system (its own, or its nearest existing parent's) has less free
    space than :func:`checkpoint_bytes` (less the checkpoints already there, which a resumed run replaces)."""
    directory = Path(directory)
    best_dir = [p for p in (directory / BEST_DIR).glob("*") if p.is_file()]
    existing = sum(p.stat().st_size for p in [*(p for _, _, p in run_files(directory)), *best_dir])
    need = max(checkpoint_bytes(model, keep, ema) - existing, 1 << 20)
    on_disk = next(d for d in (directory, *directory.parents) if d.exists())  # the folder may not exist yet
    free = shutil.disk_usage(on_disk).free
    if free < need:
        mib = 1 << 20
        raise ValueError(
            f"--output {directory}: {free / mib:.1f} MiB free, but its checkpoints need about "
            f"{need / mib:.1f} MiB (--checkpoint-hist {keep}{', --model-ema' if ema else ''}); "
            f"free some space or choose another --output"
        )


def reconcile_best(source: Path, directory: Path, best: Dict[str, Any]) -> Dict[str, Any]:
    """As :func:`_reconcile_best_files`, then the ``model_best/`` folder made to match ``model_best.safetensors``
    (its weights replaced, or the folder removed when there is no best)."""
    best = _reconcile_best_files(source, directory, best)
    config = Path(source) / BEST_DIR / "config.json"
    target = Path(directory) / BEST_DIR / "config.json"
    if config.is_file() and not target.is_file():  # resumed into another folder: the config comes along
        data = config.read_bytes()
        atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    _sync_best_dir(Path(directory))
    return best


def _sync_best_dir(directory: Path) -> None:
    folder, weights = directory / BEST_DIR, directory / _BEST.weights
    if not (folder / "config.json").is_file():
        return
    if not weights.is_file():
        shutil.rmtree(folder)
        _logger.warning("%s removed: no best model yet", folder)
        return
    save_weights(load_weights(weights), folder / "model.safetensors")  # config.json is the run's: unchanged


def _reconcile_best_files(source: Path, directory: Path, best: Dict[str, Any]) -> Dict[str, Any]:
    """On resume from a checkpoint in ``source`` into the run folder ``directory``: make ``model_best`` there the
    resumed run's best. One written by epochs after the checkpoint (epochs this run replays) is moved aside as
    ``model_best[_ema]-epochE.abandoned.safetensors``. The resumed best is taken from ``source``'s model_best or,
    failing that, its checkpoint of that epoch; when neither is kept there is no best yet (the next validation
    writes one). Returns the best record to continue with."""
    source, directory = Path(source), Path(directory)
    epoch = best.get("epoch", -1)
    if epoch < 0:
        return best

    def written(folder: Path) -> Optional[int]:
        path = folder / _BEST.weights
        return read_weights_metadata(path).get("epoch") if path.is_file() else None

    here = written(directory)
    if here == epoch:
        return best
    if here is not None:
        for name in (_BEST, _BEST_EMA):
            if (directory / name.weights).is_file():
                aside = CheckpointName.abandoned(here, ema=name.ema)
                os.replace(directory / name.weights, directory / aside.weights)
        _logger.warning(
            "model_best of epoch %d is not the resumed run's: moved aside as %s",
            here,
            CheckpointName.abandoned(here).weights,
        )
    if written(source) == epoch:  # resumed into another folder: the run's best comes along
        for name in (_BEST, _BEST_EMA):
            if (source / name.weights).is_file():
                path = source / name.weights
                save_weights(load_weights(path), directory / path.name, metadata=read_weights_metadata(path))
        return best
    kept = CheckpointName.at_epoch(epoch)
    weights, state = source / kept.weights, source / kept.state
    if weights.is_file() and state.is_file():
        meta = read_weights_metadata(weights)
        save_weights(load_weights(weights), directory / _BEST.weights, metadata=meta)
        ema = load_torch(state).get("ema")
        if ema is not None:
            save_weights(ema, directory / _BEST_EMA.weights, metadata=meta)
        _logger.info("model_best: the resumed run's best (epoch %d) restored from %s", epoch, weights.name)
        return best
    _logger.warning("the resumed run's best (epoch %d) is no longer kept; the next validation starts a new best", epoch)
    return {"top1": -1.0, "epoch": -1}


class CheckpointManager:
    """Writes per-epoch checkpoints (rank 0 only), keeps the newest ``keep``, and the best model."""

    def __init__(self, directory: Path, keep: int = 2, enabled: bool = True):
        if keep < 1:
            raise ValueError(f"--checkpoint-hist must be at least 1, got {keep}")
        self.directory, self.keep, self.enabled = Path(directory), keep, enabled
        if enabled:
            self._remove_orphans()

    def _remove_orphans(self) -> None:
        """Temporary files of atomic writes that a killed run left behind (a whole checkpoint's size each)."""
        for tmp in self.directory.glob(".*.tmp"):
            if tmp.is_file():
                _logger.info("removing %s, left by an interrupted write", tmp)
                tmp.unlink(missing_ok=True)

    def save(
        self, epoch: int, model: torch.nn.Module, state: Dict[str, Any], metadata: Dict[str, Any]
    ) -> Optional[Path]:
        if not self.enabled:
            return None
        name = CheckpointName.at_epoch(epoch)
        weights = self.directory / name.weights
        save_weights(model.state_dict(), weights, metadata=dict(metadata, epoch=epoch))
        path = save_torch(dict(state, epoch=epoch, weights=weights.name), self.directory / name.state)
        prune_epochs(self.directory, self.keep)
        prune_mid_epoch(self.directory)
        return path

    def save_mid_epoch(
        self, epoch: int, batches: int, model: torch.nn.Module, state: Dict[str, Any], metadata: Dict[str, Any]
    ) -> Optional[Path]:
        """An in-epoch checkpoint after ``batches`` batches of ``epoch`` (see :mod:`.midepoch`); older in-epoch
        ones are removed once it is complete."""
        if not self.enabled:
            return None
        name = CheckpointName.mid_epoch(epoch, batches)
        weights = self.directory / name.weights
        save_weights(model.state_dict(), weights, metadata=dict(metadata, epoch=epoch, batch=batches))
        path = save_torch(dict(state, epoch=epoch, batch=batches, weights=weights.name), self.directory / name.state)
        prune_mid_epoch(self.directory)
        return path

    def save_best(
        self,
        model: torch.nn.Module,
        ema: Optional[torch.nn.Module],
        metadata: Dict[str, Any],
        data_config: Optional[Dict[str, Any]] = None,
    ) -> None:
        """``model_best.safetensors`` (and ``_ema``) with ``metadata``; then ``model_best/`` (config.json with the
        model's args and ``data_config``, model.safetensors) for timm's ``local-dir:`` loader."""
        if not self.enabled:
            return
        save_weights(model.state_dict(), self.directory / _BEST.weights, metadata=metadata)
        if ema is not None:
            save_weights(ema.state_dict(), self.directory / _BEST_EMA.weights, metadata=metadata)
        save_model_dir(model, self.directory / BEST_DIR, data_config)
