"""Per-query compute for retrieval: a cascade of query encoders that escalates only the uncertain queries.

Every nested configuration embeds into the same D-dim [CLS] space, so one full-width database serves them all.
A query is encoded at the first (cheapest) configuration and searched; it moves to the next configuration
only where a confidence test fails, and its answer is that of the last configuration it reached.

Confidence test: the **class margin**, ``s1 - s_c``, where ``s1`` is the top-1 similarity and ``s_c`` that of
the highest-ranked of the top-k neighbours whose label differs from the top-1's (``s1 - s_k``, a lower bound,
when all k agree). A query escalates when its margin is below the threshold. Why this test:

- It is the top-1/top-2 margin taken between classes, which is what decides a 1-NN answer. The plain
  top-1/top-2 similarity margin is near zero whenever the two nearest images share a class (most queries in
  a dense database), so it would escalate confident queries.
- Top-k label agreement is discrete (k + 1 levels): too coarse a sweep. The class margin is continuous and
  includes agreement (a query whose k neighbours all agree has the largest lower bound).
- A larger threshold escalates a superset of the queries at every stage, so cost rises with it.

Reuse: each configuration of a batch resumes from the deepest block state it shares with a configuration
already run on those queries (the run of equal leading per-block granularities, as ``forward_many``'s prefix
tree shares them). Uniform widths (16, 32, 64, 128) differ from the first block on, so for them only the
patch and position embedding is reused; a mix'n'match chain such as ``64x3+32x3 -> 64x6`` reuses its shared
blocks. States are kept only at the depths a later configuration resumes from, for the queries that ran.
Cost per query is that of the FLOP counter (:func:`~matmamba_vision.count_flops`, as validate.py reports it)
for its first configuration plus, for each escalation, that configuration's count less the reused prefix
(patch embedding and shared blocks). Search cost is not in it; the measured milliseconds include it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from ..accuracy import autocast_context
from ..elastic import count_flops
from ..layers import use_backend
from ..models.matmamba_vision import MatMambaVision
from .classification import iterate_batches
from .report import format_table, write_csv, write_json
from .submodels import SubmodelConfig

__all__ = [
    "class_margin",
    "PrefixEncoder",
    "prefix_flops",
    "cascade_costs",
    "run_cascade",
    "cascade_table",
    "write_cascade_outputs",
    "plot_cascade",
]

K = 10


def class_margin(scores: np.ndarray, neighbors: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """Per query: top-1 similarity minus that of the best-ranked neighbour of another class than the top-1's
    (``s1 - s_k`` when all ``k`` agree); ``scores`` and ``neighbors`` ranked (queries, k), k >= 2."""
    scores, neighbors = np.asarray(scores, dtype=np.float64), np.asarray(neighbors)
    if scores.ndim != 2 or scores.shape != neighbors.shape or scores.shape[1] < 2:
        raise ValueError(f"scores and neighbors must be (queries, k >= 2) alike, got {scores.shape}, {neighbors.shape}")
    labels = np.where(neighbors >= 0, np.asarray(db_labels)[np.maximum(neighbors, 0)], -1)
    other = labels != labels[:, :1]
    first = np.where(other.any(axis=1), other.argmax(axis=1), scores.shape[1] - 1)
    return scores[:, 0] - scores[np.arange(len(scores)), first]


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _plan(dims_list: Sequence[Sequence[int]]) -> Tuple[List[int], List[set]]:
    """Per configuration j: the depth it resumes from (deepest shared prefix with an earlier one) and the depths
    whose state it must keep for a later one (beyond its own resume depth)."""
    resume = [max((_lcp(dims_list[i], d) for i in range(j)), default=0) for j, d in enumerate(dims_list)]
    keep = [{_lcp(d, dims_list[j]) for j in range(i + 1, len(dims_list))} for i, d in enumerate(dims_list)]
    keep = [{e for e in ks if e > r} for ks, r in zip(keep, resume)]
    return resume, keep


class PrefixEncoder:
    """Encodes rows of one batch at a chain of configurations (per-block lists, full widths filled in), each
    resuming from the deepest block state a configuration before it left for those rows. ``encode(j, rows)``
    needs ``rows`` (sorted batch positions) to be a subset of the rows configuration ``j - 1`` ran on."""

    def __init__(self, model: MatMambaVision, images: torch.Tensor, dims_list: Sequence[Sequence[int]]):
        self.model, self.dims = model, [tuple(int(g) for g in d) for d in dims_list]
        if len(set(self.dims)) != len(self.dims):
            raise ValueError(f"the cascade's configurations must differ, got {[list(d) for d in self.dims]}")
        self.resume, self.keep = _plan(self.dims)
        model._check_input(images)
        rows = np.arange(images.shape[0])
        self.states: Dict[tuple, Tuple[np.ndarray, torch.Tensor, Optional[torch.Tensor]]] = {
            (): (rows, model._pos_embed(model.patch_embed(images)), None)
        }

    def encode(self, j: int, rows: np.ndarray) -> torch.Tensor:
        """L2-normalised embeddings (len(rows), D) of ``rows`` at configuration ``j``."""
        dims, start = self.dims[j], self.resume[j]
        held, hidden, residual = self.states[dims[:start]]
        pos = torch.from_numpy(np.searchsorted(held, rows)).to(hidden.device)
        hidden = hidden.index_select(0, pos)
        residual = residual.index_select(0, pos) if residual is not None else None
        layers = self.model.layers
        previous = [blk.mixer.active_granularity for blk in layers]
        try:
            for i in range(start, len(layers)):
                blk = layers[i]
                blk.mixer.active_granularity = dims[i]
                hidden, residual = blk(hidden, residual)
                if i + 1 in self.keep[j]:
                    self.states[dims[: i + 1]] = (rows, hidden, residual)
        finally:
            for blk, g in zip(layers, previous):
                blk.mixer.active_granularity = g
        emb = self.model.forward_head(self.model.norm_f(hidden + residual), pre_logits=True)
        return F.normalize(emb.float(), dim=1)


def _full_dims(model: MatMambaVision, dims: Sequence[int]) -> List[int]:
    return [int(d or blk.mixer.max_granularity) for d, blk in zip(model.resolve_granularity(list(dims)), model.layers)]


def prefix_flops(
    model: MatMambaVision, dims: Sequence[int], depth: int, img_size: Optional[Union[int, Tuple[int, int]]] = None
) -> int:
    """FLOPs of the patch/position embedding and the first ``depth`` blocks at ``dims`` (torch's flop counter on
    the reference backend, as :func:`~matmamba_vision.count_flops`)."""
    size = img_size or model.patch_embed.img_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    p = next(model.parameters())
    x = torch.zeros(1, model.in_chans, *size, device=p.device, dtype=p.dtype)
    with torch.no_grad(), model.granularity(list(dims)), use_backend(model, "reference"):
        with FlopCounterMode(display=False) as counter:
            model(x)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    names = [f"{root}.patch_embed"] + [f"{root}.layers.{i}" for i in range(depth)]
    return int(sum(sum(counts.get(n, {}).values()) for n in names))


def cascade_costs(
    model: MatMambaVision, dims_list: Sequence[Sequence[int]], img_size: Optional[Union[int, Tuple[int, int]]] = None
) -> List[float]:
    """GFLOPs each configuration adds to a query that reaches it: the full count for the first, the count less
    the reused prefix (patch embedding and shared leading blocks) for an escalation."""
    return _costs(model, dims_list, img_size)[1]


def _costs(model, dims_list, img_size) -> Tuple[List[float], List[float]]:
    """(each configuration's own GFLOPs, the GFLOPs it adds in the cascade)."""
    resume, _ = _plan([tuple(d) for d in dims_list])
    own = [count_flops(model, list(dims), img_size) / 1e9 for dims in dims_list]
    added = [own[0]] + [
        own[j] - prefix_flops(model, dims_list[j], resume[j], img_size) / 1e9 for j in range(1, len(own))
    ]
    return own, added


def _cascade_batch(enc: PrefixEncoder, database: Any, threshold: float, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """Final neighbours (n, k) and the index of the configuration each query ended at."""
    n = enc.states[()][0].shape[0]
    nn, level = np.full((n, k), -1, np.int64), np.zeros(n, np.int64)
    active = np.arange(n)
    for j in range(len(enc.dims)):
        emb = enc.encode(j, active).cpu().numpy()
        s, i = database.search(emb, k)
        nn[active], level[active] = i, j
        if j == len(enc.dims) - 1:
            break
        active = active[class_margin(s, i, database.labels) < threshold]
        if active.size == 0:
            break
    return nn, level


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def run_cascade(
    model: MatMambaVision,
    query_loader: Any,
    configs: Sequence[SubmodelConfig],
    database: Any,
    thresholds: Optional[Sequence[float]] = None,
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    max_samples: Optional[int] = None,
    img_size: Optional[Union[int, Tuple[int, int]]] = None,
    k: int = K,
) -> List[Dict[str, Any]]:
    """Score each configuration alone (``kind='fixed'``) and the cascade over ``configs`` (cheapest first) at each
    threshold (``kind='cascade'``) against ``database`` (``.search(queries, k)``, ``.labels``, ``.ntotal``:
    an :class:`~.knn_index.ExactDatabase` or :class:`~.knn_index.FaissDatabase` of the full-width embeddings).

    One pass over the queries; each batch runs every fixed configuration and the whole cascade at every
    threshold, each timed separately (encode + search, data loading excluded) after an untimed warm-up on the
    first batch. ``thresholds=None``: the deciles of the first configuration's class margins on that first
    batch (they only space the sweep, no operating point is chosen), plus infinity (every query escalates).
    Rows hold 1-NN top-1, mAP@10 and recall (percent), mean query GFLOPs, the share of queries ending at each
    configuration and ms per query.
    """
    from .retrieval import retrieval_metrics

    if len(configs) < 2:
        raise ValueError(f"a cascade needs at least two configurations, got {len(configs)}")
    if not 2 <= k <= database.ntotal:
        raise ValueError(f"k must be in [2, database size {database.ntotal}], got {k}")
    if thresholds is not None and (not thresholds or any(math.isnan(t) for t in thresholds)):
        raise ValueError(f"thresholds must be a non-empty list of numbers, got {thresholds}")
    dev = torch.device(device)
    model.eval().to(dev)
    dims_list = [_full_dims(model, c.dims) for c in configs]
    fixed_cost, costs = _costs(model, dims_list, img_size)
    labels: List[np.ndarray] = []
    fixed_nn: List[List[np.ndarray]] = [[] for _ in configs]
    fixed_t = [0.0] * len(configs)
    casc_nn: List[List[np.ndarray]] = []
    casc_level: List[List[np.ndarray]] = []
    casc_t: List[float] = []
    for b, (images, targets) in enumerate(iterate_batches(query_loader, max_samples, "cascade")):
        images = images.to(dev)
        if b == 0:  # warm-up, untimed; its first-stage margins space the default thresholds
            with autocast_context(dev, amp_dtype):
                enc = PrefixEncoder(model, images, dims_list)
                s, i = database.search(enc.encode(0, np.arange(images.shape[0])).cpu().numpy(), k)
                for j in range(1, len(dims_list)):
                    enc.encode(j, np.arange(images.shape[0]))
            if thresholds is None:
                margins = class_margin(s, i, database.labels)
                thresholds = sorted(set(np.quantile(margins, np.linspace(0, 1, 11)).tolist())) + [math.inf]
            thresholds = list(thresholds)
            casc_nn = [[] for _ in thresholds]
            casc_level = [[] for _ in thresholds]
            casc_t = [0.0] * len(thresholds)
        labels.append(targets.cpu().numpy())
        for j, dims in enumerate(dims_list):
            t0 = time.perf_counter()
            with autocast_context(dev, amp_dtype):
                ((_, emb),) = list(model.forward_many(images, [dims], pre_logits=True))
            emb = F.normalize(emb.float(), dim=1).cpu().numpy()
            fixed_nn[j].append(database.search(emb, k)[1])
            fixed_t[j] += time.perf_counter() - t0
        for ti, t in enumerate(thresholds):
            t0 = time.perf_counter()
            with autocast_context(dev, amp_dtype):
                enc = PrefixEncoder(model, images, dims_list)
                nn, level = _cascade_batch(enc, database, t, k)
            _sync(dev)
            casc_t[ti] += time.perf_counter() - t0
            casc_nn[ti].append(nn)
            casc_level[ti].append(level)
    if not labels:
        raise ValueError("the query split is empty: the loader yielded no images")
    q_labels = np.concatenate(labels)
    n = q_labels.shape[0]
    names = [str(_gvalue(d)) for d in dims_list]
    cum = np.cumsum(costs)
    rows = []
    for j, name in enumerate(names):
        m = retrieval_metrics(np.concatenate(fixed_nn[j]), q_labels, database.labels)
        rows.append(
            dict(
                kind="fixed",
                configs=name,
                threshold=None,
                **m,
                db_size=database.ntotal,
                query_gflops=fixed_cost[j],
                ms_per_query=1e3 * fixed_t[j] / n,
                **{f"share_{nm}": float(j == jj) for jj, nm in enumerate(names)},
            )
        )
    for ti, t in enumerate(thresholds):
        level = np.concatenate(casc_level[ti])
        m = retrieval_metrics(np.concatenate(casc_nn[ti]), q_labels, database.labels)
        rows.append(
            dict(
                kind="cascade",
                configs=",".join(names),
                threshold=float(t),
                **m,
                db_size=database.ntotal,
                query_gflops=float(cum[level].mean()),
                ms_per_query=1e3 * casc_t[ti] / n,
                **{f"share_{nm}": float((level == jj).mean()) for jj, nm in enumerate(names)},
            )
        )
    return rows


def _gvalue(dims: Sequence[int]):
    from .submodels import dims_name

    return int(dims[0]) if len(set(dims)) == 1 else dims_name(dims)


def cascade_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    shares = [c for c in rows[0] if c.startswith("share_")] if rows else []
    cols = ["kind", "configs", "threshold", "top1", "map10", "query_gflops", *shares, "ms_per_query"]
    heads = ["kind", "query g", "threshold", "1-NN top-1 %", "mAP@10 %", "GFLOPs/query"]
    heads += [f"at {c[6:]}" for c in shares] + ["ms/query"]
    fmt = dict(query_gflops=".4g", threshold=".4g", ms_per_query=".3g")
    return format_table(rows, cols, heads, floatfmt=fmt, markdown=markdown)


def plot_cascade(rows: Sequence[Dict[str, Any]], path, title: str = ""):
    """1-NN top-1 against mean query GFLOPs: each configuration alone (points) and the cascade's sweep (a line)."""
    from .report import _pyplot, _save

    if not rows:
        raise ValueError("rows: nothing to plot")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fixed = [r for r in rows if r["kind"] == "fixed"]
    casc = sorted((r for r in rows if r["kind"] == "cascade"), key=lambda r: r["query_gflops"])
    ax.plot([r["query_gflops"] for r in casc], [r["top1"] for r in casc], "o-", ms=4, label="cascade (threshold sweep)")
    ax.scatter([r["query_gflops"] for r in fixed], [r["top1"] for r in fixed], marker="s", c="k", zorder=3)
    for r in fixed:
        ax.annotate(f"g={r['configs']}", (r["query_gflops"], r["top1"]), textcoords="offset points", xytext=(5, -10))
    ax.set_xlabel("mean query GFLOPs (encoder)")
    ax.set_ylabel("1-NN top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def write_cascade_outputs(rows: Sequence[Dict[str, Any]], out_dir, meta: Dict[str, Any], title: str = "") -> Dict:
    """``cascade.csv``, ``cascade.json`` (meta + rows) and ``cascade.png`` in ``out_dir``."""
    from pathlib import Path

    out_dir = Path(out_dir)
    # JSON has no infinity: the always-escalate threshold is written "inf"
    plain = [dict(r, threshold="inf") if r.get("threshold") == math.inf else dict(r) for r in rows]
    return {
        "csv": write_csv(plain, out_dir / "cascade.csv"),
        "json": write_json(dict(meta, rows=plain), out_dir / "cascade.json"),
        "png": plot_cascade(rows, out_dir / "cascade.png", title=title),
    }
