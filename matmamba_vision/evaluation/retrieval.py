"""Adaptive image retrieval: a database embedded by one submodel, queries embedded by others, exact kNN.

Every (query, database) granularity pair is scored with 1-NN top-1, mAP@10 and recall@1/5/10. Separately
trained baselines can be added as query models against the same database (they share no metric space) and
are also scored against their own database.

The k-nearest-neighbour search is exact, by inner product (cosine on L2-normalised embeddings), in chunks.

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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.identity import check_same_classes
from ..elastic import count_flops, count_params
from ..models.matmamba_vision import MatMambaVision
from .embeddings import EmbeddingCache, EmbeddingSet, embed_splits
from .report import format_table, plot_retrieval, write_csv, write_json
from .submodels import SubmodelConfig

__all__ = [
    "Baseline",
    "run_retrieval",
    "score_pair",
    "write_retrieval_outputs",
    "retrieval_table",
    "CSV_COLUMNS",
    "knn_search",
    "resolve_backend",
    "faiss_available",
    "KNN_BACKENDS",
    "retrieval_metrics",
]

CSV_COLUMNS = (
    "query",
    "query_kind",
    "query_granularity",
    "db_model",
    "db_granularity",
    "top1",
    "map10",
    "recall1",
    "recall5",
    "recall10",
    "queries",
    "db_size",
    "query_params_non_embedding",
    "query_gflops",
    "query_cached",
    "db_cached",
)
K = 10


@dataclass
class Baseline:
    """A separately trained query model; ``weights_id`` identifies its weights for the cache."""

    label: str
    model: MatMambaVision
    weights_id: str


def score_pair(
    query: EmbeddingSet,
    database: EmbeddingSet,
    backend: str = "auto",
    device: str = "cpu",
    index: str = "Flat",
    query_chunk: int = 2048,
    db_chunk: int = 65536,
) -> Dict[str, float]:
    """kNN of ``query`` rows in ``database`` and the retrieval metrics (percent)."""
    if query.embeddings.shape[1] != database.embeddings.shape[1]:
        raise ValueError(
            f"query embeddings have width {query.embeddings.shape[1]}, the database "
            f"{database.embeddings.shape[1]}: they cannot be compared"
        )
    _, nn = knn_search(
        query.embeddings,
        database.embeddings,
        k=min(K, database.embeddings.shape[0]),
        backend=backend,
        device=device,
        index=index,
        query_chunk=query_chunk,
        db_chunk=db_chunk,
    )
    if nn.shape[1] < K:
        raise ValueError(
            f"the database has {database.embeddings.shape[0]} images; mAP@10 and recall@10 need at least {K}"
        )
    out = retrieval_metrics(nn, query.labels, database.labels)
    out["db_size"] = int(database.embeddings.shape[0])
    return out


def run_retrieval(
    model: MatMambaVision,
    db_loader: Iterable,
    query_loader: Iterable,
    db_configs: Sequence[SubmodelConfig],
    query_configs: Sequence[SubmodelConfig],
    model_identity: Dict[str, Any],
    db_identity: Dict[str, Any],
    query_identity: Dict[str, Any],
    cache: EmbeddingCache,
    baselines: Sequence[Baseline] = (),
    backend: str = "auto",
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    max_samples: Optional[int] = None,
    index: str = "Flat",
    share_prefix: bool = True,
    img_size: Optional[Union[int, Tuple[int, int]]] = None,
    db_index: Optional[Any] = None,
) -> List[Dict[str, Any]]:
    """Embed (or read from ``cache``) the database at each ``db_configs`` and the queries at each
    ``query_configs`` and every baseline, then score every query set against every database. Each baseline is
    also scored against its own database (the database split embedded by the baseline; ``db_model`` = its label,
    ``'nested'`` for the model's databases).

    ``db_index``: a searchable database (``.search(queries, k)``, ``.labels``, ``.ntotal``, ``.from_cache``, as
    :mod:`.knn_index` builds) standing for the single entry of ``db_configs``; the database split is then not
    embedded by the model.

    ``model_identity`` names the model and its weights (e.g. checkpoint SHA-256); ``db_identity`` and
    ``query_identity`` the data and transform of each split. ValueError on empty splits or class lists that
    differ between the two splits.
    """
    if not db_configs or not query_configs:
        raise ValueError("retrieval needs at least one database and one query granularity")
    check_same_classes(
        getattr(db_loader, "classes", None),
        getattr(query_loader, "classes", None),
        db_identity.get("split", "database"),
        query_identity.get("split", "query"),
    )
    for name, loader, ident in (("database", db_loader, db_identity), ("query", query_loader, query_identity)):
        if getattr(loader, "num_samples", None) == 0:
            raise ValueError(f"the {name} split ({ident.get('split')}) is empty")
    common = dict(device=device, amp_dtype=amp_dtype, max_samples=max_samples, share_prefix=share_prefix)
    if db_index is not None and len(db_configs) != 1:
        raise ValueError(f"a database index stands for one database granularity, got {len(db_configs)}")
    db_sets = (
        [db_index]
        if db_index is not None
        else embed_splits(
            model,
            db_loader,
            [c.dims for c in db_configs],
            dict(model_identity, **db_identity),
            cache,
            names=[c.name for c in db_configs],
            desc=f"embed {db_identity.get('split', 'db')}",
            **common,
        )
    )
    q_sets = embed_splits(
        model,
        query_loader,
        [c.dims for c in query_configs],
        dict(model_identity, **query_identity),
        cache,
        names=[c.name for c in query_configs],
        desc=f"embed {query_identity.get('split', 'queries')}",
        **common,
    )
    queries = []
    for cfg, qs in zip(query_configs, q_sets):
        queries.append(
            dict(
                query=cfg.name,
                query_kind="granularity",
                query_granularity=_granularity_value(cfg.dims),
                query_params_non_embedding=count_params(model, list(cfg.dims), exclude_embedding=True),
                query_gflops=count_flops(model, list(cfg.dims), img_size) / 1e9,
                set=qs,
            )
        )
    for b in baselines:
        dims = [int(blk.mixer.max_granularity) for blk in b.model.layers]
        (bs,) = embed_splits(
            b.model,
            query_loader,
            [dims],
            dict(model="baseline", weights=b.weights_id, model_args=b.model.model_args, **query_identity),
            cache,
            names=[f"baseline-{b.label}"],
            desc=f"embed baseline {b.label}",
            **common,
        )
        queries.append(
            dict(
                query=b.label,
                query_kind="baseline",
                query_granularity=_granularity_value(dims),
                query_params_non_embedding=count_params(b.model, None, exclude_embedding=True),
                query_gflops=count_flops(b.model, None, img_size) / 1e9,
                set=bs,
                own_db=embed_splits(
                    b.model,
                    db_loader,
                    [dims],
                    dict(model="baseline", weights=b.weights_id, model_args=b.model.model_args, **db_identity),
                    cache,
                    names=[f"baseline-{b.label}"],
                    desc=f"embed baseline {b.label} {db_identity.get('split', 'db')}",
                    **common,
                )[0],
            )
        )
    rows = []
    # Baselines are scored against one database: the full-width one, else the widest asked for.
    widest = max(db_configs, key=lambda c: sum(c.dims))
    for dcfg, ds in zip(db_configs, db_sets):
        for q in queries:
            if q["query_kind"] == "baseline" and dcfg is not widest:
                continue
            if db_index is not None:
                metrics = _score_searchable(q["set"], db_index)
            else:
                metrics = score_pair(q["set"], ds, backend=backend, device=str(device), index=index)
            row = {k: v for k, v in q.items() if k not in ("set", "own_db")}
            row.update(
                db_model="nested",
                db_granularity=_granularity_value(dcfg.dims),
                **metrics,
                query_cached=q["set"].from_cache,
                db_cached=ds.from_cache,
            )
            rows.append(row)
    for q in queries:  # each baseline against its own database
        if q["query_kind"] == "baseline":
            row = {k: v for k, v in q.items() if k not in ("set", "own_db")}
            metrics = score_pair(q["set"], q["own_db"], backend=backend, device=str(device), index=index)
            row.update(
                db_model=q["query"],
                db_granularity=q["query_granularity"],
                **metrics,
                query_cached=q["set"].from_cache,
                db_cached=q["own_db"].from_cache,
            )
            rows.append(row)
    return rows


def _score_searchable(query: EmbeddingSet, database: Any) -> Dict[str, float]:
    """Retrieval metrics of ``query`` against a searchable database (see ``run_retrieval``'s ``db_index``)."""
    if database.ntotal < K:
        raise ValueError(f"the database has {database.ntotal} images; mAP@10 and recall@10 need at least {K}")
    _, nn = database.search(query.embeddings, K)
    out = retrieval_metrics(nn, query.labels, database.labels)
    out["db_size"] = int(database.ntotal)
    return out


def _granularity_value(dims: Sequence[int]):
    """An int for a uniform per-layer list, else the list's run-length name."""
    from .submodels import dims_name

    return int(dims[0]) if len(set(dims)) == 1 else dims_name(dims)


def write_retrieval_outputs(
    rows: Sequence[Dict[str, Any]], out_dir: os.PathLike, meta: Dict[str, Any], stem: str = "retrieval", title: str = ""
) -> Dict[str, Path]:
    """``<stem>.csv``, ``<stem>.json`` (meta + rows) and ``<stem>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    plottable = [r for r in rows if isinstance(r["query_granularity"], int) and isinstance(r["db_granularity"], int)]
    return {
        "csv": write_csv(rows, out_dir / f"{stem}.csv", CSV_COLUMNS),
        "json": write_json(dict(meta, rows=list(rows)), out_dir / f"{stem}.json"),
        "png": plot_retrieval(plottable or rows, out_dir / f"{stem}.png", title=title),
    }


def retrieval_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    cols = [
        "query",
        "query_kind",
        "query_granularity",
        "db_model",
        "db_granularity",
        "top1",
        "map10",
        "recall1",
        "recall5",
        "recall10",
        "queries",
        "db_size",
    ]
    heads = [
        "query",
        "kind",
        "query g",
        "database model",
        "database g",
        "1-NN top-1 %",
        "mAP@10 %",
        "R@1 %",
        "R@5 %",
        "R@10 %",
        "queries",
        "database",
    ]
    return format_table(rows, cols, heads, markdown=markdown)


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
        raise ValueError(
            "knn backend 'faiss' requested but faiss is not installed (pip install faiss-cpu, "
            "or the package's [faiss] extra); use 'torch' or 'auto'"
        )
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
    bar = tqdm(
        starts, desc=f"knn ({backend})", unit="chunk", disable=not progress or len(starts) < 2, dynamic_ncols=True
    )
    if backend == "torch":
        q_all = [torch.from_numpy(_as_f32(queries[a : a + query_chunk])).to(dev) for a in range(0, nq, query_chunk)]
    for start in bar:
        d = _as_f32(database[start : start + db_chunk])
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
                q = _as_f32(queries[a : a + query_chunk])
                if gpu_res is not None:
                    s, i = faiss.knn_gpu(gpu_res, q, d, kk, metric=faiss.METRIC_INNER_PRODUCT)
                else:
                    s, i = faiss.knn(q, d, kk, metric=faiss.METRIC_INNER_PRODUCT)
                parts_s.append(torch.from_numpy(s))
                parts_i.append(torch.from_numpy(i.astype(np.int64)) + start)
        best_s, best_i = _merge(best_s, best_i, torch.cat(parts_s), torch.cat(parts_i), k)
    return best_s.numpy(), best_i.numpy()


def build_faiss_index(embeddings: np.ndarray, spec: str = "Flat", chunk: int = 65536, progress: bool = False) -> Any:
    """A faiss ``index_factory(dim, spec)`` inner-product index over ``embeddings`` (trained on a sample of at
    most max(100k, 64 x dim) rows when the index needs training). ValueError for a bad ``spec`` or too few rows."""
    import faiss

    n, dim = embeddings.shape
    try:
        idx = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
        raise ValueError(f"knn index {spec!r} is not a valid faiss index_factory string ({e})") from None
    try:
        if not idx.is_trained:
            rng = np.random.default_rng(0)
            rows = np.sort(rng.choice(n, size=min(n, max(100_000, 64 * dim)), replace=False))
            idx.train(_as_f32(embeddings[rows]))
        for a in tqdm(range(0, n, chunk), desc=f"index {spec}", disable=not progress):
            idx.add(_as_f32(embeddings[a : a + chunk]))
    except RuntimeError as e:  # e.g. fewer database rows than an IVF index's clusters
        raise ValueError(
            f"knn index {spec!r} cannot be built over {n} database rows ({e}); use 'Flat' (exact) or a smaller index"
        ) from None
    return idx


def _approximate(queries, database, k, spec, query_chunk, db_chunk, progress):
    """Build the faiss ``index_factory(spec)`` index (inner product) over ``database`` and search it."""
    idx = build_faiss_index(database, spec, db_chunk, progress)
    out_s, out_i = [], []
    for a in range(0, queries.shape[0], query_chunk):
        s, i = idx.search(_as_f32(queries[a : a + query_chunk]), k)
        out_s.append(s)
        out_i.append(i.astype(np.int64))
    return np.concatenate(out_s), np.concatenate(out_i)


def retrieval_metrics(
    neighbors: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    recall_ks: Sequence[int] = (1, 5, 10),
    map_k: int = 10,
) -> Dict[str, float]:
    """Metrics in percent for ranked ``neighbors`` (queries, >= max k) of database row indices.

    - ``top1``: the nearest database image has the query's class (1-NN accuracy);
    - ``recall@k``: at least one of the k nearest has the query's class;
    - ``map@k`` (key ``map10`` for k=10): mean over queries of AP@k = sum_j P(j) rel(j) / min(k, R), R being
      the number of database images of the query's class (AP = 0 when R = 0).

    A neighbour index below 0 (an approximate faiss index returns -1 where it found fewer than k) is a miss.
    """
    neighbors = np.asarray(neighbors)
    query_labels = np.asarray(query_labels)
    db_labels = np.asarray(db_labels)
    need = max(max(recall_ks), map_k)
    if neighbors.ndim != 2 or neighbors.shape[0] != query_labels.shape[0]:
        raise ValueError(f"neighbors must be (queries={query_labels.shape[0]}, k), got {neighbors.shape}")
    if neighbors.shape[1] < need:
        raise ValueError(f"neighbors has {neighbors.shape[1]} columns; these metrics need {need}")
    if neighbors.shape[0] == 0:
        raise ValueError("no queries: the query split is empty")
    ranked = neighbors[:, :need]
    rel = (db_labels[np.maximum(ranked, 0)] == query_labels[:, None]) & (ranked >= 0)
    out = {"top1": 100.0 * rel[:, 0].mean()}
    for k in recall_ks:
        out[f"recall{k}"] = 100.0 * rel[:, :k].any(axis=1).mean()
    hits = rel[:, :map_k].astype(np.float64)
    precision_at = np.cumsum(hits, axis=1) / np.arange(1, map_k + 1)
    classes, counts = np.unique(db_labels, return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist()))
    r = np.array([per_class.get(int(c), 0) for c in query_labels], dtype=np.float64)
    denom = np.minimum(r, map_k)
    ap = np.divide((precision_at * hits).sum(axis=1), denom, out=np.zeros_like(denom), where=denom > 0)
    out[f"map{map_k}"] = 100.0 * ap.mean()
    out["queries"] = int(neighbors.shape[0])
    return out
