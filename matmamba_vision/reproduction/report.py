"""REPRODUCTION.md and its two figures from a ``make reproduce`` run's ``results.json`` alone.

Every number is a mean over seeds with its range; every target is judged strictly and ends in **met** or
**missed** (with why). Nothing is read from the clock or from other files, so the same results give the same
Markdown, byte for byte. Regenerate with ``python reproduce.py --report-from RESULTS_JSON --output DIR``.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..evaluation.report import format_table, pareto_front
from ..weights import atomic_write
from .report_data import FORMAT, VERSION, Run, Stat, check_results, label, level_name, load_results, stat_of
from .report_figures import plot_accuracy, plot_retrieval

__all__ = [
    "FORMAT",
    "VERSION",
    "Stat",
    "load_results",
    "check_results",
    "accuracy_verdict",
    "retrieval_loss",
    "choose_variant",
    "untrained_gaps",
    "render_markdown",
    "write_report",
]

WITHIN = 0.3  # points: nested within this of its own-init baseline meets the accuracy target
MAX_RETRIEVAL_LOSS = 2.0  # points a narrower level's queries may lose against full-width queries
BASELINE_GAP = 50.0  # points an own-init baseline's queries must fall below the nested queries
_EPS = 1e-9  # float noise in differences of means (89.77 - 89.47 is not exactly 0.3)


def _cell(s: Optional[Stat]) -> str:
    return "n/a" if s is None else str(s)


def _mean(s: Optional[Stat]) -> Optional[float]:
    return None if s is None else s.mean


# ---------------------------------------------------------------------------------------------- verdicts


def _verdict(ok: bool, why: str = "") -> str:
    return "**met**" if ok else f"**missed**: {why}"


def accuracy_verdict(nested: Stat, baseline: Stat) -> Tuple[bool, str]:
    """Target 1: met iff |d| <= 0.3 or d > the seed spread (the larger max - min of the two); d = mean nested -
    mean baseline. With one seed of either there is no spread, so only |d| <= 0.3 can meet it."""
    d = nested.mean - baseline.mean
    measured = nested.n > 1 and baseline.n > 1
    spread = max(nested.spread, baseline.spread)
    sp = f"seed spread {spread:.3f}" if measured else "seed spread unknown (1 seed)"
    if abs(d) <= WITHIN + _EPS:
        return True, f"d = {d:+.3f}, |d| <= {WITHIN} -> {_verdict(True)}"
    if d > 0 and measured and d > spread + _EPS:
        return True, f"d = {d:+.3f} > {sp} -> {_verdict(True)}"
    if d < 0:
        why = f"nested is {-d:.3f} points behind, more than {WITHIN}"
    elif measured:
        why = f"|d| > {WITHIN} and nested is ahead by no more than the seed spread"
    else:
        why = f"|d| > {WITHIN}, and with 1 seed there is no spread to be ahead of"
    return False, f"d = {d:+.3f}, {sp} -> {_verdict(False, why)}"


def retrieval_loss(run: Run, variant: str, g: int) -> Optional[Stat]:
    """Per seed: top-1 of full-width queries minus top-1 of g queries, both against the same full-width db."""
    full = run.retrieval_by_seed("self", variant, run.D)
    part = run.retrieval_by_seed("self", variant, g)
    return stat_of([full[s] - part[s] for s in sorted(full) if s in part])


def choose_variant(run: Run) -> Tuple[str, Dict[str, Optional[Stat]]]:
    """Target 5: the candidate ("" = plain nested, then plan.variants) with the highest mean over seeds of the
    mean over trained levels of ``minival`` top-1 (the first of equals); and each candidate's figure."""
    scores: Dict[str, Optional[Stat]] = {}
    for v in run.candidates:
        per_seed = []
        for m in run.nested(v):
            mv = m.get("minival", {})
            if all(str(g) in mv for g in run.levels):
                per_seed.append(math.fsum(mv[str(g)] for g in run.levels) / len(run.levels))
        scores[v] = stat_of(per_seed)
    scored = [v for v in run.candidates if scores[v] is not None]
    chosen = max(scored, key=lambda v: scores[v].mean) if scored else ""
    return chosen, scores


