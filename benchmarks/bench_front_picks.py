"""Issue 29: how often the GFLOPs front picks another configuration than the latency front for the same budget.

From a ``validate.py --latency`` result (accuracy, GFLOPs and measured median milliseconds of every
configuration), for K latency budgets log-spaced from the fastest configuration's median to the slowest one's:

(a) the latency pick: the most accurate configuration whose measured median fits the budget
    (``mv.select_submodel(results, max_ms=B)``);
(b) the GFLOPs pick, what a user without per-configuration timings would ship: the budget is turned into GFLOPs
    from the uniform-width configurations' timings (the few a user times by hand), then the most accurate
    configuration within those GFLOPs is taken (ties: fewer GFLOPs). ``--gflops-model linear`` (default) fits
    ms = a + b * GFLOPs over the uniform widths by least squares (the fixed per-call cost in a); ``ratio`` uses
    their lowest ms per GFLOP, through the origin. When no configuration is within the GFLOPs (the budget is
    below the fit's fixed cost), (b) is the configuration with the fewest GFLOPs.

Per budget: both picks, whether they differ, whether (b) meets the budget by its measured median, and the top-1
of (b) minus that of (a). Writes ``front_picks.json``, ``.csv`` and ``.png`` (accuracy against measured ms,
both picks marked) to ``--out`` and prints a table. Pure computation over the stored timings.

    python benchmarks/bench_front_picks.py --results RUN/validate.json [--budgets 10] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

import matmamba_vision as mv
from matmamba_vision.evaluation.report import format_table, pareto_front, write_csv, write_json
from matmamba_vision.selection import load_results

GFLOPS_MODELS = ("linear", "ratio")
CSV_COLUMNS = (
    "budget_ms",
    "gflops_budget",
    "latency_pick",
    "latency_pick_top1",
    "latency_pick_ms",
    "latency_pick_gflops",
    "gflops_pick",
    "gflops_pick_top1",
    "gflops_pick_ms",
    "gflops_pick_gflops",
    "differs",
    "gflops_pick_meets_budget",
    "top1_diff",
)


def _timed_rows(rows: Sequence[Dict[str, Any]], metric: str) -> List[Dict[str, Any]]:
    for i, r in enumerate(rows):
        for col in ("latency_ms", "gflops", metric):
            if r.get(col) is None:
                why = " (run validate.py with --latency)" if col == "latency_ms" else ""
                raise ValueError(f"results: row {i} ({r.get('name')}) has no {col}{why}")
    return list(rows)


def log_budgets(rows: Sequence[Dict[str, Any]], k: int) -> List[float]:
    """``k`` budgets log-spaced from the fastest measured median to the slowest one (both included)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"budgets must be an integer >= 1, got {k!r}")
    ms = [r["latency_ms"] for r in rows]
    if k == 1:
        return [max(ms)]
    budgets = [float(b) for b in np.geomspace(min(ms), max(ms), k)]
    budgets[0], budgets[-1] = min(ms), max(ms)  # exactly: the fastest configuration fits the first budget
    return budgets


def fit_ms_per_gflops(rows: Sequence[Dict[str, Any]], how: str = "linear") -> Tuple[float, float]:
    """(a, b) of ms = a + b * GFLOPs from the uniform-width rows (one granularity in every block).

    ``linear``: least squares over them; ``ratio``: a = 0 and b = their lowest ms per GFLOP. ValueError when
    the uniform widths do not give a positive slope (then GFLOPs do not predict time at all)."""
    if how not in GFLOPS_MODELS:
        raise ValueError(f"gflops_model must be one of {GFLOPS_MODELS}, got {how!r}")
    uniform = [r for r in rows if len(set(r["dims"])) == 1]
    g = np.array([r["gflops"] for r in uniform], dtype=float)
    ms = np.array([r["latency_ms"] for r in uniform], dtype=float)
    if how == "ratio":
        if not len(g) or (g <= 0).any():
            raise ValueError("results: the ratio model needs uniform-width rows with positive GFLOPs")
        return 0.0, float((ms / g).min())
    if len(set(g.tolist())) < 2:
        raise ValueError("results: the linear model needs uniform-width rows at two or more GFLOPs")
    slope, intercept = np.polyfit(g, ms, 1)
    if not slope > 0:
        raise ValueError(
            f"results: over the uniform widths measured time does not grow with GFLOPs (slope {slope:.4g} ms per "
            "GFLOP); a GFLOPs budget cannot stand for a latency budget here"
        )
    return float(intercept), float(slope)


