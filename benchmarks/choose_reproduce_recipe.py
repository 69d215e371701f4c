#!/usr/bin/env python3
"""Choose `make reproduce`'s model and recipe on the held-out split: train the nested model (seed 0) with each
candidate on ``minitrain``, score it on ``minival`` (the test split is never read), and write the figures.

    python benchmarks/choose_reproduce_recipe.py --json docs/reproduction/recipe_choice.json

The candidates cost about the same per training (the whole run must fit 90 minutes on 2 CPU cores: 3 seeds,
2 variants, 8 baselines per seed); the most accurate on minival (mean top-1 over the trained levels) is the
recipe file's choice. Seconds are wall times of this run (name the CPU and the load beside them).
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
    "patch7-e4-lr3e-3": [],
    "patch7-e4-lr6e-3": ["--lr", "6e-3"],
    "patch7-e4-lr1.5e-3": ["--lr", "1.5e-3"],
    "patch4-e1-lr3e-3": ["--model", "matmamba_vision_tiny_patch4_28", "--epochs", "1"],
}


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
    args = p.parse_args(argv)
    out = Path(args.output)
    names = args.only or list(CANDIDATES)
    runs = {n: run_candidate(n, CANDIDATES[n], out) for n in names}
    best = max(runs, key=lambda n: runs[n]["minival_mean"])
    result = dict(
        base_config=BASE,
        split=dict(train=TRAIN_SPLIT, val=VAL_SPLIT, seed=0),
        candidates=runs,
        chosen=best,
        rule="highest mean minival top-1 over the trained levels",
        machine=machine_name("cpu"),
        commit=git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    text = json.dumps(result, indent=1) + "\n"
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(text))
    for n, r in runs.items():
        mark = "  <- chosen" if n == best else ""
        print(f"{n:22s} minival mean top-1 {r['minival_mean']:.2f}  {r['seconds']:.0f} s{mark}")
    return result


if __name__ == "__main__":
    main()
