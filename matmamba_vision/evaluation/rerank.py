"""Shortlist and rerank (after Matryoshka Representation Learning): a cheap search finds K candidates, the
full-width embeddings order them.

The shortlist searches a database embedded by a cheap configuration (D/8 by default) with the query embedded
by the same configuration, optionally cut to its first ``shortlist_dim`` coordinates (MRL's low-dimensional
prefix, renormalised); the K candidates are then scored with the full-width query against their full-width
database embeddings, by decreasing score, equal scores by increasing database index (as :func:`knn_search`).
With K = database size the result is exhaustive full-width search.

Cost per query: encoder GFLOPs (:func:`~matmamba_vision.count_flops`; the two configurations run in one
``forward_many`` call, so their shared leading blocks count once) and search GFLOPs of exact search
(2 x database x width for the shortlist, 2 x K x D for the rerank, 2 x database x D for exhaustive search). In
MatMamba every configuration embeds into D dimensions, so the shortlist saves search work only with
``shortlist_dim`` < D; a cheap configuration saves database-building work, and the query pays both encoders.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..accuracy import autocast_context
from ..elastic import count_flops
from ..models.matmamba_vision import MatMambaVision
from .cascade import _full_dims, _gvalue, _lcp, prefix_flops
from .classification import iterate_batches
from .embeddings import EmbeddingSet
from .report import format_table, write_csv, write_json
from .retrieval import K, knn_search, retrieval_metrics
from .submodels import SubmodelConfig

__all__ = ["rerank", "run_rerank", "rerank_table", "write_rerank_outputs", "RERANK_KS"]

RERANK_KS = (10, 50, 200)


def _prefix(emb: np.ndarray, dim: Optional[int]) -> np.ndarray:
    if dim is None or dim >= emb.shape[1]:
        return np.ascontiguousarray(emb, dtype=np.float32)
    cut = np.asarray(emb[:, :dim], dtype=np.float32)
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def rerank(
    query_full: np.ndarray, candidates: np.ndarray, db_full: np.ndarray, k: int = K
) -> Tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each query's ``candidates`` (queries, K) by inner product of the full-width embeddings;
    ``(scores, indices)`` ordered by score descending, then index ascending."""
    if candidates.ndim != 2 or candidates.shape[0] != query_full.shape[0] or not 1 <= k <= candidates.shape[1]:
        raise ValueError(f"candidates must be (queries={query_full.shape[0]}, K >= k={k}), got {candidates.shape}")
    cand = np.sort(candidates, axis=1)
    vecs = np.asarray(db_full[cand.reshape(-1)], dtype=np.float32).reshape(*cand.shape, -1)
    scores = np.einsum("qd,qkd->qk", np.asarray(query_full, dtype=np.float32), vecs)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(cand, order, 1)


