"""Retrieval metrics from ranked neighbours: 1-NN top-1 accuracy, recall@k and mAP@k."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

__all__ = ["retrieval_metrics"]


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
