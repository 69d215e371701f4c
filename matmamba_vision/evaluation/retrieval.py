"""Adaptive image retrieval: a database embedded by one submodel, queries embedded by others, exact kNN.

Every (query, database) granularity pair is scored with 1-NN top-1, mAP@10 and recall@1/5/10. Separately
trained baselines can be added as query models against the same database (they share no metric space).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

from ..elastic import count_flops, count_params
from ..models.matmamba_vision import MatMambaVision
from .cli import check_same_classes
from .configs import SubmodelConfig
from .embeddings import EmbeddingCache, EmbeddingSet, embed_splits
from .knn import knn_search
from .plots import plot_retrieval
from .report import format_table, write_csv, write_json
from .retrieval_metrics import retrieval_metrics

__all__ = ["Baseline", "run_retrieval", "score_pair", "write_retrieval_outputs", "retrieval_table", "CSV_COLUMNS"]

CSV_COLUMNS = ("query", "query_kind", "query_granularity", "db_granularity", "top1", "map10", "recall1", "recall5",
               "recall10", "queries", "db_size", "query_params_non_embedding", "query_gflops", "query_cached",
               "db_cached")
K = 10


@dataclass
class Baseline:
    """A separately trained query model; ``weights_id`` identifies its weights for the cache."""

    label: str
    model: MatMambaVision
    weights_id: str


def score_pair(query: EmbeddingSet, database: EmbeddingSet, backend: str = "auto", device: str = "cpu",
               index: str = "Flat", query_chunk: int = 2048, db_chunk: int = 65536) -> Dict[str, float]:
    """kNN of ``query`` rows in ``database`` and the retrieval metrics (percent)."""
    if query.embeddings.shape[1] != database.embeddings.shape[1]:
        raise ValueError(f"query embeddings have width {query.embeddings.shape[1]}, the database "
                         f"{database.embeddings.shape[1]}: they cannot be compared")
    _, nn = knn_search(query.embeddings, database.embeddings, k=min(K, database.embeddings.shape[0]),
                       backend=backend, device=device, index=index, query_chunk=query_chunk, db_chunk=db_chunk)
    if nn.shape[1] < K:
        raise ValueError(f"the database has {database.embeddings.shape[0]} images; mAP@10 and recall@10 need "
                         f"at least {K}")
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
) -> List[Dict[str, Any]]:
    """Embed (or read from ``cache``) the database at each ``db_configs`` and the queries at each
    ``query_configs`` and every baseline, then score every query set against every database.

    ``model_identity`` names the model and its weights (e.g. checkpoint SHA-256); ``db_identity`` and
    ``query_identity`` the data and transform of each split. ValueError on empty splits or class lists that
    differ between the two splits.
    """
    if not db_configs or not query_configs:
        raise ValueError("retrieval needs at least one database and one query granularity")
    check_same_classes(getattr(db_loader, "classes", None), getattr(query_loader, "classes", None),
                       db_identity.get("split", "database"), query_identity.get("split", "query"))
    for name, loader, ident in (("database", db_loader, db_identity), ("query", query_loader, query_identity)):
        if getattr(loader, "num_samples", None) == 0:
            raise ValueError(f"the {name} split ({ident.get('split')}) is empty")
    common = dict(device=device, amp_dtype=amp_dtype, max_samples=max_samples, share_prefix=share_prefix)
    db_sets = embed_splits(model, db_loader, [c.dims for c in db_configs], dict(model_identity, **db_identity),
                           cache, names=[c.name for c in db_configs], desc=f"embed {db_identity.get('split', 'db')}",
                           **common)
    q_sets = embed_splits(model, query_loader, [c.dims for c in query_configs],
                          dict(model_identity, **query_identity), cache, names=[c.name for c in query_configs],
                          desc=f"embed {query_identity.get('split', 'queries')}", **common)
    queries = []
    for cfg, qs in zip(query_configs, q_sets):
        queries.append(dict(query=cfg.name, query_kind="granularity", query_granularity=_granularity_value(cfg.dims),
                            query_params_non_embedding=count_params(model, list(cfg.dims), exclude_embedding=True),
                            query_gflops=count_flops(model, list(cfg.dims), img_size) / 1e9, set=qs))
    for b in baselines:
        dims = [int(blk.mixer.max_granularity) for blk in b.model.layers]
        (bs,) = embed_splits(b.model, query_loader, [dims], dict(model="baseline", weights=b.weights_id,
                             model_args=b.model.model_args, **query_identity), cache, names=[f"baseline-{b.label}"],
                             desc=f"embed baseline {b.label}", **common)
        queries.append(dict(query=b.label, query_kind="baseline", query_granularity=_granularity_value(dims),
                            query_params_non_embedding=count_params(b.model, None, exclude_embedding=True),
                            query_gflops=count_flops(b.model, None, img_size) / 1e9, set=bs))
    rows = []
    # Baselines are scored against one database: the full-width one, else the widest asked for.
    widest = max(db_configs, key=lambda c: sum(c.dims))
    for dcfg, ds in zip(db_configs, db_sets):
        for q in queries:
            if q["query_kind"] == "baseline" and dcfg is not widest:
                continue
            metrics = score_pair(q["set"], ds, backend=backend, device=str(device), index=index)
            row = {k: v for k, v in q.items() if k != "set"}
            row.update(db_granularity=_granularity_value(dcfg.dims), **metrics,
                       query_cached=q["set"].from_cache, db_cached=ds.from_cache)
            rows.append(row)
    return rows


def _granularity_value(dims: Sequence[int]):
    """An int for a uniform per-layer list, else the list's run-length name."""
    from .configs import dims_name

    return int(dims[0]) if len(set(dims)) == 1 else dims_name(dims)


def write_retrieval_outputs(rows: Sequence[Dict[str, Any]], out_dir: os.PathLike, meta: Dict[str, Any],
                            stem: str = "retrieval", title: str = "") -> Dict[str, Path]:
    """``<stem>.csv``, ``<stem>.json`` (meta + rows) and ``<stem>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    plottable = [r for r in rows if isinstance(r["query_granularity"], int) and isinstance(r["db_granularity"], int)]
    return {
        "csv": write_csv(rows, out_dir / f"{stem}.csv", CSV_COLUMNS),
        "json": write_json(dict(meta, rows=list(rows)), out_dir / f"{stem}.json"),
        "png": plot_retrieval(plottable or rows, out_dir / f"{stem}.png", title=title),
    }


def retrieval_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    cols = ["query", "query_kind", "query_granularity", "db_granularity", "top1", "map10", "recall1", "recall5",
            "recall10", "queries", "db_size"]
    heads = ["query", "kind", "query g", "database g", "1-NN top-1 %", "mAP@10 %", "R@1 %", "R@5 %", "R@10 %",
             "queries", "database"]
    return format_table(rows, cols, heads, markdown=markdown)