@torch.no_grad()
def run_rerank(
    model: MatMambaVision,
    query_loader: Any,
    shortlist: SubmodelConfig,
    full: SubmodelConfig,
    shortlist_db: EmbeddingSet,
    full_db: EmbeddingSet,
    ks: Sequence[int] = RERANK_KS,
    shortlist_dim: Optional[int] = None,
    backend: str = "auto",
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    max_samples: Optional[int] = None,
    img_size: Optional[Union[int, Tuple[int, int]]] = None,
) -> List[Dict[str, Any]]:
    """Exhaustive full-width search (``kind='exhaustive'``) and shortlist + rerank for each K in ``ks``
    (``kind='rerank'``), one pass over the queries, each timed separately (encode + search + rerank, data
    loading excluded, first batch an untimed warm-up). Rows: 1-NN top-1, mAP@10, recall (percent), encoder and
    search GFLOPs per query, ms per query."""
    n_db = full_db.embeddings.shape[0]
    if shortlist_db.embeddings.shape[0] != n_db or not np.array_equal(shortlist_db.labels, full_db.labels):
        raise ValueError("the shortlist and full-width databases must hold the same images in the same order")
    if not ks or any(not K <= kk <= n_db for kk in ks):
        raise ValueError(f"every K must be in [{K}, database size {n_db}], got {list(ks)}")
    dim = full_db.embeddings.shape[1]
    if shortlist_dim is not None and not 1 <= shortlist_dim <= dim:
        raise ValueError(f"shortlist_dim must be in [1, {dim}], got {shortlist_dim}")
    s_dim = shortlist_dim or dim
    dev = torch.device(device)
    model.eval().to(dev)
    sd, fd = _full_dims(model, shortlist.dims), _full_dims(model, full.dims)
    if sd == fd:
        raise ValueError(f"the shortlist configuration {shortlist.name} is the full one; name a cheaper one")
    db_short = _prefix(shortlist_db.embeddings, shortlist_dim)
    full_gf = count_flops(model, fd, img_size) / 1e9
    both_gf = (count_flops(model, sd, img_size) + count_flops(model, fd, img_size)) / 1e9
    both_gf -= prefix_flops(model, fd, _lcp(sd, fd), img_size) / 1e9
    search = dict(backend=backend, device=device, progress=False)
    labels: List[np.ndarray] = []
    ex_nn: List[np.ndarray] = []
    rr_nn: List[List[np.ndarray]] = [[] for _ in ks]
    ex_t, rr_t = 0.0, [0.0] * len(ks)

    def encode(images, configs):
        with autocast_context(dev, amp_dtype):
            out = dict(model.forward_many(images, configs, pre_logits=True))
        return [F.normalize(out[i].float(), dim=1).cpu().numpy() for i in range(len(configs))]

    for b, (images, targets) in enumerate(iterate_batches(query_loader, max_samples, "rerank")):
        images = images.to(dev)
        if b == 0:  # warm-up, untimed
            qs, qf = encode(images, [sd, fd])
            knn_search(_prefix(qs, shortlist_dim), db_short, k=max(ks), **search)
        labels.append(targets.cpu().numpy())
        t0 = time.perf_counter()
        (qf,) = encode(images, [fd])
        ex_nn.append(knn_search(qf, full_db.embeddings, k=K, **search)[1])
        ex_t += time.perf_counter() - t0
        t0 = time.perf_counter()
        qs, qf = encode(images, [sd, fd])
        qs = _prefix(qs, shortlist_dim)
        enc_t = time.perf_counter() - t0
        for j, kk in enumerate(ks):
            t0 = time.perf_counter()
            _, cand = knn_search(qs, db_short, k=kk, **search)
            rr_nn[j].append(rerank(qf, cand, full_db.embeddings)[1])
            rr_t[j] += enc_t + time.perf_counter() - t0
    if not labels:
        raise ValueError("the query split is empty: the loader yielded no images")
    q_labels = np.concatenate(labels)
    n = q_labels.shape[0]
    common = dict(db_size=n_db, full=_gvalue(fd))
    rows = [
        dict(
            kind="exhaustive",
            shortlist=None,
            shortlist_dim=None,
            K=n_db,
            **retrieval_metrics(np.concatenate(ex_nn), q_labels, full_db.labels),
            query_gflops=full_gf,
            search_gflops=2 * n_db * dim / 1e9,
            ms_per_query=1e3 * ex_t / n,
            **common,
        )
    ]
    for j, kk in enumerate(ks):
        rows.append(
            dict(
                kind="rerank",
                shortlist=_gvalue(sd),
                shortlist_dim=s_dim,
                K=kk,
                **retrieval_metrics(np.concatenate(rr_nn[j]), q_labels, full_db.labels),
                query_gflops=both_gf,
                search_gflops=(2 * n_db * s_dim + 2 * kk * dim) / 1e9,
                ms_per_query=1e3 * rr_t[j] / n,
                **common,
            )
        )
    return rows


def rerank_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    cols = ["kind", "shortlist", "shortlist_dim", "K", "top1", "map10", "query_gflops", "search_gflops", "ms_per_query"]
    heads = ["kind", "shortlist g", "dims", "K", "1-NN top-1 %", "mAP@10 %", "encoder GFLOPs", "search GFLOPs", "ms/q"]
    fmt = dict(query_gflops=".4g", search_gflops=".4g", ms_per_query=".3g")
    return format_table(rows, cols, heads, floatfmt=fmt, markdown=markdown)


def write_rerank_outputs(rows: Sequence[Dict[str, Any]], out_dir, meta: Dict[str, Any]) -> Dict:
    """``rerank.csv`` and ``rerank.json`` (meta + rows) in ``out_dir``."""
    from pathlib import Path

    out_dir = Path(out_dir)
    return {
        "csv": write_csv(rows, out_dir / "rerank.csv"),
        "json": write_json(dict(meta, rows=list(rows)), out_dir / "rerank.json"),
    }