def untrained_gaps(run: Run, variant: str) -> List[Tuple[int, int, Optional[float]]]:
    """Target 4: (width, next-smaller trained level, mean top-1 gap) for every untrained width above the
    smallest level (None where a mean is missing)."""
    models = run.nested(variant)
    out = []
    for w in run.widths:
        if w in run.levels or w < run.trained[0]:
            continue
        below = max(t for t in run.trained if t < w)
        a, b = _mean(run.top1(models, w)), _mean(run.top1(models, below))
        out.append((w, below, None if a is None or b is None else a - b))
    return out


# ---------------------------------------------------------------------------------------------- Markdown


def _join(args: Sequence[str]) -> str:
    return f"`{shlex.join(args)}`" if args else "none"


def _header(run: Run) -> str:
    r, plan = run.results, run.plan
    hold, machine = plan["holdout"], r["machine"]
    per_class = ", ".join(
        f"{k}: {v:,}" for k, v in sorted(hold.get("per_class", {}).items(), key=lambda kv: (len(kv[0]), kv[0]))
    )
    levels = ", ".join(str(g) for g in run.levels)
    names = ", ".join(level_name(g, run.D) for g in run.levels)
    total = math.fsum(float(s["seconds"]) for s in r["stages"])
    config = f"`-c {plan['config']}`" if plan.get("config") else "train.py's embedded defaults"
    recipe_choice = plan.get("recipe_choice")
    commands = "\n".join(r["commands"]) or "(none recorded)"
    lines = [
        "# Reproduction of the MatMamba paper's vision claims at small scale",
        "",
        f"Generated from `results.json` (written {r['written']}) alone; `python reproduce.py "
        "--report-from results.json --output DIR` regenerates it. Every number is a mean over seeds "
        "with (min-max, n seeds).",
        "",
        f"- Model: `{plan['model']}` {json.dumps(plan.get('model_kwargs', {}), sort_keys=True)}, depth "
        f"{plan.get('depth', 'n/a')}, D = {plan.get('embed_dim', run.D)}; sequence length {plan['tokens']} tokens "
        f"({plan['patches']} patches + [CLS]).",
        f"- Trained levels: g = {levels} ({names}); evaluated at every valid width from {run.widths[0]} to "
        f"{run.widths[-1]} ({len(run.widths)} widths).",
        f"- Seeds: {', '.join(str(s) for s in run.seeds)}. Variants: {', '.join(run.variants) or 'none'}.",
        f"- Recipe: train.py with {config}, train flags {_join(plan.get('train_args', []))}, data flags "
        f"{_join(plan.get('data_args', []))}, evaluation flags {_join(plan.get('eval_args', []))}. Every model is "
        "trained with this recipe and evaluated at its final weights.",
        f"- Held-out split: `{hold.get('val_split')}`, {hold.get('size', 0):,} of the {hold.get('of', 0):,} "
        f"training images (models train on `{hold.get('train_split')}`, the rest), stratified by class "
        f"({per_class}), seed {hold.get('seed')}; sha256 of the sorted held-out indices `{hold.get('sha256')}`.",
        f"- Every choice (the recipe, the variant) was made on the held-out split `{hold.get('val_split')}`; the "
        f"test split `{plan['test_split']}` is used only for the numbers reported here.",
        f"- Machine: {machine.get('cpu')}, {machine.get('cores')} cores, torch {machine.get('torch')}, Python "
        f"{machine.get('python')}, {machine.get('platform')}.",
        f"- Commit: `{plan.get('commit')}`." if plan.get("commit") else "- Commit: unknown (not a git checkout).",
        f"- results.json written {r['written']}; stage time in all {total / 60:.1f} min ({len(r['stages'])} "
        "stages, table at the end).",
        "",
        "Commands, in order:",
        "",
        "```",
        commands,
        "```",
    ]
    if recipe_choice is not None:
        lines += [
            "",
            "Recipe choice (made on the held-out split), as recorded:",
            "",
            "```json",
            json.dumps(recipe_choice, indent=2, sort_keys=True),
            "```",
        ]
    return "\n".join(lines)


