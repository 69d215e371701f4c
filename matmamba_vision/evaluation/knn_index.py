"""A database held as a searchable index: exact search over an embedding set, or a faiss index saved on disk.

:class:`ExactDatabase` searches an :class:`~.embeddings.EmbeddingSet` with :func:`~.retrieval.knn_search`
(exact, faiss or torch). :class:`FaissDatabase` holds a faiss index (``Flat`` = exact inner product, or any
``index_factory`` string such as ``HNSW32`` or ``IVF1024,Flat``) built once. :func:`open_index` saves it in
a folder and reuses it in later runs: a run whose key differs (the model's weights SHA-256, the database
granularity, the split's identity and fingerprint, the index string, the faiss version) is refused with one
line naming the first difference; a query-only run against a saved index reads no database image.

Layout of ``index_dir``: ``index.faiss`` (``faiss.write_index``), ``labels.i64`` and ``meta.json`` (the key,
row count, width, SHA-256 and size of both files, build seconds). The folder is written whole into a
temporary sibling and renamed into place, so an interrupted build leaves no index that looks complete; a
damaged or partial folder (missing file, other size or hash, unreadable JSON) is a ValueError, never read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from .embeddings import EmbeddingSet, file_sha256
from .retrieval import _as_f32, build_faiss_index, knn_search

__all__ = ["ExactDatabase", "FaissDatabase", "open_index", "index_key", "INDEX_VERSION"]

INDEX_VERSION = 1
_INDEX, _LAB, _META = "index.faiss", "labels.i64", "meta.json"


class ExactDatabase:
    """Exact search over an embedding set (``backend``: 'faiss' or 'torch', as :func:`knn_search`)."""

    def __init__(self, emb_set: EmbeddingSet, backend: str = "auto", device: str = "cpu"):
        self.embeddings, self.labels = emb_set.embeddings, np.asarray(emb_set.labels)
        self.backend, self.device = backend, device
        self.from_cache = emb_set.from_cache

    @property
    def ntotal(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return knn_search(queries, self.embeddings, k=k, backend=self.backend, device=self.device, progress=False)


class FaissDatabase:
    """A built faiss index (inner product) with the database labels; ``meta`` records its key and timings."""

    def __init__(self, index: Any, labels: np.ndarray, meta: Dict[str, Any], from_cache: bool = False):
        self.index, self.labels, self.meta, self.from_cache = index, np.asarray(labels), meta, from_cache

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        if not 1 <= k <= self.ntotal:
            raise ValueError(f"k must be in [1, database size {self.ntotal}], got {k}")
        s, i = self.index.search(_as_f32(queries), k)
        return s, i.astype(np.int64)


def index_key(
    weights: str, granularity: Any, data_identity: Dict[str, Any], spec: str, precision: str = "float32"
) -> Dict[str, Any]:
    """What a saved index must match: weights SHA-256, database granularity, the split's identity (dataset,
    folder, split, file fingerprint, transform, sample limit), embedding precision, index string, faiss version."""
    import faiss

    data = {k: v for k, v in sorted(data_identity.items()) if k != "files"}
    return dict(
        weights=weights,
        granularity=granularity,
        split_fingerprint=data_identity.get("files"),
        data=json.loads(json.dumps(data, default=str)),
        precision=precision,
        index=spec,
        faiss_version=faiss.__version__,
        index_version=INDEX_VERSION,
    )


def _short(v: Any) -> str:
    s = json.dumps(v, default=str, sort_keys=True)
    return s if len(s) <= 80 else s[:77] + "..."


def _damaged(index_dir: Path, why: str) -> ValueError:
    return ValueError(f"--index-dir {index_dir}: {why}; the index is damaged or partial: delete the folder to rebuild")


def _load(index_dir: Path, key: Dict[str, Any]) -> FaissDatabase:
    import faiss

    try:
        meta = json.loads((index_dir / _META).read_text())
        saved, rows = meta["key"], int(meta["rows"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _damaged(index_dir, f"{_META} is unreadable ({type(e).__name__}: {e})") from None
    for name, want in key.items():  # the first difference, in one line
        if saved.get(name) != want:
            raise ValueError(
                f"--index-dir {index_dir} was built with {name} = {_short(saved.get(name))}, this run has "
                f"{_short(want)}; delete the folder or name another --index-dir"
            )
    for fname in (_INDEX, _LAB):
        p = index_dir / fname
        if not p.is_file():
            raise _damaged(index_dir, f"{fname} is missing")
        info = meta.get("files", {}).get(fname, {})
        if p.stat().st_size != info.get("bytes") or file_sha256(p) != info.get("sha256"):
            raise _damaged(index_dir, f"{fname} differs from the size or SHA-256 recorded in {_META}")
    try:
        index = faiss.read_index(str(index_dir / _INDEX))
    except RuntimeError as e:
        raise _damaged(index_dir, f"faiss cannot read {_INDEX} ({str(e).splitlines()[0][:200]})") from None
    labels = np.fromfile(index_dir / _LAB, dtype=np.int64)
    if index.ntotal != rows or labels.shape[0] != rows:
        raise _damaged(index_dir, f"{index.ntotal} vectors and {labels.shape[0]} labels, {_META} says {rows}")
    return FaissDatabase(index, labels, dict(meta, path=str(index_dir)), from_cache=True)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save(index_dir: Path, db: FaissDatabase) -> None:
    """Write the folder into a temporary sibling, then rename it into place (an empty folder is replaced)."""
    import faiss

    index_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{index_dir.name}-", dir=index_dir.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp's 0700 would keep a shared index from other users
        faiss.write_index(db.index, str(tmp / _INDEX))
        with open(tmp / _INDEX, "rb+") as f:
            os.fsync(f.fileno())
        _fsync_write(tmp / _LAB, db.labels.astype(np.int64).tobytes())
        files = {n: dict(bytes=(tmp / n).stat().st_size, sha256=file_sha256(tmp / n)) for n in (_INDEX, _LAB)}
        db.meta["files"] = files
        _fsync_write(tmp / _META, json.dumps(db.meta, indent=2, default=str).encode())
        if index_dir.is_dir():
            index_dir.rmdir()  # empty (checked by the caller); rename cannot replace a non-empty one
        os.rename(tmp, index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def open_index(
    index_dir: os.PathLike,
    key: Dict[str, Any],
    database: Callable[[], EmbeddingSet],
    progress: Callable[[str], None] = print,
    extra_meta: Optional[Dict[str, Any]] = None,
) -> FaissDatabase:
    """The index saved in ``index_dir`` when its key equals ``key`` (ValueError naming the first difference,
    or a damaged/partial folder); else, when ``index_dir`` is absent or empty, build it from ``database()``
    (called only then: a reused index reads no database image) and save it atomically, with ``extra_meta``
    (read after ``database()`` returns) in its ``meta.json``."""
    index_dir = Path(index_dir)
    if index_dir.exists() and not index_dir.is_dir():
        raise ValueError(f"--index-dir {index_dir} is a file; name a folder")
    if (index_dir / _META).is_file():
        t0 = time.perf_counter()
        db = _load(index_dir, key)
        progress(
            f"index: reused {index_dir} ({db.ntotal} x {db.dim}, {key['index']}, {time.perf_counter() - t0:.2f} s)"
        )
        return db
    if index_dir.is_dir() and any(index_dir.iterdir()):
        raise _damaged(index_dir, f"the folder is not empty but has no {_META}")
    emb = database()
    t0 = time.perf_counter()
    index = build_faiss_index(emb.embeddings, key["index"])
    build_s = time.perf_counter() - t0
    meta = dict(
        extra_meta or {},
        key=key,
        rows=int(index.ntotal),
        dim=int(index.d),
        build_seconds=build_s,
        created=time.strftime("%Y-%m-%dT%H:%M:%S"),
        key_sha256=hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest(),
    )
    db = FaissDatabase(index, emb.labels, meta)
    _save(index_dir, db)
    db.meta["path"] = str(index_dir)
    progress(f"index: built {index_dir} ({db.ntotal} x {db.dim}, {key['index']}, {build_s:.2f} s)")
    return db
