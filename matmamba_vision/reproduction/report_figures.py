"""The reproduction report's two PNGs (matplotlib, Agg), from an indexed results.json: Fig. 3, top-1 against
non-embedding parameters and GFLOPs; Fig. 5, retrieval top-1 and mAP@10 against the query width. Means over
seeds with min-max error bars. The PNGs carry no date, so the same results give the same bytes on one machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..evaluation.report import _pyplot
from ..weights import atomic_write
from .report_data import Run, Stat, label

__all__ = ["plot_accuracy", "plot_retrieval"]

_COLOURS = ("C0", "C2", "C4", "C5", "C6", "C8", "C9")


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(
            path,
            lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None}),
        )
    finally:
        plt.close(fig)


def _errorbar(ax, points: Sequence[Tuple[float, Optional[Stat]]], **kw) -> None:
    """Means with min-max bars over the points that have a value."""
    pts = [(x, s) for x, s in points if s is not None and x is not None]
    if not pts:
        return
    ax.errorbar(
        [x for x, _ in pts],
        [s.mean for _, s in pts],
        yerr=[[s.mean - s.lo for _, s in pts], [s.hi - s.mean for _, s in pts]],
        capsize=3,
        **kw,
    )


def _seeds_title(run: Run) -> str:
    n = len(run.seeds)
    return f"mean and min-max over {n} seeds" if n > 1 else "1 seed"


def plot_accuracy(run: Run, chosen: str, front: List[Dict], path: Path) -> Path:
    """Fig. 3: test top-1 of the nested model at every width (trained levels marked), each variant, the
    own-init and same-init baselines, and the mix'n'match Pareto front; against parameters and GFLOPs."""
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, key, xlabel in (
        (axes[0], "params_non_embedding", "non-embedding parameters"),
        (axes[1], "gflops", "GFLOPs per image"),
    ):
        cost = {w: run.cost(w, key) for w in run.widths}
        if front:
            fx = [r["params" if key == "params_non_embedding" else "gflops"] for r in front]
            ax.plot(fx, [r["stat"].mean for r in front], "--", c="0.5", lw=1, label="nested mix'n'match Pareto front")
        for v, colour in zip(run.candidates, _COLOURS):
            models = run.nested(v)
            name = label(v) + (" (chosen)" if v and v == chosen else "")
            _errorbar(
                ax,
                [(cost[w], run.top1(models, w)) for w in run.widths],
                fmt="-",
                c=colour,
                lw=1.2,
                marker=".",
                label=f"{name}, every width",
            )
        _errorbar(
            ax,
            [(cost[g], run.top1(run.nested(), g)) for g in run.levels],
            fmt="o",
            c="C0",
            ms=7,
            zorder=3,
            label="nested, trained levels",
        )
        for init, marker, colour in (("own", "x", "C3"), ("same", "+", "C1")):
            _errorbar(
                ax,
                [(cost.get(g), run.top1(run.baselines(init, g), g)) for g in run.levels],
                fmt=marker,
                c=colour,
                ms=9,
                mew=2,
                zorder=4,
                label=f"{init}-init baselines",
            )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel + " (log scale; ticks at the trained levels)")
        ticks = sorted(c for c in (cost.get(g) for g in run.levels) if c is not None)  # one tick per level
        fmt = EngFormatter(sep="") if key == "params_non_embedding" else (lambda x: f"{x:.2g}")
        ax.set_xticks(ticks, [fmt(t) for t in ticks])
        ax.minorticks_off()
        ax.set_ylabel("test top-1 %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Fig. 3 (small scale): top-1 vs size, {_seeds_title(run)}")
    return _save(fig, path)


def plot_retrieval(run: Run, path: Path) -> Path:
    """Fig. 5: 1-NN top-1 and mAP@10 against the query width: each nested model's queries, the baselines'
    queries and the null against the nested database, and each baseline against its own database."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    gs = run.levels
    per_class = run.plan["holdout"].get("per_class") or {}
    for ax, metric, ylabel in ((axes[0], "top1", "1-NN top-1 %"), (axes[1], "map10", "mAP@10 %")):
        for v, colour in zip(run.candidates, _COLOURS):
            _errorbar(
                ax,
                [(g, run.retrieval("self", v, g, metric)) for g in gs],
                fmt="-o",
                c=colour,
                label=f"{label(v)} queries",
            )
        series = [
            ("cross", "own", "-x", "C3", "own-init baseline queries"),
            ("cross", "same", "-+", "C1", "same-init baseline queries"),
            ("null", "", "-s", "C7", "null: another nested seed's queries"),
            ("own", "own", ":x", "C3", "own-init, own database"),
            ("own", "same", ":+", "C1", "same-init, own database"),
        ]
        for kind, who, fmt, colour, name in series:
            _errorbar(
                ax,
                [(g, run.retrieval(kind, who, g, metric)) for g in gs],
                fmt=fmt,
                c=colour,
                ms=8,
                mew=1.5,
                label=name,
            )
        if metric == "top1" and per_class:
            chance = 100.0 / len(per_class)
            ax.axhline(chance, c="0.5", ls=":", lw=1, label=f"chance ({chance:.0f} %)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(gs, [str(g) for g in gs])
        ax.minorticks_off()
        ax.set_xlabel(f"query width g (database: width {run.D})")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper center", ncol=4, bbox_to_anchor=(0.5, 0.02))
    fig.suptitle(f"Fig. 5 (small scale): queries vs the full-width nested database, {_seeds_title(run)}")
    return _save(fig, path)