def pick_by_gflops(rows: Sequence[Dict[str, Any]], max_gflops: float, metric: str = "top1") -> Dict[str, Any]:
    """The most accurate row within ``max_gflops`` (ties: fewer GFLOPs); the row with the fewest GFLOPs when
    none is within it."""
    fits = [r for r in rows if r["gflops"] <= max_gflops]
    if not fits:
        return min(rows, key=lambda r: (r["gflops"], -r[metric]))
    return max(fits, key=lambda r: (r[metric], -r["gflops"]))


def compare_picks(
    results: Any, budgets: int = 10, gflops_model: str = "linear", metric: str = "top1"
) -> Dict[str, Any]:
    """Both picks for ``budgets`` log-spaced latency budgets over ``results`` (validate.py's JSON/CSV or its
    loaded content): ``{"picks": [...], "summary": {...}, "fit": {...}, "latency": meta}``."""
    rows, meta = load_results(results)
    rows = _timed_rows(rows, metric)
    a, b = fit_ms_per_gflops(rows, gflops_model)
    picks = []
    for budget in log_budgets(rows, budgets):
        lat = mv.select_submodel(dict(meta, rows=rows), max_ms=budget, metric=metric).row
        g_budget = (budget - a) / b
        flp = pick_by_gflops(rows, g_budget, metric)
        picks.append(
            dict(
                budget_ms=budget,
                gflops_budget=g_budget,
                latency_pick=lat["name"],
                latency_pick_top1=lat[metric],
                latency_pick_ms=lat["latency_ms"],
                latency_pick_gflops=lat["gflops"],
                gflops_pick=flp["name"],
                gflops_pick_top1=flp[metric],
                gflops_pick_ms=flp["latency_ms"],
                gflops_pick_gflops=flp["gflops"],
                gflops_pick_fallback=flp["gflops"] > g_budget,
                differs=flp["name"] != lat["name"],
                gflops_pick_meets_budget=flp["latency_ms"] <= budget,
                top1_diff=flp[metric] - lat[metric],
            )
        )
    return dict(
        picks=picks,
        summary=summarize(picks),
        fit=dict(model=gflops_model, intercept_ms=a, ms_per_gflop=b),
        latency=meta.get("latency"),
        model=meta.get("model"),
        metric=metric,
    )


