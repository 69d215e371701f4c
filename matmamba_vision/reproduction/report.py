"""REPRODUCTION.md and its figures from the evaluation files of a ``make reproduce`` run.

Fig. 3: top-1 against non-embedding parameters and against GFLOPs (nested trained widths, every valid width
between them, the mix'n'match Pareto front, the baselines). Fig. 5: 1-NN top-1 and mAP@10 of queries embedded
by each nested width or by each baseline, against the full model's database.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ..evaluation.report import format_table
from ..weights import atomic_write
from .stages import VARIANTS

__all__ = ["write_report", "mean_spread"]


def mean_spread(values: Sequence[float]) -> str:
    """'mean (min-max, n seeds)' over seeds, or the single value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ({min(values):.2f}-{max(values):.2f}, {len(values)} seeds)"


def _rows(path: Path) -> List[Dict]:
    return json.loads(Path(path).read_text())["rows"]


def _uniform(rows: Sequence[Dict]) -> Dict[int, Dict]:
    return {int(r["dims"][0]): r for r in rows if r["kind"] == "uniform"}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _fig3(path: Path, nested_rows, widths_by_variant, base, levels, title: str) -> Path:
    plt = _pyplot()
    from matplotlib.ticker import EngFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    nested_u = _uniform(nested_rows)
    for ax, cost, label in (
        (axes[0], "params_non_embedding", "non-embedding parameters"),
        (axes[1], "gflops", "GFLOPs per image"),
    ):
        mix = [r for r in nested_rows if r["kind"] != "uniform"]
        if mix:
            ax.scatter([r[cost] for r in mix], [r["top1"] for r in mix], s=10, c="0.7", label="mix'n'match")
        front = sorted(
            (r for r in nested_rows if r[f"pareto_{'params' if cost.startswith('params') else 'gflops'}"]),
            key=lambda r: r[cost],
        )
        if front:
            ax.plot(
                [r[cost] for r in front],
                [r["top1"] for r in front],
                "--",
                c="0.4",
                lw=1,
                label="mix'n'match Pareto front",
            )
        for (variant, rows), colour in zip(widths_by_variant.items(), ("C0", "C2", "C4", "C5")):
            u = _uniform(rows)
            gs = sorted(u)
            ax.plot(
                [u[g][cost] for g in gs],
                [u[g]["top1"] for g in gs],
                "-",
                c=colour,
                lw=1.2,
                marker=".",
                label=f"{variant}: every width D/8..D",
            )
        ax.scatter(
            [nested_u[g][cost] for g in levels],
            [nested_u[g]["top1"] for g in levels],
            s=60,
            c="C0",
            zorder=3,
            label="nested, trained widths",
        )
        gs = [g for g in levels if g in base]
        means = [statistics.mean(base[g]["top1"]) for g in gs]
        lo = [m - min(base[g]["top1"]) for g, m in zip(gs, means)]
        hi = [max(base[g]["top1"]) - m for g, m in zip(gs, means)]
        ax.errorbar(
            [nested_u[g][cost] for g in gs],
            means,
            yerr=[lo, hi],
            fmt="x",
            c="C3",
            ms=9,
            mew=2,
            capsize=3,
            zorder=4,
            label="baselines (trained alone)",
        )
        ax.set_xlabel(label)
        if cost == "params_non_embedding":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 100k, not 100000 (the labels ran together)
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(title)
    return _save(fig, path)


def _nested_db(row) -> bool:
    """A retrieval row against the nested model's database (baselines also have rows against their own)."""
    return row.get("db_model", "nested") == "nested"


def _fig5(path: Path, retrieval_by_variant, levels, chance: float, title: str) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    xs = list(range(len(levels)))
    for ax, key, label in ((axes[0], "top1", "1-NN top-1 %"), (axes[1], "map10", "mAP@10 %")):
        for (variant, rows), colour in zip(retrieval_by_variant.items(), ("C0", "C2", "C4", "C5")):
            q = {int(r["query_granularity"]): r for r in rows if r["query_kind"] == "granularity"}
            ax.plot(xs, [_pct(q[g][key]) for g in levels], "-o", c=colour, label=f"{variant} queries")
        rows = retrieval_by_variant.get("nested", [])
        b = {int(r["query_granularity"]): r for r in rows if r["query_kind"] == "baseline" and _nested_db(r)}
        if b:
            ax.plot(
                xs,
                [_pct(b[g][key]) if g in b else float("nan") for g in levels],
                "-x",
                c="C3",
                ms=9,
                mew=2,
                label="baseline queries (trained alone)",
            )
        if key == "top1":
            ax.axhline(chance, c="0.5", ls=":", lw=1, label=f"chance ({chance:.0f} %)")
        ax.set_xticks(xs, [f"g={g}" for g in levels])
        ax.set_xlabel("query model width (database: full width)")
        ax.set_ylabel(label)
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.suptitle(title)
    return _save(fig, path)


def _pct(v) -> float:
    """A retrieval.json metric (already a percentage) as a float."""
    return float(v)


