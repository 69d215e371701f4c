"""The key a latency is measured under, and the cache of measured latencies.

A key names the machine (CPU model or GPU name), device type, runtime and its version, threads, batch, input
size, dtype, the model's architecture and, where it is not 0, ``settle`` (the untimed calls before each timed one
of a configuration kept built, see :func:`default_settle`). :class:`LatencyCache` serves an entry only for an
identical key, so timings taken on another machine, in another runtime, or at other threads, batch or size are
refused, not reused.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..export import package_version
from ..models.matmamba_vision import MatMambaVision
from ..weights import atomic_write

__all__ = [
    "RUNTIMES",
    "default_cache_path",
    "machine_name",
    "default_settle",
    "latency_key",
    "key_mismatch",
    "dims_key",
    "LatencyCache",
]

RUNTIMES = ("eager", "compile", "onnxruntime")
CACHE_VERSION = 1


def default_cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "matmamba_vision" / "latency.json"


def machine_name(device: Any = "cpu") -> str:
    """The GPU's name for a CUDA device, else the CPU's model name (``/proc/cpuinfo``, then ``platform``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def default_settle(runtime: str) -> int:
    """Untimed calls of a configuration kept built right before each of its timed calls: 1 in ONNX Runtime,
    0 in PyTorch.

    Timing rounds interleave the configurations, so a call follows calls of the others. There an ONNX Runtime
    session ran 2.7-3x slower than back to back (the demo model, batch 1, 2-core CPU; alike with one intra-op
    thread and with one thread pool for all sessions, so not its threads waking up: most likely its weights and
    buffers leaving the caches). One untimed call first brings it back to the steady state a deployment runs it
    in, which export.py's re-timing measures.
    Eager PyTorch showed no such difference beyond its noise, and an extra call per round would double the
    timing of large models."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    return 1 if runtime == "onnxruntime" else 0


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def latency_key(
    model: MatMambaVision,
    runtime: str,
    batch: int,
    device: Any = "cpu",
    threads: Optional[int] = None,
    amp_dtype: Optional[torch.dtype] = None,
    settle: Optional[int] = None,
) -> Dict[str, Any]:
    """What a timing depends on: machine, device type, runtime (and its version), threads, batch, input size,
    dtype, architecture (weights do not matter: the work depends on the shapes only) and ``settle`` (default:
    :func:`default_settle`; named in the key where it is not 0, so the keys of timings taken without it stay
    as they were)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if settle is None:
        settle = default_settle(runtime)
    if isinstance(settle, bool) or not isinstance(settle, int) or settle < 0:
        raise ValueError(f"settle must be an integer >= 0, got {settle!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    device = torch.device(device)
    if runtime == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"runtime 'onnxruntime' is timed on the CPU (its CPU provider); got device {str(device)!r}")
    args = dict(model.model_args)
    args.pop("mixer_dims", None)  # per configuration, part of the entry's own key
    key = dict(
        machine=machine_name(device),
        device=device.type,
        runtime=runtime,
        torch=torch.__version__,
        threads=int(threads or torch.get_num_threads()),
        batch=batch,
        img_size=[int(s) for s in model.patch_embed.img_size],
        dtype=str(amp_dtype or torch.float32).replace("torch.", ""),
        model=args,
    )
    if runtime == "onnxruntime":
        key["onnxruntime"] = package_version("onnxruntime")
    if settle:
        key["settle"] = settle
    return _jsonable(key)


def key_mismatch(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """The fields in which two keys differ, as ``"machine: 'A' (stored) vs 'B' (here)"``; empty when equal."""
    out = []
    for k in sorted(set(stored) | set(current)):
        if stored.get(k) != current.get(k):
            out.append(f"{k}: {stored.get(k)!r} (stored) vs {current.get(k)!r} (here)")
    return out


def dims_key(dims: Sequence[int]) -> str:
    """A configuration's name in the cache: its per-block dims, space-separated."""
    return " ".join(str(int(g)) for g in dims)


class LatencyCache:
    """A JSON file of timing entries, each under its :func:`latency_key`; per entry, one record per
    configuration (its per-block dims). Only an identical key is served: :meth:`lookup` returns nothing for
    timings taken on another machine, in another runtime, or at other threads, batch or size."""

    def __init__(self, path: os.PathLike):
        self.path = Path(path)

    def _entries(self) -> List[Dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return []  # a damaged cache is re-measured, not trusted
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            return []
        return [e for e in data.get("entries", []) if isinstance(e, dict) and isinstance(e.get("key"), dict)]

    def lookup(self, key: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
        """Stored records for ``key`` (dims string -> record); empty unless an entry has exactly this key."""
        key = _jsonable(key)
        for e in self._entries():
            if e["key"] == key:
                return dict(e.get("timings", {}))
        return {}

    def refused(self, key: Dict[str, Any], same_model: bool = False) -> List[str]:
        """For entries not served for ``key`` (with ``same_model``, only those of the same architecture): why
        (their first differing fields), for a log line."""
        key = _jsonable(key)
        return [
            "; ".join(key_mismatch(e["key"], key)[:2])
            for e in self._entries()
            if e["key"] != key and not (same_model and e["key"].get("model") != key.get("model"))
        ]

    def store(self, key: Dict[str, Any], timings: Dict[str, Dict[str, Any]]) -> Path:
        """Add ``timings`` to the entry of ``key`` (created if missing); written atomically."""
        key = _jsonable(key)
        entries = self._entries()
        for e in entries:
            if e["key"] == key:
                e.setdefault("timings", {}).update(_jsonable(timings))
                break
        else:
            entries.append(dict(key=key, timings=_jsonable(timings)))
        text = json.dumps(dict(version=CACHE_VERSION, entries=entries), indent=1) + "\n"
        return atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
