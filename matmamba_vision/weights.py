"""Reading and writing weights safely: atomic writes, no code execution on load, corruption detected.

Weights are safetensors carrying a SHA-256 of their tensors; other state (optimizer, RNG, ...) is a torch
file wrapped with a SHA-256 of its bytes. Anything else (a timm/official ``.bin``/``.pth``) loads with
``torch.load(weights_only=True)``, which refuses pickles that would run code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import timm
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save_file

from .hub import resolve_hub_weights
from .models import MatMambaVision, checkpoint_filter_fn, unwrap_state_dict
from .models.matmamba_vision import DATA_CONFIG_KEYS

__all__ = [
    "CheckpointError",
    "atomic_write",
    "tensors_sha256",
    "save_weights",
    "read_weights_metadata",
    "save_torch",
    "load_weights",
    "load_torch",
    "CheckpointFile",
    "read_checkpoint",
    "load_checkpoint",
    "build_model",
    "save_model_dir",
]

PathLike = Union[str, os.PathLike]
_CHECKED_TORCH_FORMAT = "matmamba_vision/checked-torch-v1"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model (the message names the file)."""


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def atomic_write(path: PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it, then rename it over ``path``.

    A crash at any point leaves either the old file or the new one, never a partial file. The file gets the
    mode an ordinary write would (``0o666`` less the umask), not the temporary file's private ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
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


def tensors_sha256(tensors: Dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of a state dict (order-independent)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_weights(
    state_dict: Dict[str, torch.Tensor], path: PathLike, metadata: Optional[Dict[str, Any]] = None
) -> Path:
    """Atomically write a state dict as safetensors with its SHA-256 (``metadata`` stored as JSON)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {"sha256": tensors_sha256(tensors)}
    if metadata:
        meta["meta"] = json.dumps(metadata, default=str)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_weights_metadata(path: PathLike) -> Dict[str, Any]:
    """The JSON ``metadata`` stored by :func:`save_weights` (empty if none)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    return json.loads(meta["meta"]) if "meta" in meta else {}


def save_torch(obj: Any, path: PathLike) -> Path:
    """Atomically ``torch.save`` plain containers and tensors, wrapped with a SHA-256 of the bytes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    envelope = {
        "format": _CHECKED_TORCH_FORMAT,
        "sha256": hashlib.sha256(data).hexdigest(),
        "data": torch.frombuffer(bytearray(data), dtype=torch.uint8),
    }
    return atomic_write(path, lambda tmp: torch.save(envelope, tmp))


def _torch_load(source: Any, path: Path, map_location: Union[str, torch.device]) -> Any:
    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise CheckpointError(
            f"{path}: not a loadable weights-only checkpoint ({type(e).__name__}: "
            f"{_load_error_reason(e)}); it is damaged, not a checkpoint, or holds code"
        ) from e


def _load_error_reason(error: Exception) -> str:
    """torch.load's reason on one line, without its advice to retry with ``weights_only=False`` (which runs any
    code the file holds: not for a file of unknown origin)."""
    text = str(error)
    if "weights_only" not in text:
        return " ".join(text.split())[:300]
    for line in text.splitlines():  # e.g. 'Unsupported global: GLOBAL posix.system was not an allowed global ...'
        if line.strip().startswith("Unsupported"):
            return line.strip().split(" was not", 1)[0][:300]
    return "refused by the weights-only unpickler"


def load_torch(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Any:
    """``torch.load(weights_only=True)``, checking the SHA-256 of files written by :func:`save_torch`.

    A missing, corrupt, truncated or code-running file raises CheckpointError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    return _unwrap_checked(_torch_load(path, path, map_location), path, map_location)


def _unwrap_checked(obj: Any, path: Path, map_location: Union[str, torch.device]) -> Any:
    """The object a :func:`save_torch` envelope holds, its checksum verified (other objects as they are)."""
    if isinstance(obj, dict) and obj.get("format") == _CHECKED_TORCH_FORMAT:
        if not isinstance(obj.get("data"), torch.Tensor) or not isinstance(obj.get("sha256"), str):
            raise CheckpointError(f"{path}: a checked torch file without its data or checksum, the file is corrupt")
        data = obj["data"].numpy().tobytes()
        if hashlib.sha256(data).hexdigest() != obj["sha256"]:
            raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt")
        obj = _torch_load(io.BytesIO(data), path, map_location)
    return obj


def load_weights(path: PathLike, map_location: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """A state dict from safetensors (checksum verified when stored) or a weights-only torch file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as f:
                expected = (f.metadata() or {}).get("sha256")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
        if expected is not None and tensors_sha256(tensors) != expected:
            raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt")
        return tensors
    return _state_dict(load_torch(path, map_location), path)


def _state_dict(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    return unwrap_state_dict(obj)


@dataclass
class CheckpointFile:
    """A checkpoint read in one pass: its weights, the metadata train.py stored in it (``{}`` when none) and the
    SHA-256 of its bytes (what identifies it, e.g. in an embedding cache key)."""

    path: Path
    state_dict: Dict[str, torch.Tensor]
    metadata: Dict[str, Any]
    sha256: str


def _safetensors_metadata(data: bytes) -> Dict[str, str]:
    """The ``__metadata__`` of safetensors bytes (the format: an 8-byte little-endian header length, then a JSON
    header)."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    return header.get("__metadata__") or {}


def read_checkpoint(path: PathLike) -> CheckpointFile:
    """Read ``path`` once (safetensors, its stored checksum verified, or a weights-only torch file) into a
    :class:`CheckpointFile`; a missing, corrupt or code-running file raises CheckpointError naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if path.suffix != ".safetensors":
        obj = _unwrap_checked(_torch_load(io.BytesIO(data), path, "cpu"), path, "cpu")
        return CheckpointFile(path, _state_dict(obj, path), {}, digest)
    try:
        meta = _safetensors_metadata(data)
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({e})") from e
    if meta.get("sha256") is not None and tensors_sha256(tensors) != meta["sha256"]:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt")
    return CheckpointFile(path, tensors, json.loads(meta["meta"]) if "meta" in meta else {}, digest)


def load_checkpoint(
    model: MatMambaVision, path: Union[PathLike, CheckpointFile], strict: bool = True
) -> MatMambaVision:
    """Load our or an official checkpoint (a path, or a :class:`CheckpointFile` already read) into ``model``; a
    mismatch names the keys and shapes at fault."""
    if isinstance(path, CheckpointFile):
        path, state = path.path, path.state_dict
    else:
        state = load_weights(path)
    state = checkpoint_filter_fn(state, model)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
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
    checkpoint: Union[None, PathLike, CheckpointFile] = None,
    **kwargs,
) -> MatMambaVision:
    """``timm.create_model`` plus an optional checkpoint (ours or official); unknown names raise ValueError.
    A pretrained tag (``name.tag``, as timm takes it) is accepted."""
    base_name = timm.models.split_model_name_tag(model_name)[0]
    if not model_name.startswith(("hf-hub:", "local-dir:")) and base_name not in timm.list_models("matmamba*"):
        raise ValueError(f"unknown model {model_name!r}; MatMamba models: {', '.join(timm.list_models('matmamba*'))}")
    if pretrained and not model_name.startswith(("hf-hub:", "local-dir:")) and not timm.list_pretrained(base_name):
        raise ValueError(
            f"{model_name} has no published weights (pretrained=True); models with weights: "
            f"{', '.join(timm.list_pretrained('matmamba*'))}"
        )
    if pretrained:  # no network: one line at once (or the cached file), not a minute of retries
        overlay = resolve_hub_weights(model_name, kwargs.get("pretrained_cfg_overlay"))
        if overlay is not None:
            kwargs["pretrained_cfg_overlay"] = overlay
    model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
    if checkpoint:
        load_checkpoint(model, checkpoint)
    return model


def save_model_dir(model: MatMambaVision, directory: PathLike, data_config: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``config.json`` and ``model.safetensors``; ``timm.create_model('local-dir:DIR', pretrained=True)``
    rebuilds it, and timm's validate.py takes ``--model local-dir:DIR --pretrained`` with no other flag.

    Both are written into a temporary folder beside ``directory`` and moved into place, so a failure leaves
    nothing half-written. A model built from the class (no ``pretrained_cfg``) gets the default one.
    ``data_config`` (timm's: input size, interpolation, mean, std, crop) replaces the model's own in the config,
    e.g. the statistics a model was trained with.
    """
    from timm.models import save_for_hf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if getattr(model, "pretrained_cfg", None) is None:  # any registered name: model_args rebuild it exactly
        from .models.matmamba_vision import _cfg

        cfg = _cfg(
            architecture="matmamba_vision_35m_patch16_224",
            num_classes=model.num_classes,
            input_size=(model.in_chans, *model.patch_embed.img_size),
        )
        if model.in_chans != len(cfg["mean"]):  # as timm's data config does: the channels' average
            cfg.update(mean=(sum(cfg["mean"]) / 3,) * model.in_chans, std=(sum(cfg["std"]) / 3,) * model.in_chans)
        model.pretrained_cfg = cfg
    # the config's input size is the model's own (it may have been built or resized to another one)
    saved_cfg = model.pretrained_cfg
    data = {k: tuple(v) if isinstance(v, list) else v for k, v in (data_config or {}).items() if k in DATA_CONFIG_KEYS}
    model.pretrained_cfg = dict(saved_cfg, **data)
    model.pretrained_cfg.update(
        num_classes=model.num_classes,
        input_size=(model.in_chans, *model.patch_embed.img_size),
        fixed_input_size=not model.dynamic_img_size,
    )
    try:
        with tempfile.TemporaryDirectory(prefix=f".{directory.name}.", dir=directory.parent) as tmp:
            save_for_hf(model, tmp, model_args=model.model_args, safe_serialization=True)
            for name in sorted(os.listdir(tmp)):
                os.replace(os.path.join(tmp, name), directory / name)
    finally:
        model.pretrained_cfg = saved_cfg
    return directory
