"""Embedding passes with an on-disk cache of memory-mapped arrays.

An entry is keyed by a SHA-256 of its identity: model name and arguments, the weights' content hash (the
checkpoint file's SHA-256, or of the state dict when there is no file), per-layer granularity, dataset,
split, a fingerprint of the split's files, transform config, sample limit, precision and device type. It is
written into a temporary directory and renamed into place
only after every row, the labels and ``meta.json`` (``"complete": true``) are on disk, so an interrupted pass
is never read as complete, and a changed checkpoint gets a new key instead of a stale entry. The temporary
directory's name carries the writer's host and process id; a later pass for the same entry removes those of
writers on this host that are no longer running (a killed pass leaves up to a whole entry's size behind).

Layout: ``<cache_dir>/<model>/<split>/<name>-<key[:16]>/{embeddings.f32, labels.i64, meta.json}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..accuracy import autocast_context
from ..models.matmamba_vision import MatMambaVision
from .classification import iterate_batches

__all__ = ["EmbeddingSet", "EmbeddingCache", "embed_splits", "file_sha256", "state_dict_sha256", "CACHE_VERSION"]

CACHE_VERSION = 1
_EMB, _LAB, _META = "embeddings.f32", "labels.i64", "meta.json"
_HOST = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.uname().nodename) or "host"


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def file_sha256(path: os.PathLike, block: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def state_dict_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class EmbeddingSet:
    """Embeddings (rows, dim) float32, L2-normalised, memory-mapped read-only; labels (rows,) int64."""

    embeddings: np.ndarray
    labels: np.ndarray
    meta: Dict[str, Any]
    path: Optional[Path] = None
    from_cache: bool = False


def _identity_key(identity: Dict[str, Any]) -> str:
    blob = json.dumps(dict(identity, cache_version=CACHE_VERSION), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=+" else "_" for c in str(name))[:80] or "x"


class EmbeddingCache:
    """Complete embedding sets under ``root``; ``root=None`` keeps everything in memory (no cache)."""

    def __init__(self, root: Optional[os.PathLike]):
        self.root = Path(root) if root else None

    def entry_dir(self, identity: Dict[str, Any]) -> Optional[Path]:
        if self.root is None:
            return None
        key = _identity_key(identity)
        name = _safe(identity.get("name", "emb"))
        folder = self.root / _safe(identity.get("model", "model")) / _safe(identity.get("split", "split"))
        return folder / f"{name}-{key[:16]}"

    def load(self, identity: Dict[str, Any]) -> Optional[EmbeddingSet]:
        """The complete entry for ``identity``, memory-mapped, or None (absent, incomplete or inconsistent)."""
        d = self.entry_dir(identity)
        if d is None or not (d / _META).is_file():
            return None
        try:
            meta = json.loads((d / _META).read_text())
            n, dim = int(meta["rows"]), int(meta["dim"])
            if not meta.get("complete") or meta.get("key") != _identity_key(identity):
                return None
            if (d / _EMB).stat().st_size != n * dim * 4 or (d / _LAB).stat().st_size != n * 8:
                return None
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None
        emb = np.memmap(d / _EMB, dtype=np.float32, mode="r", shape=(n, dim)) if n else np.zeros((0, dim), np.float32)
        labels = np.fromfile(d / _LAB, dtype=np.int64)
        return EmbeddingSet(emb, labels, meta, d, from_cache=True)


class _Writer:
    """Streams rows to a temporary directory; :meth:`commit` marks it complete and renames it into place."""

    def __init__(self, cache: EmbeddingCache, identity: Dict[str, Any]):
        self.identity, self.cache = identity, cache
        self.final = cache.entry_dir(identity)
        self.rows, self.dim = 0, None
        self._labels: List[np.ndarray] = []
        self._chunks: List[np.ndarray] = []
        if self.final is not None:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._remove_dead_writers()
            self.tmp = Path(
                tempfile.mkdtemp(prefix=f".tmp-{self.final.name}-{_HOST}-{os.getpid()}-", dir=self.final.parent)
            )
            self._f = open(self.tmp / _EMB, "wb")
        else:
            self.tmp, self._f = None, None

    def _remove_dead_writers(self) -> None:
        """Temporary directories of this entry left by processes on this host that have ended."""
        prefix = f".tmp-{self.final.name}-"
        for d in self.final.parent.glob(prefix + "*"):
            parts = d.name[len(prefix) :].rsplit("-", 2)  # host, pid, mkdtemp's random part
            if len(parts) != 3 or parts[0] != _HOST or not parts[1].isdigit() or _running(int(parts[1])):
                continue
            shutil.rmtree(d, ignore_errors=True)

    def append(self, emb: np.ndarray, labels: np.ndarray) -> None:
        emb = np.ascontiguousarray(emb, dtype=np.float32)
        self.dim = emb.shape[1]
        self.rows += emb.shape[0]
        self._labels.append(np.asarray(labels, dtype=np.int64))
        if self._f is not None:
            self._f.write(emb.tobytes())
        else:
            self._chunks.append(emb)

    def commit(self, extra_meta: Dict[str, Any]) -> EmbeddingSet:
        labels = np.concatenate(self._labels) if self._labels else np.zeros(0, np.int64)
        meta = dict(
            extra_meta,
            identity=self.identity,
            key=_identity_key(self.identity),
            rows=self.rows,
            dim=self.dim or 0,
            complete=True,
            created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        if self._f is None:
            emb = np.concatenate(self._chunks) if self._chunks else np.zeros((0, self.dim or 0), np.float32)
            return EmbeddingSet(emb, labels, meta)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        with open(self.tmp / _LAB, "wb") as f:
            f.write(labels.tobytes())
            f.flush()
            os.fsync(f.fileno())
        with open(self.tmp / _META, "w") as f:  # written last: its presence with complete=true marks the entry
            json.dump(meta, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(self.tmp, self.final)
        except OSError:  # the entry's folder exists: another process's complete entry, or debris
            existing = self.cache.load(self.identity)
            if existing is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return existing
            stale = Path(tempfile.mkdtemp(prefix=f".stale-{self.final.name}-", dir=self.final.parent))
            os.rename(self.final, stale / "old")
            os.rename(self.tmp, self.final)
            shutil.rmtree(stale, ignore_errors=True)
        emb = (
            np.memmap(self.final / _EMB, dtype=np.float32, mode="r", shape=(self.rows, self.dim))
            if self.rows
            else np.zeros((0, self.dim or 0), np.float32)
        )
        return EmbeddingSet(emb, labels, meta, self.final)

    def abort(self) -> None:
        if self._f is not None and not self._f.closed:
            self._f.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


@torch.no_grad()
def embed_splits(
    model: MatMambaVision,
    loader: Iterable,
    granularities: Sequence[Sequence[int]],
    identity: Dict[str, Any],
    cache: EmbeddingCache,
    names: Optional[Sequence[str]] = None,
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    max_samples: Optional[int] = None,
    share_prefix: bool = True,
    desc: str = "embed",
) -> List[EmbeddingSet]:
    """L2-normalised pre-logit embeddings of ``loader``'s images at each per-layer list in ``granularities``.

    Entries found complete in ``cache`` are reused; the others are computed together in one pass over the
    data (each batch decoded once). ``identity`` describes the model, weights, data and transform; the
    granularity, sample limit, precision and device type are added to it here (a bfloat16 or GPU pass is not
    served for a float32 CPU one). ValueError when the split yields no image.
    """
    names = list(names) if names is not None else [str(list(g)) for g in granularities]
    precision = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32"
    # "spread": a limited split is an evenly spaced subset (entries of the earlier first-N subsets do not match)
    limit = {"max_samples": max_samples} if max_samples is None else {"max_samples": max_samples, "subset": "spread"}
    idents = [
        dict(
            identity,
            granularity=[int(x) for x in g],
            name=n,
            precision=precision,
            device_type=torch.device(device).type,
            **limit,
        )
        for g, n in zip(granularities, names)
    ]
    results: List[Optional[EmbeddingSet]] = [cache.load(i) for i in idents]
    todo = [j for j, r in enumerate(results) if r is None]
    if not todo:
        return results  # type: ignore[return-value]
    device = torch.device(device)
    model.eval().to(device)
    writers = [_Writer(cache, idents[j]) for j in todo]
    dims_list = [list(granularities[j]) for j in todo]
    start = time.perf_counter()
    try:
        for images, targets in iterate_batches(loader, max_samples, desc):
            images = images.to(device, non_blocking=True)
            labels = targets.cpu().numpy()
            with autocast_context(device, amp_dtype):
                for idx, emb in model.forward_many(images, dims_list, pre_logits=True, share_prefix=share_prefix):
                    writers[idx].append(F.normalize(emb.float(), dim=1).cpu().numpy(), labels)
        if writers[0].rows == 0:
            raise ValueError(f"{identity.get('split', 'the')} split is empty: the loader yielded no images")
        seconds = time.perf_counter() - start
        for j, w in zip(todo, writers):
            results[j] = w.commit({"seconds": seconds})
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return results  # type: ignore[return-value]
