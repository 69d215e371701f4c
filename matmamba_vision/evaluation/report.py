"""Result files, console tables and figures: CSV and JSON rows (written atomically), fixed-width text
tables, Pareto fronts, and plots (matplotlib, Agg backend) of accuracy against cost and of retrieval accuracy."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..weights import atomic_write

__all__ = [
    "write_csv",
    "write_json",
    "format_table",
    "write_results_file",
    "pareto_front",
    "plot_tradeoff",
    "plot_retrieval",
]


def _cell(v: Any) -> Any:
    """Lists space-separated; numbers as they are (full precision: only the printed tables round)."""
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return v


def write_csv(rows: Sequence[Dict[str, Any]], path: os.PathLike, columns: Optional[Sequence[str]] = None) -> Path:
    """One row per dict; lists (per-layer dims) become space-separated; columns default to the union of keys."""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(r.get(k, "")) for k in columns})
    text = buf.getvalue()
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(obj: Any, path: os.PathLike) -> Path:
    """Pretty JSON, written atomically."""
    text = json.dumps(obj, indent=2, default=str) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_results_file(
    path: os.PathLike, rows: Sequence[Dict[str, Any]], meta: Dict[str, Any], columns: Sequence[str]
) -> Path:
    """timm's ``--results-file``: JSON (``meta`` plus ``rows``) when the name ends in ``.json``, else CSV."""
    if str(path).lower().endswith(".json"):
        return write_json(dict(meta, rows=list(rows)), path)
    return write_csv(rows, path, columns)


def format_table(
    rows: Sequence[Dict[str, Any]],
    columns: Sequence[str],
    headers: Optional[Sequence[str]] = None,
    floatfmt: Optional[Dict[str, str]] = None,
    markdown: bool = False,
) -> str:
    """A fixed-width (or Markdown) table of ``columns``; ``floatfmt`` maps a column to a format spec."""
    headers = list(headers or columns)
    floatfmt = floatfmt or {}

    def fmt(col: str, v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else ""
        if isinstance(v, float):
            return format(v, floatfmt.get(col, ".2f"))
        if isinstance(v, int):
            return format(v, floatfmt.get(col, ",d"))
        if isinstance(v, (list, tuple)):
            return " ".join(str(x) for x in v)
        return "" if v is None else str(v)

    cells = [[fmt(c, r.get(c)) for c in columns] for r in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    if markdown:
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |" for row in cells]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> List[int]:
    """Indices of the non-dominated points, by increasing cost.

    A point is dominated when another costs no more and scores at least as much, and is strictly better in
    one of the two. Of exact duplicates the first is kept.
    """
    if len(costs) != len(scores):
        raise ValueError(f"costs and scores differ in length ({len(costs)} vs {len(scores)})")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i], i))
    front, best = [], float("-inf")
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: os.PathLike) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def plot_tradeoff(
    rows: Sequence[Dict], path: os.PathLike, metric: str = "top1", title: str = "", latency_label: str = ""
) -> Path:
    """Accuracy against non-embedding parameters and against GFLOPs (and, with ``latency_label``, against
    measured ``latency_ms``): every configuration as a dot, the trained granularities as labelled stars, the
    Pareto front as a line. Rows need params_non_embedding, gflops, ``metric``, name and trained."""
    if not rows:
        raise ValueError("rows: nothing to plot")
    plt = _pyplot()
    panels = [("params_non_embedding", "parameters, non-embedding (M)", 1e-6), ("gflops", "GFLOPs per image", 1.0)]
    if latency_label:
        panels.append(("latency_ms", latency_label, 1.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5))
    ys = [r[metric] for r in rows]
    for ax, (key, label, scale) in zip(axes, panels):
        xs = [r[key] * scale for r in rows]
        mix = [i for i, r in enumerate(rows) if not r.get("trained")]
        trained = [i for i, r in enumerate(rows) if r.get("trained")]
        if mix:
            ax.scatter(
                [xs[i] for i in mix], [ys[i] for i in mix], s=14, c="tab:blue", alpha=0.6, label="mix'n'match / other"
            )
        if trained:
            ax.scatter(
                [xs[i] for i in trained],
                [ys[i] for i in trained],
                s=110,
                marker="*",
                c="tab:red",
                zorder=3,
                label="trained granularities",
            )
            for i in trained:
                ax.annotate(rows[i]["name"], (xs[i], ys[i]), textcoords="offset points", xytext=(5, -12), fontsize=8)
        front = pareto_front(xs, ys)
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", c="tab:green", lw=1.5, label="Pareto front")
        ax.set_xlabel(label)
        ax.set_ylabel(f"{metric.replace('top', 'top-')} accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_retrieval(rows: Sequence[Dict], path: os.PathLike, title: str = "") -> Path:
    """Left: 1-NN top-1 and mAP@10 per query granularity (one line per database granularity; baselines as
    crosses). Right, when there is more than one database granularity: a heatmap of 1-NN top-1."""
    if not rows:
        raise ValueError("rows: nothing to plot")
    plt = _pyplot()
    nested = [r for r in rows if r.get("query_kind", "granularity") == "granularity"]
    baselines = [r for r in rows if r.get("query_kind") == "baseline"]
    db_gs = sorted({r["db_granularity"] for r in nested}, reverse=True)
    q_gs = sorted({r["query_granularity"] for r in nested}, reverse=True)
    matrix = len(db_gs) > 1
    fig, axes = plt.subplots(1, 2 if matrix else 1, figsize=(12 if matrix else 6.5, 4.5), squeeze=False)
    ax = axes[0, 0]
    for dg in db_gs:
        sel = sorted((r for r in nested if r["db_granularity"] == dg), key=lambda r: r["query_granularity"])
        x = [r["query_granularity"] for r in sel]
        ax.plot(x, [r["top1"] for r in sel], "o-", label=f"1-NN top-1, database g={dg}")
        ax.plot(x, [r["map10"] for r in sel], "s--", alpha=0.7, label=f"mAP@10, database g={dg}")
    for r in baselines:
        own = r.get("db_model") not in (None, "nested")  # against its own database
        ax.scatter([r["query_granularity"]], [r["top1"]], marker="+" if own else "x", s=80, c="k", zorder=3)
        ax.annotate(
            f"baseline {r['query']}{' (own database)' if own else ''}",
            (r["query_granularity"], r["top1"]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
        )
    if q_gs:
        ax.set_xscale("log", base=2)
        ax.set_xticks(q_gs)
        ax.set_xticklabels([str(g) for g in q_gs])
    ax.set_xlabel("query granularity g")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    if matrix:
        ax = axes[0, 1]
        grid = [[float("nan")] * len(db_gs) for _ in q_gs]
        for r in nested:
            grid[q_gs.index(r["query_granularity"])][db_gs.index(r["db_granularity"])] = r["top1"]
        im = ax.imshow(grid, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(db_gs)), [str(g) for g in db_gs])
        ax.set_yticks(range(len(q_gs)), [str(g) for g in q_gs])
        ax.set_xlabel("database granularity")
        ax.set_ylabel("query granularity")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if v == v:
                    ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="w", fontsize=8)
        fig.colorbar(im, ax=ax, label="1-NN top-1 (%)")
    if title:
        fig.suptitle(title)
    return _save(fig, path)
