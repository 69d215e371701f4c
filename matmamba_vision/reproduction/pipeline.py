"""``make reproduce``: every stage of the plan in order (each skipped when recorded as done), then ``results.json``
(every measured number of the run) and the report generated from it."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

from ..evaluation.latency_cache import machine_name
from ..weights import atomic_write
from .report import write_report
from .report_data import FORMAT, VERSION
from .stages import TEST_SPLIT, Plan, Runners, Stage, StageLog

__all__ = ["reproduce", "collect_results", "load_rows"]

RECIPE_CHOICE = "docs/reproduction/recipe_choice.json"
RETRIEVAL_METRICS = ("top1", "map10", "recall1", "recall5", "recall10")


def load_rows(path: Path) -> List[Dict]:
    """The ``rows`` of a validate.json / retrieval.json."""
    return json.loads(Path(path).read_text())["rows"]


def _run_stage(plan: Plan, runners: Runners, stage: Stage) -> None:
    if stage.verb == "train":
        info = plan.parse_model(stage.model)
        plan.write_init(plan.nested(info["seed"]) if info["kind"] == "nested" else stage.model)
        runners.train(plan.train_argv(stage.model))
    elif stage.verb == "validate":
        runners.validate(plan.validate_argv(stage.model))
    else:
        runners.retrieval(plan.retrieval_argv(stage.model))


def reproduce(plan: Plan, runners: Runners, command: str = "", log: Callable[[str], None] = print) -> Path:
    """Run (or finish) every stage, write ``results.json`` and the report from it; returns REPRODUCTION.md."""
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    stages = plan.stages()
    st = StageLog(plan.run_dir, plan.record(), command)
    log(
        f"[reproduce] {len(stages)} stages in {plan.run_dir}: {plan.model_name}, a sequence of {plan.tokens} tokens "
        f"({plan.patches} patches + [CLS]), seeds {plan.seeds}, variants {plan.variants or 'none'}"
    )
    for i, stage in enumerate(stages):
        st.run(i, stages, lambda stage=stage: _run_stage(plan, runners, stage), log)
    results = collect_results(plan, st)
    path = plan.run_dir / "results.json"
    text = json.dumps(results, indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    report = write_report(results, plan.run_dir)
    log(f"[reproduce] wrote {path} and {report}")
    return report


def _final_minival(plan: Plan, name: str, widths: List[int]) -> Dict[str, float]:
    """Top-1 on the held-out split at the last epoch (train.py's summary.csv)."""
    with open(plan.exp_dir(name) / "summary.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    return {str(g): float(last[f"eval_top1_g{g}"]) for g in widths}


def _model_results(plan: Plan, name: str) -> Dict[str, Any]:
    info = plan.parse_model(name)
    rows = load_rows(plan.eval_dir(name) / "validate.json")
    uniform = {int(r["dims"][0]): r for r in rows if r["kind"] == "uniform"}
    out = dict(name=name, **info)
    out["test"] = dict(
        uniform={str(g): float(r["top1"]) for g, r in sorted(uniform.items())},
        mixnmatch=[
            dict(
                name=r["name"],
                dims=list(r["dims"]),
                top1=float(r["top1"]),
                params_non_embedding=int(r["params_non_embedding"]),
                gflops=float(r["gflops"]),
            )
            for r in rows
            if r["kind"] != "uniform"
        ],
    )
    if info["kind"] == "baseline":
        (row,) = uniform.values()
        out.update(params_non_embedding=int(row["params_non_embedding"]), gflops=float(row["gflops"]))
        out["minival"] = _final_minival(plan, name, [info["width"]])
    else:
        out["minival"] = _final_minival(plan, name, plan.levels)
    return out


def _retrieval_results(plan: Plan, name: str) -> List[Dict[str, Any]]:
    """The rows of ``name``'s retrieval.json, with query and database named by model and width."""
    seed = plan.parse_model(name)["seed"]
    out = []
    for r in load_rows(plan.eval_dir(name) / "retrieval" / "retrieval.json"):
        if r["query_kind"] == "baseline":
            model, width = r["query"].rsplit("@", 1)
            query = (model, int(width))
        else:
            query = (name, int(r["query_granularity"]))
        db = (name, int(r["db_granularity"])) if r["db_model"] == "nested" else query
        row = dict(seed=seed, query_model=query[0], query_width=query[1], db_model=db[0], db_width=db[1])
        row.update({k: float(r[k]) for k in RETRIEVAL_METRICS})
        out.append(row)
    return out


def _recipe_choice(plan: Plan) -> Dict[str, Any]:
    """The held-out figures behind the recipe file (benchmarks/choose_reproduce_recipe.py's output committed as
    docs/reproduction/recipe_choice.json), when they were made for this run's recipe file; else None."""
    path = Path(__file__).resolve().parents[2] / RECIPE_CHOICE
    if not plan.config or not path.is_file():
        return None
    choice = json.loads(path.read_text())
    return choice if Path(choice.get("base_config", "")).name == Path(plan.config).name else None


def collect_results(plan: Plan, stage_log: StageLog) -> Dict[str, Any]:
    """Every number of the run from its evaluation files: the one source of the report (schema version 1)."""
    stages = plan.stages()
    models = [_model_results(plan, s.model) for s in stages if s.verb == "validate"]
    nested0 = load_rows(plan.eval_dir(plan.nested(plan.seeds[0])) / "validate.json")
    params = {
        str(r["dims"][0]): dict(params_non_embedding=int(r["params_non_embedding"]), gflops=float(r["gflops"]))
        for r in nested0
        if r["kind"] == "uniform"
    }
    record = plan.record()
    record.pop("config_text")
    record.update(
        patches=plan.patches,
        tokens=plan.tokens,
        depth=plan.depth,
        embed_dim=plan.embed_dim,
        widths=plan.widths,
        holdout=plan.holdout_record(),
        test_split=TEST_SPLIT,
        recipe_choice=_recipe_choice(plan),
    )
    return dict(
        format=FORMAT,
        version=VERSION,
        written=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        commands=stage_log.commands,
        plan=record,
        machine=dict(
            cpu=machine_name("cpu"),
            cores=os.cpu_count(),
            torch=torch.__version__,
            python=platform.python_version(),
            platform=platform.platform(),
        ),
        params=params,
        models=models,
        retrieval=[row for s in stages if s.verb == "retrieval" for row in _retrieval_results(plan, s.model)],
        stages=[dict(name=s.name, **stage_log.done[s.name]) for s in stages],
    )
