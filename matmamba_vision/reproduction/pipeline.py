"""``make reproduce``: every stage in order (each skipped when recorded as done), then the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .report import write_report
from .stages import VARIANTS, Plan, Runners, StageLog

__all__ = ["reproduce", "VARIANTS", "load_rows", "close_levels"]


def load_rows(path: Path) -> List[Dict]:
    """The ``rows`` of a validate.json / retrieval.json."""
    return json.loads(Path(path).read_text())["rows"]


def uniform_top1(plan: Plan, name: str) -> Dict[int, float]:
    """Top-1 per uniform width from a model's validate.json."""
    rows = load_rows(plan.eval_dir(name) / "validate.json")
    return {int(r["dims"][0]): float(r["top1"]) for r in rows if r["kind"] == "uniform"}


def close_levels(plan: Plan, seed: int, threshold: float) -> List[int]:
    """Trained levels where nested and baseline top-1 differ by less than ``threshold`` points at ``seed``."""
    nested = uniform_top1(plan, plan.nested(seed))
    out = []
    for g in plan.levels:
        base = uniform_top1(plan, plan.baseline(g, seed))[g]
        if abs(nested[g] - base) < threshold:
            out.append(g)
    return out


def reproduce(
    plan: Plan,
    runners: Runners,
    seeds: Sequence[int] = (0, 1, 2),
    variants: bool = False,
    threshold: float = 0.5,
    command: str = "",
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or finish) every stage and write ``REPRODUCTION.md``; returns its path."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    st = StageLog(plan.run_dir)
    s0 = seeds[0]

    def train_nested(seed: int, variant: str = "") -> None:
        st.run(f"train {plan.nested(seed, variant)}", lambda: runners.train(plan.nested_train_argv(seed, variant)), log)

    def train_baseline(g: int, seed: int) -> None:
        st.run(f"train {plan.baseline(g, seed)}", lambda: runners.train(plan.baseline_train_argv(g, seed)), log)

    def validate(name: str, widths: Optional[Sequence[int]] = None, mixnmatch: bool = False) -> None:
        st.run(f"validate {name}", lambda: runners.validate(plan.validate_argv(name, widths, mixnmatch)), log)

    def retrieval(name: str, baselines: Dict[int, str]) -> None:
        st.run(f"retrieval {name}", lambda: runners.retrieval(plan.retrieval_argv(name, baselines)), log)

    # Fig. 3 and Fig. 5 at the first seed: the nested model, one baseline per trained width
    train_nested(s0)
    for g in plan.levels:
        train_baseline(g, s0)
    validate(plan.nested(s0), plan.widths, mixnmatch=True)
    for g in plan.levels:
        validate(plan.baseline(g, s0))
    retrieval(plan.nested(s0), {g: plan.baseline(g, s0) for g in plan.levels})
    # beyond the paper
    if variants:
        for v in VARIANTS:
            train_nested(s0, v)
            validate(plan.nested(s0, v), plan.widths)
            retrieval(plan.nested(s0, v), {})
    # more seeds where nested and baseline are close
    close = close_levels(plan, s0, threshold)
    if close:
        log(f"[reproduce] nested and baseline within {threshold} points at g = {close}: seeds {list(seeds[1:])} too")
        for seed in seeds[1:]:
            train_nested(seed)
            validate(plan.nested(seed), plan.levels)
            for g in close:
                train_baseline(g, seed)
                validate(plan.baseline(g, seed))
    path = write_report(
        plan,
        seeds=[s0, *seeds[1:]] if close else [s0],
        close=close,
        variants=variants,
        stage_times=st.done,
        command=command,
        threshold=threshold,
    )
    log(f"[reproduce] wrote {path}")
    return path
