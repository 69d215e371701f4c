#!/usr/bin/env python3
"""Reproduce the MatMamba paper's vision claims at small scale: results.json, REPRODUCTION.md and its figures.

    python reproduce.py                                   # Fashion-MNIST, output/reproduce (make reproduce)
    python reproduce.py --seeds 0 --config configs/reproduce_fmnist_quick.yaml --output output/reproduce-quick
    python reproduce.py --data-dir /data/folder --output output/repro-folder
    python reproduce.py --report-from docs/reproduction/results.json --output docs/reproduction

Per seed: the Matryoshka model, its variants (--distill, --sample-granularities), and two baselines per trained
width (own initialisation; the nested model's initial weights sliced to the width), all with the recipe file
and the same data order, on the training split minus a stratified held-out split; every model is evaluated on
the test split (validate.py) and the nested ones by retrieval.py, with the baselines' and another seed's nested
queries against their database. The stage list is fixed at the start ("stage i of N", with an ETA).

Run it again with the same flags to continue an interrupted run: finished stages (``stages.json``) are skipped
and an interrupted training resumes from its last epoch. A rerun with another plan (flags, seeds, model, recipe,
commit) stops and names the difference; ``--new-run`` starts a fresh folder beside it instead.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import retrieval
import validate
from matmamba_vision.flags import run_script
from matmamba_vision.reproduction import VARIANTS, Plan, Runners, reproduce
from matmamba_vision.reproduction.report import load_results, write_report
from matmamba_vision.reproduction.stages import PlanMismatch, StageLog, git_commit
from matmamba_vision.training import TrainingError
from matmamba_vision.training import main as train_main

DEFAULT_CONFIG = "configs/reproduce_fmnist.yaml"


def _seeds(text: str):
    try:
        seeds = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, e.g. '0,1,2', got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected one or more distinct seeds >= 0, got {text!r}")
    return seeds


def _variants(text: str):
    names = [v for v in text.replace(",", " ").split() if v != "none"]
    bad = sorted(set(names) - set(VARIANTS))
    if bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"expected distinct names from {list(VARIANTS)} or 'none', got {text!r}")
    return names


def _nonneg_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return v


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/reproduce", help="run folder (default: %(default)s)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="train.py recipe file, -c (default: %(default)s)")
    p.add_argument("--dataset", default="", help="as train.py's --dataset ('' = Fashion-MNIST without --data-dir)")
    p.add_argument("--data-dir", default=None, help="a folder dataset with train/ and val/ (default: Fashion-MNIST)")
    p.add_argument(
        "--variants",
        type=_variants,
        default=list(VARIANTS),
        help=f"train.py variants trained per seed, from {list(VARIANTS)}, or 'none' (default: all)",
    )
    p.add_argument(
        "--sample-granularities",
        type=_nonneg_int,
        default=2,
        metavar="N",
        help="N of the --sample-granularities variant (default: %(default)s)",
    )
    p.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="seeds, every model at each (default: 0,1,2)")
    p.add_argument("--train-args", default="", help="extra train.py flags for every model, e.g. '--epochs 1'")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate on N images of each split (default: all)")
    p.add_argument("--new-run", action="store_true", help="when --output holds another plan: use OUTPUT-2, -3, ...")
    p.add_argument(
        "--report-from", default=None, metavar="RESULTS", help="only write the report of a results.json into --output"
    )
    return p.parse_args(argv)


def _free_folder(plan_of, output: str) -> str:
    """``output`` or the first ``output-N`` that holds no run of another plan."""
    for n in range(1, 1000):
        folder = output if n == 1 else f"{output}-{n}"
        try:
            StageLog.check(Path(folder), plan_of(folder).record())
            return folder
        except PlanMismatch:
            continue
    raise ValueError(f"--new-run: {output}-2 ... {output}-999 all hold other runs")


def main(argv=None):
    args = parse_args(argv)
    if args.report_from:
        if not Path(args.report_from).is_file():
            raise ValueError(f"--report-from: {args.report_from} is not a file")
        path = write_report(load_results(args.report_from), Path(args.output))
        print(f"[reproduce] wrote {path}")
        return path
    data = (["--dataset", args.dataset] if args.dataset else []) + (
        ["--data-dir", args.data_dir] if args.data_dir else []
    )

    def plan_of(folder: str) -> Plan:
        return Plan(
            folder,
            config=args.config,
            train_args=shlex.split(args.train_args),
            data_args=data,
            eval_args=["--max-samples", str(args.max_samples)] if args.max_samples else [],
            seeds=args.seeds,
            variants=args.variants,
            sample_n=args.sample_granularities,
            commit=git_commit(),
        )

    output = _free_folder(plan_of, args.output) if args.new_run else args.output
    runners = Runners(train=train_main, validate=validate.main, retrieval=retrieval.main)
    command = " ".join(["python reproduce.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return reproduce(plan_of(output), runners, command=command)


if __name__ == "__main__":
    run_script(main, failures=(TrainingError,))  # exit 2: bad flags, data or a plan mismatch; 1: a training failed