def _init_seeds(run: Run) -> str:
    parts = []
    for g in run.levels:
        ms = run.baselines("own", g)
        if ms:
            parts.append(f"g={g}: " + ", ".join(f"{m['init_seed']} (s{m['seed']})" for m in ms))
    return "; ".join(parts) or "none"


def _models_section(run: Run) -> str:
    nested_init = {int(m["seed"]): m.get("init_seed") for m in run.nested()}
    shared = [
        m["name"]
        for g in run.levels
        for m in run.baselines("own", g)
        if m.get("init_seed") == nested_init.get(int(m["seed"]))
    ]
    lines = [
        "## Models compared",
        "",
        "- **nested** (`nested-s{seed}`): one model trained at every level at once (Matryoshka), init seed and "
        "data order = the seed.",
    ]
    for v in run.variants:
        lines.append(f"- **{label(v)}** (`nested-{v}-s{{seed}}`): the same, trained with train.py's `{v}` variant.")
    lines += [
        "- **own-init baseline** (`baseline-own-g{g}-s{seed}`): a standalone model whose mixers are g wide (the "
        "nested submodel's exact size), created from its own init seed and trained only at g, on the same data "
        f"order as the nested model of that seed. Init seeds: {_init_seeds(run)}.",
        "- **same-init baseline** (`baseline-same-g{g}-s{seed}`): the nested model's initial weights (init seed = "
        "the seed) sliced to width g, trained only at g on the same data order: it starts where the nested "
        "model's g-wide submodel starts.",
    ]
    if run.has_null():
        lines.append(
            "- **null** (retrieval only): the queries of another nested seed's model against a nested model's "
            "database (seed i+1 against seed i, cyclically): Matryoshka training and recipe alike, other weights."
        )
    else:
        lines.append("- **null**: needs a second nested seed; this run has none, so there is no null row.")
    if shared:
        lines.append(f"\nNote: {', '.join(shared)} share the nested model's init seed.")
    return "\n".join(lines)


def _choice_section(run: Run, chosen: str, scores: Dict[str, Optional[Stat]]) -> str:
    if not run.variants:
        return "## Variant choice\n\nThis run has no variants: the plain nested model is the one reported."
    rows = [{"c": label(v), "s": _cell(scores[v]), "x": "yes" if v == chosen else ""} for v in run.candidates]
    table = format_table(
        rows,
        ["c", "s", "x"],
        ["candidate", "held-out top-1 %, mean over the trained levels", "chosen"],
        markdown=True,
    )
    lines = [
        "## Variant choice (held-out split)",
        "",
        f"Among the plain nested model and its variants, the one with the highest mean over seeds of the mean "
        f"over the trained levels of top-1 on the held-out split `{run.plan['holdout'].get('val_split')}` "
        "(the test split played no part):",
        "",
        table,
        "",
    ]
    if all(s is None for s in scores.values()):
        lines.append("results.json holds no held-out figures: the plain nested model is the one reported.")
    else:
        lines.append(f"Chosen: **{label(chosen)}**.")
    return "\n".join(lines)


def _accuracy_lines(run: Run, variant: str) -> List[str]:
    own_all = {g: run.top1(run.baselines("own", g), g) for g in run.levels}
    lines = []
    for g in run.levels:
        n, b = run.top1(run.nested(variant), g), own_all[g]
        head = f"- {run.name(g)}: {label(variant)} {_cell(n)}, own-init baseline {_cell(b)}"
        if n is None or b is None:
            lines.append(f"{head} -> {_verdict(False, 'no result to compare')}")
        else:
            lines.append(f"{head}: {accuracy_verdict(n, b)[1]}")
    return lines


