#!/usr/bin/env python3
"""Choose `make reproduce`'s model and recipe on the held-out split: train the nested model (seed 0) with each
candidate on ``minitrain``, score it on ``minival`` (the test split is never read), and write the figures.

    python benchmarks/choose_reproduce_recipe.py --json docs/reproduction/recipe_choice.json

The whole run must fit 90 minutes on 2 CPU cores (3 seeds; per seed the nested model, 2 variants, 8
baselines). Each candidate's run is projected from its nested training's seconds times the run's trainings in
nested-training units (per seed; from ``--calibrate``, a finished run's results.json, else the issue-17 run's
stage times); candidates whose projected training exceeds 80 % of the budget (the rest: evaluation and margin)
are out, and the most accurate of the others on minival (mean top-1 over the trained levels) is the choice.
Candidates already in ``--json`` are kept, not retrained. Seconds are this run's wall times (name the CPU and load).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from matmamba_vision.evaluation.latency_cache import machine_name  # noqa: E402
from matmamba_vision.reproduction.stages import TRAIN_SPLIT, VAL_SPLIT, git_commit  # noqa: E402
from matmamba_vision.training import main as train_main  # noqa: E402
from matmamba_vision.weights import atomic_write  # noqa: E402

BASE = "configs/reproduce_fmnist.yaml"
# name -> train.py flags over BASE; patch 7 = 16 patches + [CLS], patch 4 = 49 + [CLS] (depth 6, d_state 32)
CANDIDATES = {
    "patch7-e3-lr3e-3": ["--epochs", "3"],
    "patch7-e4-lr3e-3": ["--epochs", "4"],
    "patch7-e4-lr6e-3": ["--epochs", "4", "--lr", "6e-3"],
    "patch7-e4-lr1.5e-3": ["--epochs", "4", "--lr", "1.5e-3"],
    "patch4-e1-lr3e-3": ["--model", "matmamba_vision_tiny_patch4_28", "--epochs", "1"],
}


BUDGET_MINUTES, TRAINING_SHARE, SEEDS = 90.0, 0.8, 3
# Trainings per seed in nested-training units, from the issue-17 run's stage times (docs/reproduction at
# commit 5cdda0f; nested 375 s, distill 410 s, two sampled widths 571 s, one baseline per level 440 s in all):
# 1 + 410/375 + 571/375 + 2 x 440/375 (own- and same-init baselines).
DEFAULT_UNITS = 1 + 410 / 375 + 571 / 375 + 2 * 440 / 375


def units_per_seed(results_path: str) -> float:
    """Trainings per seed in nested-training units, measured by a finished run (its results.json)."""
    results = json.loads(Path(results_path).read_text())
    train = {s["name"][len("train ") :]: s["seconds"] for s in results["stages"] if s["name"].startswith("train ")}
    nested = [sec for name, sec in train.items() if name.startswith("nested-s")]
    if not nested:
        raise ValueError(f"--calibrate: {results_path} has no nested training stage")
    return sum(train.values()) / len(results["plan"]["seeds"]) / (sum(nested) / len(nested))


def run_candidate(name: str, flags, output: Path) -> dict:
    argv = ["-c", BASE, *flags, "--train-split", TRAIN_SPLIT, "--val-split", VAL_SPLIT, "--seed", "0"]
    argv += ["--output", str(output), "--experiment", name, "--no-progress"]
    t0 = time.time()
    train_main(argv)
    seconds = time.time() - t0
    with open(output / name / "summary.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    top1 = {k[len("eval_top1_g") :]: float(v) for k, v in last.items() if k.startswith("eval_top1_g")}
    return dict(flags=flags, minival_top1=top1, minival_mean=sum(top1.values()) / len(top1), seconds=seconds)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/recipe-choice", help="training folders (default: %(default)s)")
    p.add_argument("--json", default="output/recipe-choice/recipe_choice.json", help="results file")
    p.add_argument("--only", nargs="*", default=None, choices=sorted(CANDIDATES), help="a subset of candidates")
    p.add_argument("--calibrate", default=None, help="a finished run's results.json (units per seed)")
    args = p.parse_args(argv)
    out = Path(args.output)
    names = args.only or list(CANDIDATES)
    old = json.loads(Path(args.json).read_text())["candidates"] if Path(args.json).is_file() else {}
    runs = {n: old[n] if n in old else run_candidate(n, CANDIDATES[n], out) for n in names}
    units = units_per_seed(args.calibrate) if args.calibrate else DEFAULT_UNITS
    for r in runs.values():
        r["projected_training_minutes"] = r["seconds"] * units * SEEDS / 60
        r["fits"] = r["projected_training_minutes"] <= BUDGET_MINUTES * TRAINING_SHARE
    fitting = [n for n in runs if runs[n]["fits"]]
    if not fitting:
        raise SystemExit("no candidate's projected training fits the budget")
    best = max(fitting, key=lambda n: runs[n]["minival_mean"])
    result = dict(
        base_config=BASE,
        split=dict(train=TRAIN_SPLIT, val=VAL_SPLIT, seed=0),
        candidates=runs,
        chosen=best,
        units_per_seed=units,
        calibration=args.calibrate or "issue-17 run (DEFAULT_UNITS)",
        rule=f"highest mean minival top-1 over the trained levels among candidates whose projected training "
        f"({SEEDS} seeds) is at most {TRAINING_SHARE:.0%} of {BUDGET_MINUTES:.0f} min",
        machine=machine_name("cpu"),
        commit=git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    text = json.dumps(result, indent=1) + "\n"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
    for n, r in runs.items():
        mark = "  <- chosen" if n == best else ""
        fit = "fits" if r["fits"] else "too slow"
        print(
            f"{n:22s} minival mean top-1 {r['minival_mean']:.2f}  {r['seconds']:.0f} s, projected training "
            f"{r['projected_training_minutes']:.0f} min ({fit}){mark}"
        )
    return result


if __name__ == "__main__":
    main()
