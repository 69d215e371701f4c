#!/usr/bin/env python3
"""Evaluate a MatMamba-Vision model at its trained granularities and at mix'n'match configurations.

    python validate.py                                        # tiny model, Fashion-MNIST val, trained levels
    python validate.py --checkpoint output/train/RUN/model_best.safetensors --mixnmatch official
    python validate.py --model matmamba_vision_35m_patch16_224 --pretrained --data-dir /data/imagenet

Writes ``validate.csv``, ``validate.json`` and ``validate.png`` to ``--output`` and prints the tables.
"""

from __future__ import annotations

import argparse
import time

import matmamba_vision  # noqa: F401  (registers the models with timm)
from matmamba_vision.argformat import DefaultsHelpFormatter
from matmamba_vision.data.holdout import SPLITS_HELP
from matmamba_vision.data.loader import check_split, resolve_dataset
from matmamba_vision.evaluation import dedupe_configs, parse_granularities, parse_mixnmatch
from matmamba_vision.evaluation.classification import (
    CSV_COLUMNS,
    validate_configs,
    validation_tables,
    write_validation_outputs,
)
from matmamba_vision.evaluation.cli import add_common_args, amp_dtype_from_args, loader_from_args, setup_from_args
from matmamba_vision.evaluation.latency import (
    LATENCY_COLUMNS,
    add_latency_args,
    check_latency_args,
    latency_from_args,
    latency_table,
)
from matmamba_vision.evaluation.report import write_results_file
from matmamba_vision.flags import GranularityList, parse_flags, run_script


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--split", default="val", help=f"split to evaluate: {SPLITS_HELP} (default: %(default)s)")
    p.add_argument(
        "--granularities",
        nargs="*",
        action=GranularityList,
        default=None,
        help="uniform granularities g to evaluate (default: the trained levels D, D/2, D/4, D/8)",
    )
    p.add_argument(
        "--mixnmatch",
        default="",
        help="'official' (the paper's mix'n'match sweep), 'random:N', or a JSON/CSV file of per-layer lists",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of random:N")
    add_latency_args(p)
    return parse_flags(p, argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    check_split(resolve_dataset(args.dataset, args.data_dir), args.split)  # before the model is built
    start = time.perf_counter()
    device, checkpoint, model, out_dir, data_config, levels = setup_from_args(args)
    check_latency_args(args, device)  # before the evaluation, not after it
    configs = dedupe_configs(
        parse_granularities(model, args.granularities, levels)
        + parse_mixnmatch(model, args.mixnmatch, args.seed, levels)
    )
    loader = loader_from_args(args, args.split, data_config)
    limit = "" if args.max_samples is None else f", {args.max_samples} spread over it"
    print(
        f"{args.model}: {len(configs)} configurations on {args.split} "
        f"({getattr(loader, 'num_samples', '?')} images{limit})",
        flush=True,
    )
    rows = validate_configs(
        model,
        loader,
        configs,
        img_size=tuple(data_config["input_size"][1:]),
        device=str(device),
        amp_dtype=amp_dtype_from_args(args),
        max_samples=args.max_samples,
        share_prefix=not args.no_prefix_sharing,
        log_freq=args.log_freq,
    )
    latency = latency_from_args(args, model, configs, rows, device) if args.latency else None
    seconds = time.perf_counter() - start
    meta = dict(
        model=args.model,
        checkpoint=args.checkpoint or None,
        pretrained=args.pretrained,
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=args.split,
        data_config=data_config,
        mixnmatch=args.mixnmatch or None,
        trained_levels=levels,
        model_args=model.model_args,
        seconds=seconds,
        device=str(device),
        latency=latency,
    )
    print()
    print(validation_tables(rows), flush=True)  # shown before the files are written
    if latency:
        print("\n" + latency_table(rows), flush=True)
    extra = LATENCY_COLUMNS if latency else ()
    paths = write_validation_outputs(
        rows, out_dir, meta, title=f"{args.model} ({args.split})", extra_columns=extra, latency=latency
    )
    if args.results_file:
        write_results_file(args.results_file, rows, meta, CSV_COLUMNS + extra)
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}  ({seconds:.1f} s)")
    return rows


if __name__ == "__main__":
    run_script(main)  # bad flags or data: one clear line, no traceback, exit 2