def summarize(picks: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """How many budgets the picks differ at; how many GFLOPs picks miss the budget; the top-1 they give up
    where they meet it (>= 0: the latency pick is the best within the budget) and gain where they miss it."""
    differ = [p for p in picks if p["differs"]]
    met = [p for p in differ if p["gflops_pick_meets_budget"]]
    missed = [p for p in differ if not p["gflops_pick_meets_budget"]]
    lost = [-p["top1_diff"] for p in met]
    return dict(
        budgets=len(picks),
        differ=len(differ),
        gflops_pick_misses_budget=len(missed),
        differ_and_meets=len(met),
        top1_lost_mean=float(np.mean(lost)) if lost else 0.0,
        top1_lost_max=max(lost, default=0.0),
        top1_diff_mean_all=float(np.mean([p["top1_diff"] for p in picks])) if picks else 0.0,
        worst_miss_ratio=max((p["gflops_pick_ms"] / p["budget_ms"] for p in missed), default=None),
    )


def picks_table(report: Dict[str, Any], markdown: bool = False) -> str:
    """The per-budget table and the summary line."""
    rows = [
        dict(
            p,
            meets="yes" if p["gflops_pick_meets_budget"] else "NO",
            gflops_pick=p["gflops_pick"] + (" (fewest)" if p["gflops_pick_fallback"] else ""),
        )
        for p in report["picks"]
    ]
    cols = ["budget_ms", "latency_pick", "latency_pick_top1", "gflops_pick", "gflops_pick_ms", "meets", "top1_diff"]
    heads = ["budget ms", "latency pick", "top-1 %", "GFLOPs pick", "its ms", "meets", "top-1 diff"]
    fmt = {"budget_ms": ".4g", "latency_pick_top1": ".2f", "gflops_pick_ms": ".4g", "top1_diff": "+.2f"}
    s = report["summary"]
    lost = f"{s['top1_lost_mean']:.2f} mean, {s['top1_lost_max']:.2f} max top-1 points"
    miss = "" if s["worst_miss_ratio"] is None else f", worst miss {s['worst_miss_ratio']:.2f}x the budget"
    summary = (
        f"GFLOPs pick differs at {s['differ']} of {s['budgets']} budgets: misses the budget at "
        f"{s['gflops_pick_misses_budget']}{miss}; meets it at {s['differ_and_meets']}, losing {lost}"
    )
    if any(p["gflops_pick_fallback"] for p in report["picks"]):
        summary = "(fewest): no configuration is within the GFLOPs budget, the cheapest is taken\n" + summary
    return format_table(rows, cols, heads, fmt, markdown) + ("\n\n" if markdown else "\n") + summary


def plot_picks(report: Dict[str, Any], rows: Sequence[Dict[str, Any]], path: Path, metric: str = "top1") -> Path:
    """Accuracy against measured ms: every configuration, the latency front, and per budget both picks."""
    from matmamba_vision.evaluation.report import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    xs, ys = [r["latency_ms"] for r in rows], [r[metric] for r in rows]
    ax.scatter(xs, ys, s=14, c="0.6", label="configuration")
    front = pareto_front(xs, ys)
    ax.plot([xs[i] for i in front], [ys[i] for i in front], "-", c="tab:green", lw=1.2, label="latency front")
    for p in report["picks"]:
        ax.axvline(p["budget_ms"], c="0.85", lw=0.8, zorder=0)
        if p["differs"]:  # which two picks belong to one budget
            a, b = (p["latency_pick_ms"], p["gflops_pick_ms"]), (p["latency_pick_top1"], p["gflops_pick_top1"])
            ax.plot(a, b, ":", c="tab:red", lw=0.8, alpha=0.6)
        ax.scatter(p["latency_pick_ms"], p["latency_pick_top1"], s=90, facecolors="none", edgecolors="tab:green")
        ax.scatter(p["gflops_pick_ms"], p["gflops_pick_top1"], s=40, marker="x", c="tab:red")
    ax.scatter([], [], s=90, facecolors="none", edgecolors="tab:green", label="latency pick (a)")
    ax.scatter([], [], s=40, marker="x", c="tab:red", label="GFLOPs pick (b)")
    ax.plot([], [], c="0.85", label="budgets")
    if max(xs) / min(xs) > 10:
        ax.set_xscale("log")
    lat = report.get("latency") or {}
    where = f"{lat.get('runtime', '?')}, batch {lat.get('batch', '?')}, {lat.get('machine', '?')}" if lat else ""
    ax.set_xlabel(f"measured median ms per batch ({where})" if where else "measured median ms per batch")
    ax.set_ylabel(f"{metric.replace('top', 'top-')} accuracy (%)")
    s = report["summary"]
    ax.set_title(
        f"{report.get('model') or ''}: GFLOPs pick differs at {s['differ']}/{s['budgets']}, "
        f"misses at {s['gflops_pick_misses_budget']}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def main(argv=None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", required=True, help="validate.py --latency's validate.json (or .csv)")
    ap.add_argument("--budgets", type=int, default=10, help="how many latency budgets (default: 10)")
    ap.add_argument("--gflops-model", default="linear", choices=GFLOPS_MODELS, help="default: linear")
    ap.add_argument("--metric", default="top1")
    ap.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    ap.add_argument("--out", default="", help="folder for front_picks.{json,csv,png} (default: beside --results)")
    args = ap.parse_args(argv)
    report = compare_picks(args.results, args.budgets, args.gflops_model, args.metric)
    report["results"] = str(args.results)
    out = Path(args.out) if args.out else Path(args.results).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    rows, _ = load_results(args.results)
    fit = report["fit"]
    lat = report.get("latency") or {}
    print(
        f"# {args.results}: {len(rows)} configurations, {lat.get('runtime')} batch {lat.get('batch')} on "
        f"{lat.get('machine')}; GFLOPs model {fit['model']}: ms = {fit['intercept_ms']:.4g} + "
        f"{fit['ms_per_gflop']:.4g} * GFLOPs"
    )
    print(picks_table(report, args.markdown))
    write_json(report, out / "front_picks.json")
    write_csv(report["picks"], out / "front_picks.csv", CSV_COLUMNS)
    plot_picks(report, rows, out / "front_picks.png", args.metric)
    print(f"wrote {out / 'front_picks.json'}, .csv, .png")
    return report


if __name__ == "__main__":
    main()
