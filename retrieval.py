#!/usr/bin/env python3
"""Adaptive image retrieval: database embedded at full width, queries at every nested granularity.

    python retrieval.py                                       # tiny model, Fashion-MNIST train (db) / val (queries)
    python retrieval.py --checkpoint output/train/RUN/model_best.safetensors --db-granularities 128 64 32 16
    python retrieval.py --model matmamba_vision_35m_patch16_224 --pretrained --data-dir /data/imagenet
    python retrieval.py --checkpoint RUN/model_best.safetensors --cascade 16,32,64,128 --rerank --index-dir IDX

Reports 1-NN top-1, mAP@10 and recall@1/5/10 per (query, database) granularity pair; writes
``retrieval.csv``, ``retrieval.json`` and ``retrieval.png`` to ``--output``. Embeddings are cached in
``--cache-dir`` (keyed by model, checkpoint SHA-256, granularity, split, a fingerprint of its files, transform,
``--max-samples``, precision and device type). ``--cascade`` and ``--rerank`` add ``cascade.{csv,json,png}`` and
``rerank.{csv,json}``; ``--index-dir`` keeps the database as a faiss index between runs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matmamba_vision  # noqa: F401  (registers the models with timm)
from matmamba_vision.argformat import DefaultsHelpFormatter
from matmamba_vision.data.holdout import SPLITS_HELP, splits_overlap
from matmamba_vision.data.identity import data_identity
from matmamba_vision.data.loader import check_split, resolve_dataset
from matmamba_vision.evaluation import (
    KNN_BACKENDS,
    Baseline,
    EmbeddingCache,
    parse_granularities,
    resolve_backend,
    retrieval_table,
    run_retrieval,
    state_dict_sha256,
    uniform_configs,
    write_retrieval_outputs,
)
from matmamba_vision.evaluation.adaptive import (
    add_adaptive_args,
    check_adaptive_args,
    needs_database_images,
    open_database_index,
    run_adaptive,
)
from matmamba_vision.evaluation.cli import (
    add_common_args,
    amp_dtype_from_args,
    build_baseline,
    loader_from_args,
    setup_from_args,
)
from matmamba_vision.evaluation.report import write_results_file
from matmamba_vision.evaluation.retrieval import CSV_COLUMNS
from matmamba_vision.flags import GranularityList, parse_flags, run_script


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    add_common_args(p)
    p.add_argument("--db-split", default="train", help=f"database split: {SPLITS_HELP} (default: %(default)s)")
    p.add_argument("--query-split", default="val", help=f"query split: {SPLITS_HELP} (default: %(default)s)")
    p.add_argument(
        "--db-granularities",
        nargs="*",
        action=GranularityList,
        default=None,
        help="database granularities (default: full width); several give the full matrix",
    )
    p.add_argument(
        "--query-granularities",
        "--granularities",
        nargs="*",
        action=GranularityList,
        default=None,
        help="query granularities (default: the trained levels)",
    )
    p.add_argument(
        "--cache-dir",
        default="output/embedding_cache",
        help="embedding cache folder ('' disables the cache; default: %(default)s)",
    )
    p.add_argument(
        "--knn-backend",
        default="auto",
        choices=KNN_BACKENDS,
        help="exact search with faiss or torch ('auto': faiss when installed)",
    )
    p.add_argument(
        "--knn-index",
        default="Flat",
        help="'Flat' = exact (default); any faiss index_factory string "
        "(e.g. HNSW32, IVF1024,Flat) for approximate search",
    )
    p.add_argument(
        "--baseline-checkpoints",
        nargs="*",
        default=[],
        metavar="[LABEL=]PATH",
        help="separately trained models (weights file for --model, or a save_model_dir folder) "
        "embedding queries against the full model's database and against their own",
    )
    add_adaptive_args(p)
    return parse_flags(p, argv)


def main(argv=None) -> list:
    args = parse_args(argv)
    kind = resolve_dataset(args.dataset, args.data_dir)
    check_split(kind, args.db_split)
    check_split(kind, args.query_split)
    if args.db_split == args.query_split:
        raise ValueError(
            f"--db-split and --query-split are both {args.db_split!r}: every query would retrieve itself; "
            "name two different splits"
        )
    if splits_overlap(args.db_split, args.query_split):
        raise ValueError(
            f"--db-split {args.db_split!r} and --query-split {args.query_split!r} share images: those queries "
            "would retrieve themselves; name two disjoint splits (e.g. minitrain and minival, or train and val)"
        )
    start = time.perf_counter()
    backend = resolve_backend(args.knn_backend)
    if args.knn_index != "Flat":  # checked before hours of embedding, not after
        if backend != "faiss":
            raise ValueError(f"--knn-index {args.knn_index!r} (approximate) needs --knn-backend faiss, got {backend!r}")
        import faiss

        try:
            faiss.index_factory(8, args.knn_index, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as e:
            raise ValueError(
                f"--knn-index {args.knn_index!r} is not a faiss index_factory string ({str(e).splitlines()[0][:200]})"
            ) from None
    check_adaptive_args(args, backend)
    if args.max_samples is not None and args.max_samples < 10:
        raise ValueError(f"--max-samples must be at least 10 for retrieval (mAP@10 and R@10), got {args.max_samples}")
    device, checkpoint, model, out_dir, data_config, levels = setup_from_args(args)
    full = [int(blk.mixer.max_granularity) for blk in model.layers]
    db_configs = (
        parse_granularities(model, args.db_granularities, levels, "--db-granularities")
        if args.db_granularities
        else uniform_configs(model, [full[0]], levels)
        if len(set(full)) == 1
        else None
    )
    if db_configs is None:
        raise ValueError("--db-granularities: the model's blocks differ in width; name the database granularity")
    query_configs = parse_granularities(model, args.query_granularities, levels, "--query-granularities")
    baselines = []
    for spec in args.baseline_checkpoints:
        label, bmodel, bfile = build_baseline(args, spec)
        baselines.append(Baseline(label, bmodel.to(device), bfile.sha256 if bfile else state_dict_sha256(bmodel)))
    weights = checkpoint.sha256 if checkpoint is not None else state_dict_sha256(model)
    model_identity = dict(model=args.model, model_args=model.model_args, weights=weights)
    db_ident = data_identity(args.dataset, args.data_dir, args.db_split, data_config)
    query_ident = data_identity(args.dataset, args.data_dir, args.query_split, data_config)
    cache = EmbeddingCache(args.cache_dir or None)
    db_index = None
    if args.index_dir:
        if len(db_configs) != 1:
            raise ValueError("--index-dir holds one database granularity; name one with --db-granularities")
        db_index = open_database_index(
            args,
            model,
            db_configs[0],
            model_identity,
            db_ident,
            cache,
            lambda: loader_from_args(args, args.db_split, data_config),
            device=str(device),
            amp_dtype=amp_dtype_from_args(args),
        )
    reads_db = db_index is None or needs_database_images(args)
    db_loader = loader_from_args(args, args.db_split, data_config) if reads_db else db_index.loader_stub
    query_loader = loader_from_args(args, args.query_split, data_config)
    limit = "" if args.max_samples is None else f", {args.max_samples} of each, spread"
    print(
        f"{args.model}: database {args.db_split} ({getattr(db_loader, 'num_samples', '?')} images) at "
        f"{[c.name for c in db_configs]}, queries {args.query_split} "
        f"({getattr(query_loader, 'num_samples', '?')}) at {[c.name for c in query_configs]}{limit}; "
        f"kNN {backend} {args.knn_index}",
        flush=True,
    )
    rows = run_retrieval(
        model,
        db_loader,
        query_loader,
        db_configs,
        query_configs,
        model_identity,
        db_ident,
        query_ident,
        cache,
        baselines=baselines,
        backend=backend,
        device=str(device),
        amp_dtype=amp_dtype_from_args(args),
        max_samples=args.max_samples,
        index=args.knn_index,
        share_prefix=not args.no_prefix_sharing,
        img_size=tuple(data_config["input_size"][1:]),
        db_index=db_index,
    )
    seconds = time.perf_counter() - start
    meta = dict(
        model=args.model,
        checkpoint=args.checkpoint or None,
        checkpoint_sha256=weights if args.checkpoint else None,
        pretrained=args.pretrained,
        dataset=args.dataset,
        data_dir=args.data_dir,
        db_split=args.db_split,
        query_split=args.query_split,
        data_config=data_config,
        knn_backend=backend,
        knn_index=args.knn_index,
        max_samples=args.max_samples,
        seconds=seconds,
        device=str(device),
        cache_dir=str(Path(args.cache_dir).resolve()) if args.cache_dir else None,
    )
    print()
    print(retrieval_table(rows), flush=True)  # shown before the files are written
    paths = write_retrieval_outputs(
        rows, out_dir, meta, title=f"{args.model}: {args.query_split} queries vs {args.db_split} database"
    )
    if args.results_file:
        write_results_file(args.results_file, rows, meta, CSV_COLUMNS)
    paths.update(
        run_adaptive(
            args,
            model,
            levels,
            max(db_configs, key=lambda c: sum(c.dims)),
            db_loader,
            query_loader,
            model_identity,
            db_ident,
            cache,
            backend,
            str(device),
            amp_dtype_from_args(args),
            tuple(data_config["input_size"][1:]),
            out_dir,
            meta,
            database=db_index,
        )
    )
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}  ({seconds:.1f} s)")
    return rows


if __name__ == "__main__":
    run_script(main)  # bad flags or data: one clear line, no traceback, exit 2
