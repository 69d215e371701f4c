"""Exact k-nearest-neighbour search by inner product (cosine on L2-normalised embeddings), in chunks.

The database is read once, a chunk at a time (it may be a memory-mapped array far larger than memory); for
each chunk every query chunk is scored and merged into a running top-k. Memory stays bounded by
``db_chunk x dim`` plus ``query_chunk x db_chunk`` scores plus the queries and their ``k`` results (defaults
2048 x 65536 float32 scores = 512 MiB, 256 MiB of a 1024-wide database chunk). Backends:

- ``faiss``: ``faiss.knn`` (CPU BLAS) or ``faiss.knn_gpu`` on a GPU build with a GPU; exact.
- ``torch``: matrix products with ``torch`` on any device; exact, the same neighbours as faiss.
- ``auto``: faiss when it imports, else torch.

Neighbours are ordered by decreasing score, equal scores by increasing database index. An approximate
faiss index (``index="HNSW32"``, ``"IVF1024,Flat"``, any ``faiss.index_factory`` string) is an option,
never the default; it holds the whole database in memory.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["knn_search", "resolve_backend", "faiss_available", "KNN_BACKENDS"]

KNN_BACKENDS = ("auto", "faiss", "torch")


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(backend: str) -> str:
    """'auto' -> 'faiss' if installed else 'torch'; ValueError for unknown names or a missing faiss."""
    if backend not in KNN_BACKENDS:
        raise ValueError(f"knn backend must be one of {KNN_BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise ValueError("knn backend 'faiss' requested but faiss is not installed (pip install faiss-cpu, "
                         "or the package's [faiss] extra); use 'torch' or 'auto'")
    return backend


def _merge(best_s: Optional[torch.Tensor], best_i: Optional[torch.Tensor], s: torch.Tensor, i: torch.Tensor, k: int):
    """Top-k of the union of two candidate sets per row: by score descending, then index ascending."""
    if best_s is not None:
        s, i = torch.cat([best_s, s], 1), torch.cat([best_i, i], 1)
    i, order = i.sort(dim=1)
    s = s.gather(1, order)
    s, order = s.sort(dim=1, descending=True, stable=True)
    i = i.gather(1, order)
    return s[:, :k].contiguous(), i[:, :k].contiguous()


def _as_f32(a: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 array (a writable copy when ``a`` is a read-only memory map)."""
    out = np.ascontiguousarray(a, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def _gpu_faiss():
    import faiss

    if hasattr(faiss, "get_num_gpus") and hasattr(faiss, "knn_gpu") and faiss.get_num_gpus() > 0:
        return faiss.StandardGpuResources()
    return None


def knn_search(
    queries: np.ndarray,
    database: np.ndarray,
    k: int = 10,
    backend: str = "auto",
    device: str = "cpu",
    query_chunk: int = 2048,
    db_chunk: int = 65536,
    index: str = "Flat",
    progress: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` database rows with the largest inner product for each query row.

    Returns ``(scores, indices)``: float32 and int64 arrays of shape (queries, k). ``index='Flat'`` is exact;
    any other faiss ``index_factory`` string builds that approximate index (faiss only).
    """
    if queries.ndim != 2 or database.ndim != 2 or queries.shape[1] != database.shape[1]:
        raise ValueError(
            f"queries and database must be 2-D with the same width, got {queries.shape} and {database.shape}"
        )
    nq, nd = queries.shape[0], database.shape[0]
    if nq == 0 or nd == 0:
        raise ValueError(f"knn search needs at least one query and one database row, got {nq} and {nd}")
    if not 1 <= k <= nd:
        raise ValueError(f"k must be in [1, database size {nd}], got {k}")
    if query_chunk < 1 or db_chunk < 1:
        raise ValueError(f"query_chunk and db_chunk must be positive, got {query_chunk} and {db_chunk}")
    backend = resolve_backend(backend)
    if index != "Flat":
        if backend != "faiss":
            raise ValueError(f"an approximate index ({index!r}) needs the faiss backend, got {backend!r}")
        return _approximate(queries, database, k, index, query_chunk, db_chunk, progress)
    dev = torch.device(device)
    gpu_res = _gpu_faiss() if backend == "faiss" and dev.type == "cuda" else None
    best_s = best_i = None
    starts = range(0, nd, db_chunk)
    bar = tqdm(starts, desc=f"knn ({backend})", unit="chunk", disable=not progress or len(starts) < 2,
               dynamic_ncols=True)
    if backend == "torch":
        q_all = [torch.from_numpy(_as_f32(queries[a:a + query_chunk])).to(dev) for a in range(0, nq, query_chunk)]
    for start in bar:
        d = _as_f32(database[start:start + db_chunk])
        kk = min(k, d.shape[0])
        parts_s, parts_i = [], []
        if backend == "torch":
            dt = torch.from_numpy(d).to(dev)
            for q in q_all:
                top = (q @ dt.T).topk(kk, dim=1)
                parts_s.append(top.values.float().cpu())
                parts_i.append(top.indices.cpu() + start)
        else:
            import faiss

            for a in range(0, nq, query_chunk):
                q = _as_f32(queries[a:a + query_chunk])
                if gpu_res is not None:
                    s, i = faiss.knn_gpu(gpu_res, q, d, kk, metric=faiss.METRIC_INNER_PRODUCT)
                else:
                    s, i = faiss.knn(q, d, kk, metric=faiss.METRIC_INNER_PRODUCT)
                parts_s.append(torch.from_numpy(s))
                parts_i.append(torch.from_numpy(i.astype(np.int64)) + start)
        best_s, best_i = _merge(best_s, best_i, torch.cat(parts_s), torch.cat(parts_i), k)
    return best_s.numpy(), best_i.numpy()


def _approximate(queries, database, k, spec, query_chunk, db_chunk, progress):
    """Build the faiss ``index_factory(spec)`` index (inner product) over ``database`` and search it."""
    import faiss

    dim = database.shape[1]
    try:
        idx = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"knn index {spec!r} is not a valid faiss index_factory string ({e})") from None
    try:
        if not idx.is_trained:
            rng = np.random.default_rng(0)
            n = min(database.shape[0], max(100_000, 64 * dim))
            rows = np.sort(rng.choice(database.shape[0], size=n, replace=False))
            idx.train(_as_f32(database[rows]))
        for a in tqdm(range(0, database.shape[0], db_chunk), desc=f"index {spec}", disable=not progress):
            idx.add(_as_f32(database[a:a + db_chunk]))
    except RuntimeError as e:  # e.g. fewer database rows than an IVF index's clusters
        raise ValueError(f"knn index {spec!r} cannot be built over {database.shape[0]} database rows ({e}); "
                         "use 'Flat' (exact) or a smaller index") from None
    out_s, out_i = [], []
    for a in range(0, queries.shape[0], query_chunk):
        s, i = idx.search(_as_f32(queries[a:a + query_chunk]), k)
        out_s.append(s)
        out_i.append(i.astype(np.int64))
    return np.concatenate(out_s), np.concatenate(out_i)