def _retrieval_lines(run: Run, variant: str) -> List[str]:
    full = run.retrieval("self", variant, run.D)
    lines = []
    for g in run.levels:
        if g == run.D:
            continue
        loss, part = retrieval_loss(run, variant, g), run.retrieval("self", variant, g)
        head = f"- {run.name(g)}: {label(variant)} g queries {_cell(part)} vs full-width queries {_cell(full)}"
        if loss is None:
            lines.append(f"{head} -> {_verdict(False, 'no retrieval rows to compare')}")
            continue
        ok = loss.mean <= MAX_RETRIEVAL_LOSS + _EPS
        what = f"loss {loss.mean:.3f} points" + (f" (per seed {loss.lo:.2f}-{loss.hi:.2f})" if loss.n > 1 else "")
        why = f"loses {loss.mean:.3f} points, more than {MAX_RETRIEVAL_LOSS}"
        lines.append(f"{head}: {what}, target <= {MAX_RETRIEVAL_LOSS} -> {_verdict(ok, why)}")
    return lines


def _baseline_query_lines(run: Run) -> List[str]:
    lines = []
    for g in run.levels:
        own, nested = run.retrieval("cross", "own", g), run.retrieval("self", "", g)
        head = f"- {run.name(g)}: own-init baseline queries {_cell(own)} vs nested queries {_cell(nested)}"
        if own is None or nested is None:
            lines.append(f"{head} -> {_verdict(False, 'no retrieval rows to compare')}")
        else:
            gap = nested.mean - own.mean
            ok = gap >= BASELINE_GAP - _EPS
            why = f"only {gap:.3f} points below, fewer than {BASELINE_GAP:.0f}"
            lines.append(f"{head}: {gap:.3f} points below, target >= {BASELINE_GAP:.0f} -> {_verdict(ok, why)}")
        null = _cell(run.retrieval("null", "", g)) if run.has_null() else "none (1 seed)"
        lines.append(
            f"  - beside it (no target): same-init baseline queries {_cell(run.retrieval('cross', 'same', g))}; "
            f"null (another nested seed's queries) {null}; against their own database: own-init "
            f"{_cell(run.retrieval('own', 'own', g))}, same-init {_cell(run.retrieval('own', 'same', g))}"
        )
    return lines


def _untrained_line(run: Run, variant: str) -> str:
    gaps = untrained_gaps(run, variant)
    if not gaps:
        return f"- {label(variant)}: every width in the plan is a trained level: nothing to check -> {_verdict(True)}"
    missing = [w for w, _, d in gaps if d is None]
    if missing:
        return f"- {label(variant)} -> {_verdict(False, f'no result at g = {missing}')}"
    w, below, worst = min(gaps, key=lambda x: (x[2], x[0]))
    under = [f"{x}" for x, _, d in gaps if d < -_EPS]
    head = (
        f"- {label(variant)}: {len(gaps)} untrained widths, worst gap to the next-smaller trained level "
        f"{worst:+.3f} points (g={w} vs g={below})"
    )
    why = f"{len(under)} of {len(gaps)} below their next-smaller trained level (g = {', '.join(under)})"
    return f"{head} -> {_verdict(not under, why)}"


def _targets_section(run: Run, chosen: str) -> str:
    extra = bool(chosen)
    same = "The chosen variant is the plain nested model: the lines above are its lines."
    lines = [
        "## Targets",
        "",
        "Each line ends in **met** or **missed** (and why). All on the test split; d and losses are differences "
        "of means over seeds.",
        "",
        f"### 1. Nested vs own-init baseline, test top-1 (met: |d| <= {WITHIN}, or nested ahead by more than the "
        "seed spread, the larger max - min over seeds of the two)",
        "",
        *_accuracy_lines(run, ""),
    ]
    if run.variants:
        lines += ["", *(_accuracy_lines(run, chosen) if extra else [same])]
    lines += [
        "",
        f"### 2. Retrieval: g queries vs full-width queries, same full-width nested database (met: loss <= "
        f"{MAX_RETRIEVAL_LOSS} points at every level below D)",
        "",
        *_retrieval_lines(run, ""),
    ]
    if run.variants:
        lines += ["", *(_retrieval_lines(run, chosen) if extra else [same])]
    lines += [
        "",
        f"### 3. Baselines' queries vs the nested database (met: own-init baseline at least {BASELINE_GAP:.0f} "
        "points below the nested queries of the same width)",
        "",
        *_baseline_query_lines(run),
        "",
        "### 4. Untrained widths (met: no untrained width below the next-smaller trained level, means over seeds)",
        "",
        _untrained_line(run, ""),
    ]
    if run.variants:
        lines += ["", _untrained_line(run, chosen) if extra else same]
    return "\n".join(lines)