def write_report(
    plan,
    seeds: Sequence[int],
    close: Sequence[int],
    variants: bool,
    stage_times: Dict,
    command: str = "",
    threshold: float = 0.5,
) -> Path:
    """Write REPRODUCTION.md, fig3_accuracy.png and fig5_retrieval.png into ``plan.run_dir``."""
    out = plan.run_dir
    s0, levels = seeds[0], plan.levels
    D = max(levels)
    nested_rows = _rows(plan.eval_dir(plan.nested(s0)) / "validate.json")
    nested_u = _uniform(nested_rows)
    nested_seeds = {g: [nested_u[g]["top1"]] for g in levels}
    base: Dict[int, Dict[str, List[float]]] = {}
    for g in levels:
        row = _uniform(_rows(plan.eval_dir(plan.baseline(g, s0)) / "validate.json"))[g]
        base[g] = {"top1": [row["top1"]], "params": row["params_non_embedding"]}
    for seed in seeds[1:]:
        u = _uniform(_rows(plan.eval_dir(plan.nested(seed)) / "validate.json"))
        for g in levels:
            nested_seeds[g].append(u[g]["top1"])
        for g in close:
            base[g]["top1"].append(_uniform(_rows(plan.eval_dir(plan.baseline(g, seed)) / "validate.json"))[g]["top1"])
    widths_by_variant = {"nested": nested_rows}
    retrieval_by_variant = {"nested": _rows(plan.eval_dir(plan.nested(s0)) / "retrieval" / "retrieval.json")}
    if variants:
        for v in VARIANTS:
            name = plan.nested(s0, v)
            widths_by_variant[v] = _rows(plan.eval_dir(name) / "validate.json")
            retrieval_by_variant[v] = _rows(plan.eval_dir(name) / "retrieval" / "retrieval.json")
    meta = json.loads((plan.eval_dir(plan.nested(s0)) / "validate.json").read_text())
    num_classes = int(meta.get("model_args", {}).get("num_classes") or 10)
    chance = 100.0 / num_classes

    _fig3(
        out / "fig3_accuracy.png",
        nested_rows,
        widths_by_variant,
        base,
        levels,
        f"Fig. 3 (small scale): top-1 vs size, seed {s0}",
    )
    _fig5(
        out / "fig5_retrieval.png",
        retrieval_by_variant,
        levels,
        chance,
        f"Fig. 5 (small scale): queries vs the full model's database, seed {s0}",
    )

    # ---- tables
    t3 = []
    for g in levels:
        n, b = nested_seeds[g], base[g]["top1"]
        t3.append(
            {
                "g": f"D/{D // g}" if g != D else "D",
                "width": g,
                "params": nested_u[g]["params_non_embedding"],
                "gflops": nested_u[g]["gflops"],
                "nested": mean_spread(n),
                "baseline": mean_spread(b),
                "diff": statistics.mean(n[: len(b)]) - statistics.mean(b) if len(b) > 1 else n[0] - b[0],
            }
        )
    table3 = format_table(
        t3,
        ["g", "width", "params", "gflops", "nested", "baseline", "diff"],
        ["level", "g", "params (non-emb.)", "GFLOPs", "nested top-1 %", "baseline top-1 %", "nested - baseline"],
        {"gflops": ".4f", "diff": "+.2f"},
        markdown=True,
    )

    trained = sorted(levels)
    grid_rows, dips = [], {}
    for g in plan.widths:
        below = max([t for t in trained if t <= g])
        row = {"g": g, "trained": "yes" if g in levels else ""}
        for v, rows in widths_by_variant.items():
            u = _uniform(rows)
            row[v] = u[g]["top1"]
            if g not in levels:
                dips.setdefault(v, []).append(u[g]["top1"] - u[below]["top1"])
        row["below"] = below
        grid_rows.append(row)
    vcols = list(widths_by_variant)
    table_grid = format_table(
        grid_rows,
        ["g", "trained", *vcols, "below"],
        ["g", "trained", *[f"{v} top-1 %" for v in vcols], "next-smaller trained g"],
        markdown=True,
    )

    ret_rows = []
    for g in levels:
        r = {"g": g}
        for v, rows in retrieval_by_variant.items():
            q = {int(x["query_granularity"]): x for x in rows if x["query_kind"] == "granularity"}
            r[f"{v}_top1"], r[f"{v}_map"] = _pct(q[g]["top1"]), _pct(q[g]["map10"])
        b = {
            int(x["query_granularity"]): x
            for x in retrieval_by_variant["nested"]
            if x["query_kind"] == "baseline" and _nested_db(x)
        }
        if g in b:
            r["base_top1"], r["base_map"] = _pct(b[g]["top1"]), _pct(b[g]["map10"])
        own = {int(x["query_granularity"]): x for x in retrieval_by_variant["nested"] if not _nested_db(x)}
        if g in own:
            r["own_top1"] = _pct(own[g]["top1"])
        ret_rows.append(r)
    rcols, rheads = [], []
    for v in retrieval_by_variant:
        rcols += [f"{v}_top1", f"{v}_map"]
        rheads += [f"{v} queries 1-NN top-1 %", f"{v} mAP@10 %"]
    table5 = format_table(
        ret_rows,
        ["g", *rcols, "base_top1", "base_map", "own_top1"],
        ["query width g", *rheads, "baseline queries 1-NN top-1 %", "baseline mAP@10 %", "baseline, own database %"],
        markdown=True,
    )

    front = [r for r in sorted(nested_rows, key=lambda r: r["params_non_embedding"]) if r.get("pareto_params")]
    table_front = format_table(
        front,
        ["name", "top1", "params_non_embedding", "gflops"],
        ["configuration", "top-1 %", "params (non-emb.)", "GFLOPs"],
        {"gflops": ".4f"},
        markdown=True,
    )

    # ---- targets
    lines = []
    for g in levels[1:]:
        d = t3[levels.index(g)]["diff"]
        best_v = max(
            (
                (v, _uniform(rows)[g]["top1"] - statistics.mean(base[g]["top1"]))
                for v, rows in widths_by_variant.items()
                if v != "nested"
            ),
            key=lambda x: x[1],
            default=None,
        )
        ok = abs(d) <= 0.3 or d > 0 or (best_v is not None and best_v[1] >= 0)
        extra = f"; best variant {best_v[0]} {best_v[1]:+.2f}" if best_v else ""
        lines.append(
            f"- nested g={g} vs its baseline: {d:+.2f} points{extra} -> **{'met' if ok else 'missed'}** "
            "(target: within 0.3 points, or above with a variant)"
        )
    q = {int(x["query_granularity"]): x for x in retrieval_by_variant["nested"] if x["query_kind"] == "granularity"}
    b = {
        int(x["query_granularity"]): x
        for x in retrieval_by_variant["nested"]
        if x["query_kind"] == "baseline" and _nested_db(x)
    }
    full = _pct(q[D]["top1"])
    for g in levels[1:3]:
        loss = full - _pct(q[g]["top1"])
        bt = f"; its baseline's queries {_pct(b[g]['top1']):.2f} % (chance {chance:.0f} %)" if g in b else ""
        lines.append(
            f"- retrieval, g={g} queries vs the full database: {_pct(q[g]['top1']):.2f} % vs {full:.2f} % "
            f"at full width (loss {loss:.2f} points){bt} -> **{'met' if loss <= 2 else 'missed'}** "
            "(target: lose at most 2 points; baselines near chance)"
        )
    for v, ds in dips.items():
        worst = min(ds) if ds else 0.0
        lines.append(
            f"- untrained widths, {v}: worst gap to the next-smaller trained width {worst:+.2f} points "
            f"-> **{'never below' if worst >= 0 else 'below'}** (target with the best variant: never below)"
        )

    seconds = sum(v["seconds"] for v in stage_times.values())
    stage_table = format_table(
        [{"stage": k, "s": v["seconds"], "at": v["finished"]} for k, v in stage_times.items()],
        ["stage", "s", "at"],
        ["stage", "seconds", "finished"],
        {"s": ".0f"},
        markdown=True,
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    text = f"""# Reproduction of the MatMamba paper's vision claims at small scale

Written by `reproduce.py` on {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}.
Command: `{command or "python reproduce.py"}`. Seeds: {list(seeds)} (the figures and single-seed numbers: seed {s0}).
Model: `{plan.model_name}` {json.dumps(plan.model_kwargs)}, trained levels {levels}; every model is trained by
train.py with the same recipe (its embedded defaults{", plus " + " ".join(plan.train_args) if plan.train_args else ""})
and the same number of optimiser steps, and evaluated at its final weights. A baseline of width g is a standalone
model whose mixers are g wide (`mixer_dims`), the nested submodel's exact size, trained only at g.
Machine: {_cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; load average at the end: {load}.
Stage time in all: {seconds / 60:.1f} min (table at the end).

## Targets

{chr(10).join(lines)}

## Fig. 3: nested submodels vs baselines

![Fig. 3](fig3_accuracy.png)

Top-1 % on the evaluation split. Where nested and baseline differ by less than {threshold} points at seed {s0}
(g = {list(close) or "none"}), both were trained with every seed: mean (min-max) over the seeds; the difference is
of the means.

{table3}

### Every valid width from D/8 to D (one head-group apart)

{table_grid}

### Mix'n'match Pareto front (top-1 vs non-embedding parameters), nested model, seed {s0}

{table_front}

## Fig. 5: adaptive retrieval (database: the full model, queries: each width)

![Fig. 5](fig5_retrieval.png)

{table5}

The baseline at D has the nested model's shape and seed, so it starts from the same weights and sees the same
batches: its embedding space stays close to the nested model's. The narrower baselines start from other weights.

## Stages

{stage_table}
"""
    path = out / "REPRODUCTION.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
