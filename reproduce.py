#!/usr/bin/env python3
"""Reproduce the MatMamba paper's vision claims at small scale and write REPRODUCTION.md with its figures.

    python reproduce.py                                   # Fashion-MNIST, output/reproduce
    python reproduce.py --variants                        # also --distill and --sample-granularities runs
    python reproduce.py --data-dir /data/folder --output output/repro-folder
    python reproduce.py --train-args="--epochs 1"         # extra train.py flags for every model

Trains the Matryoshka model with train.py's embedded recipe and one baseline per trained width (each alone, same
recipe and optimiser steps), evaluates them with validate.py and retrieval.py, and writes the report into the run
folder. Run it again with the same flags to continue an interrupted run: finished stages (``stages.json``) are
skipped and an interrupted training resumes from its last epoch.
"""

from __future__ import annotations

import argparse
import shlex
import sys

import retrieval
import validate
from matmamba_vision.flags import run_script
from matmamba_vision.reproduction import Plan, Runners, reproduce
from matmamba_vision.training import TrainingError
from matmamba_vision.training import main as train_main


def _seeds(text: str):
    try:
        seeds = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers, e.g. '0,1,2', got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"expected one or more distinct seeds, got {text!r}")
    return seeds


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
    p.add_argument("--dataset", default="", help="as train.py's --dataset ('' = Fashion-MNIST without --data-dir)")
    p.add_argument("--data-dir", default=None, help="a folder dataset with train/ and val/ (default: Fashion-MNIST)")
    p.add_argument("--variants", action="store_true", help="also train with --distill and with --sample-granularities")
    p.add_argument(
        "--sample-granularities",
        type=_nonneg_int,
        default=2,
        metavar="N",
        help="N of the --sample-granularities variant (default: %(default)s)",
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default=[0, 1, 2],
        help="seeds; the first trains everything, the others where nested and baseline are close (default: 0,1,2)",
    )
    p.add_argument(
        "--close",
        type=float,
        default=0.5,
        help="points under which nested and baseline count as close (default: %(default)s)",
    )
    p.add_argument("--train-args", default="", help="extra train.py flags for every model, e.g. '--epochs 1'")
    p.add_argument("--max-samples", type=int, default=None, help="evaluate on N images of each split (default: all)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    data = (["--dataset", args.dataset] if args.dataset else []) + (
        ["--data-dir", args.data_dir] if args.data_dir else []
    )
    plan = Plan(
        args.output,
        train_args=shlex.split(args.train_args),
        data_args=data,
        eval_args=["--max-samples", str(args.max_samples)] if args.max_samples else [],
        sample_n=args.sample_granularities,
    )
    runners = Runners(train=train_main, validate=validate.main, retrieval=retrieval.main)
    command = " ".join(["python reproduce.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return reproduce(plan, runners, seeds=args.seeds, variants=args.variants, threshold=args.close, command=command)


if __name__ == "__main__":
    run_script(main, failures=(TrainingError,))  # exit 2: bad flags or data; 1: a training failed