def _mixnmatch(run: Run) -> List[Dict[str, Any]]:
    """Every configuration of the plain nested model (uniform widths and mix'n'match), averaged over seeds by
    name, with its cost; sorted by parameters."""
    models = run.nested()
    configs: Dict[str, Dict[str, Any]] = {}
    for w in run.widths:
        s = run.top1(models, w)
        if s is not None and run.cost(w, "params_non_embedding") is not None:
            configs[f"g={w}"] = {
                "top1": list(s.values),
                "params": run.cost(w, "params_non_embedding"),
                "gflops": run.cost(w, "gflops"),
            }
    for m in models:
        for c in m.get("test", {}).get("mixnmatch", []):
            entry = configs.setdefault(
                c["name"], {"top1": [], "params": c["params_non_embedding"], "gflops": c.get("gflops")}
            )
            entry["top1"].append(c["top1"])
    rows = [
        {"name": k, "stat": stat_of(v["top1"]), "params": v["params"], "gflops": v["gflops"]}
        for k, v in configs.items()
    ]
    return sorted(rows, key=lambda r: (r["params"], r["name"]))


def _front(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    idx = pareto_front([r["params"] for r in rows], [r["stat"].mean for r in rows])
    return [rows[i] for i in idx]


def _fig3_section(run: Run) -> str:
    rows = []
    for g in run.levels:
        n = run.top1(run.nested(), g)
        own, same = run.top1(run.baselines("own", g), g), run.top1(run.baselines("same", g), g)
        ok = accuracy_verdict(n, own)[0] if n is not None and own is not None else False
        rows.append(
            {
                "level": level_name(g, run.D),
                "g": g,
                "params": run.cost(g, "params_non_embedding"),
                "gflops": run.cost(g, "gflops"),
                "nested": _cell(n),
                "own": _cell(own),
                "same": _cell(same),
                "d": "n/a" if n is None or own is None else f"{n.mean - own.mean:+.2f}",
                "verdict": "met" if ok else "missed",
            }
        )
    table = format_table(
        rows,
        ["level", "g", "params", "gflops", "nested", "own", "same", "d", "verdict"],
        [
            "level",
            "g",
            "params (non-emb.)",
            "GFLOPs",
            "nested top-1 %",
            "own-init baseline top-1 %",
            "same-init baseline top-1 %",
            "nested - own-init",
            "target 1",
        ],
        {"gflops": ".4f"},
        markdown=True,
    )
    grid = []
    for w in run.widths:
        row: Dict[str, Any] = {
            "g": w,
            "trained": "yes" if w in run.levels else "",
            "params": run.cost(w, "params_non_embedding"),
        }
        for v in run.candidates:
            row[v or "-"] = f"{s.mean:.2f}" if (s := run.top1(run.nested(v), w)) is not None else "n/a"
        row["below"] = max((t for t in run.trained if t <= w), default=None)
        grid.append(row)
    cols = [v or "-" for v in run.candidates]
    grid_table = format_table(
        grid,
        ["g", "trained", "params", *cols, "below"],
        ["g", "trained", "params (non-emb.)", *[f"{label(v)} top-1 %" for v in run.candidates], "next-smaller level"],
        markdown=True,
    )
    front = _front(_mixnmatch(run))
    front_table = format_table(
        [{"name": r["name"], "top1": _cell(r["stat"]), "params": r["params"], "gflops": r["gflops"]} for r in front],
        ["name", "top1", "params", "gflops"],
        ["configuration", "top-1 %", "params (non-emb.)", "GFLOPs"],
        {"gflops": ".4f"},
        markdown=True,
    )
    n_seeds = len(run.nested())
    return "\n".join(
        [
            "## Fig. 3: nested submodels vs baselines (test top-1)",
            "",
            "![Fig. 3](fig3_accuracy.png)",
            "",
            table,
            "",
            f"### Every valid width from {run.widths[0]} to {run.widths[-1]} (test top-1 %, means over seeds)",
            "",
            grid_table,
            "",
            f"### Mix'n'match Pareto front, plain nested model (top-1 vs non-embedding parameters; configurations "
            f"averaged over {n_seeds} seed{'s' if n_seeds != 1 else ''} by name)",
            "",
            front_table if front else "No configurations recorded.",
        ]
    )


def _fig5_columns(run: Run) -> List[Tuple[str, str, str]]:
    """(heading, kind, who) of each Fig. 5 column."""
    cols = [(f"{label(v)} queries", "self", v) for v in run.candidates]
    cols += [
        ("own-init baseline queries", "cross", "own"),
        ("same-init baseline queries", "cross", "same"),
    ]
    if run.has_null():
        cols.append(("null: another nested seed's queries", "null", ""))
    cols += [("own-init, own database", "own", "own"), ("same-init, own database", "own", "same")]
    return cols


def _fig5_section(run: Run) -> str:
    cols = _fig5_columns(run)
    tables = []
    for metric, name in (("top1", "1-NN top-1 %"), ("map10", "mAP@10 %")):
        rows = [
            {
                "g": f"{level_name(g, run.D)} ({g})",
                **{str(i): _cell(run.retrieval(k, w, g, metric)) for i, (_, k, w) in enumerate(cols)},
            }
            for g in run.levels
        ]
        tables += [
            f"{name}:",
            "",
            format_table(
                rows, ["g", *[str(i) for i in range(len(cols))]], ["query width", *[c[0] for c in cols]], markdown=True
            ),
            "",
        ]
    null = "" if run.has_null() else " With 1 seed there is no second nested model, so no null row."
    return "\n".join(
        [
            "## Fig. 5: adaptive retrieval (database: train split, queries: test split)",
            "",
            "![Fig. 5](fig5_retrieval.png)",
            "",
            "The nested models' queries of each width and the baselines' queries go against the plain nested "
            "model's full-width database of the same seed (each variant: its own full-width database); the last "
            f"two columns are each baseline against its own database.{null}",
            "",
            *tables,
        ]
    ).rstrip()


def _stages_section(run: Run) -> str:
    stages = run.results["stages"]
    total = math.fsum(float(s["seconds"]) for s in stages)
    table = format_table(
        [{"stage": s["name"], "s": float(s["seconds"]), "at": s["finished"]} for s in stages],
        ["stage", "s", "at"],
        ["stage", "seconds", "finished"],
        {"s": ".0f"},
        markdown=True,
    )
    return f"## Stages (in run order)\n\n{table}\n\nTotal: {total:.0f} s ({total / 60:.1f} min)."


def render_markdown(results: Dict[str, Any]) -> str:
    """REPRODUCTION.md's text from a results.json dict (checked first)."""
    try:
        run = Run(results)
        chosen, scores = choose_variant(run)
        parts = [
            _header(run),
            _models_section(run),
            _choice_section(run, chosen, scores),
            _targets_section(run, chosen),
            _fig3_section(run),
            _fig5_section(run),
            _stages_section(run),
        ]
    except (KeyError, TypeError) as e:  # a record without a field the schema requires
        raise ValueError(f"results: a record lacks a field or has the wrong type ({type(e).__name__}: {e})") from None
    return "\n\n".join(parts) + "\n"


def write_report(results: Dict[str, Any], out_dir: Union[str, Path]) -> Path:
    """Write REPRODUCTION.md, fig3_accuracy.png and fig5_retrieval.png into ``out_dir`` from a results.json
    dict alone; returns the Markdown's path."""
    text = render_markdown(results)
    run = Run(results)
    out = Path(out_dir)
    plot_accuracy(run, choose_variant(run)[0], _front(_mixnmatch(run)), out / "fig3_accuracy.png")
    plot_retrieval(run, out / "fig5_retrieval.png")
    path = out / "REPRODUCTION.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
