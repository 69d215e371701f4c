"""Reading and writing weights safely: atomic writes, no code execution on load, clear errors.

Weights are safetensors; anything else (a timm/official ``.bin``/``.pth``) loads with
``torch.load(weights_only=True)``, which refuses pickles that would run code.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .models import MatMambaVision, checkpoint_filter_fn, unwrap_state_dict

__all__ = [
    "CheckpointError", "atomic_write", "save_weights", "save_torch", "load_weights", "load_torch",
    "load_checkpoint", "build_model", "save_model_dir",
]

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model (the message names the file)."""


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def save_weights(state_dict: Dict[str, torch.Tensor], path: PathLike, metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Atomically write a state dict as safetensors (``metadata`` stored as JSON under ``meta``)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {"meta": json.dumps(metadata, default=str)} if metadata else None
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def save_torch(obj: Any, path: PathLike) -> Path:
    """Atomically ``torch.save`` an object of plain containers and tensors (loadable with weights_only)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_torch(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(weights_only=True)``; a corrupt, truncated or code-running file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise CheckpointError(f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: {e})") from e


def load_weights(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch file; CheckpointError names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path), device=str(map_location))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    obj = load_torch(path, map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return unwrap_state_dict(obj)


def load_checkpoint(model: MatMambaVision, path: PathLike, strict: bool = True) -> MatMambaVision:
    """Load our or an official checkpoint into ``model``; a mismatch names the keys and shapes at fault."""
    state = checkpoint_filter_fn(load_weights(path), model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state) if state[k].shape != own[k].shape
    )
    if shapes or (strict and (missing or unexpected)):
        parts = [f"{path}: does not fit {type(model).__name__}"]
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError("; ".join(parts))
    model.load_state_dict(state, strict=strict)
    return model


def build_model(
    model_name: str,
    pretrained: bool = False,
    checkpoint: Optional[PathLike] = None,
    **kwargs,
) -> MatMambaVision:
    """``timm.create_model`` plus an optional checkpoint (ours or official); unknown names raise ValueError."""
    if not model_name.startswith(("hf-hub:", "local-dir:")) and model_name not in timm.list_models("matmamba*"):
        raise ValueError(f"unknown model {model_name!r}; MatMamba models: {', '.join(timm.list_models('matmamba*'))}")
    model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def save_model_dir(model: MatMambaVision, directory: PathLike) -> Path:
    """Write ``config.json`` and ``model.safetensors``; ``timm.create_model('local-dir:DIR')`` rebuilds it."""
    from timm.models import save_for_hf

    directory = Path(directory)
    save_for_hf(model, str(directory), model_args=model.model_args, safe_serialization=True)
    return directory
