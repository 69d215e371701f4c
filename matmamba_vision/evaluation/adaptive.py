"""retrieval.py's adaptive modes: its flags, the persistent index, the cascade and shortlist/rerank runs.

- ``--cascade 16,32,64,128``: per-query escalation (:mod:`.cascade`), a threshold sweep -> ``cascade.{csv,json,png}``;
- ``--rerank [K ...]``: shortlist at ``--shortlist-granularity`` (default D/8), rerank at full width
  (:mod:`.rerank`) -> ``rerank.{csv,json}``;
- ``--index-dir DIR``: the full-width database as a faiss index (``--knn-index``), built once and reused
  (:mod:`.knn_index`); a query-only run against it reads no database image.
"""

from __future__ import annotations

import argparse
import math
import types
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

import torch

from ..flags import positive_int
from ..models.matmamba_vision import MatMambaVision
from .cascade import cascade_table, run_cascade, write_cascade_outputs
from .embeddings import EmbeddingCache, EmbeddingSet, embed_splits
from .knn_index import ExactDatabase, FaissDatabase, index_key, open_index
from .rerank import RERANK_KS, rerank_table, run_rerank, write_rerank_outputs
from .retrieval import build_faiss_index
from .submodels import SubmodelConfig, parse_granularities

__all__ = ["add_adaptive_args", "check_adaptive_args", "open_database_index", "needs_database_images", "run_adaptive"]


def add_adaptive_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = parser.add_argument_group("adaptive retrieval")
    g.add_argument(
        "--cascade",
        default="",
        metavar="G,G,...",
        help="per-query cascade over these query granularities, cheapest first (e.g. 16,32,64,128): a query "
        "escalates while its class margin is below the threshold; writes cascade.csv/json/png",
    )
    g.add_argument(
        "--cascade-thresholds",
        type=float,
        nargs="+",
        default=None,
        metavar="T",
        help="class-margin thresholds to sweep (default: the first batch's margin deciles at the first "
        "granularity, and inf)",
    )
    g.add_argument(
        "--rerank",
        type=positive_int,
        nargs="*",
        default=None,
        metavar="K",
        help=f"shortlist K candidates cheaply, rerank them at full width (no value: {' '.join(map(str, RERANK_KS))})"
        "; writes rerank.csv/json",
    )
    g.add_argument(
        "--shortlist-granularity",
        type=positive_int,
        default=None,
        help="granularity of the shortlist's query and database (default: the smallest trained, D/8)",
    )
    g.add_argument(
        "--shortlist-dim",
        type=positive_int,
        default=None,
        help="search the shortlist on the first N embedding coordinates only (default: all D)",
    )
    g.add_argument(
        "--index-dir",
        default="",
        help="keep the full-width database as a faiss index (--knn-index) in this folder: built once, reused "
        "when model weights, granularity, split and faiss version match, refused otherwise",
    )
    return parser


def check_adaptive_args(args: argparse.Namespace, backend: str) -> None:
    """Checks that need no model: ValueError naming the flag."""
    if args.index_dir and backend != "faiss":
        raise ValueError(f"--index-dir needs --knn-backend faiss (faiss installed), got {backend!r}")
    if args.index_dir and Path(args.index_dir).exists() and not Path(args.index_dir).is_dir():
        raise ValueError(f"--index-dir {args.index_dir} is a file; name a folder")
    if args.cascade_thresholds and any(math.isnan(t) for t in args.cascade_thresholds):
        raise ValueError(f"--cascade-thresholds must be numbers, got {args.cascade_thresholds}")
    if args.cascade_thresholds and not args.cascade:
        raise ValueError("--cascade-thresholds needs --cascade")
    if (args.shortlist_granularity or args.shortlist_dim) and args.rerank is None:
        raise ValueError("--shortlist-granularity and --shortlist-dim need --rerank")
    if args.rerank is not None and any(k < 10 for k in args.rerank):
        raise ValueError(f"--rerank: every K must be at least 10 (mAP@10), got {args.rerank}")


def needs_database_images(args: argparse.Namespace) -> bool:
    """Whether a run with a reusable ``--index-dir`` still reads the database split (baselines' own databases,
    the rerank's embeddings; from the embedding cache when they are there)."""
    return bool(args.baseline_checkpoints) or args.rerank is not None


def _precision(amp_dtype: Optional[torch.dtype]) -> str:
    return str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "float32"


def open_database_index(
    args: argparse.Namespace,
    model: MatMambaVision,
    db_config: SubmodelConfig,
    model_identity: Dict[str, Any],
    db_identity: Dict[str, Any],
    cache: EmbeddingCache,
    make_loader: Callable[[], Any],
    device: str = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
) -> FaissDatabase:
    """``--index-dir``: the saved index when its key matches (``model_identity['weights']``, the granularity, the
    split's identity, ``--knn-index``, faiss version), else built from the database embedded at ``db_config``
    (``make_loader()`` is called only then) and saved, with the database's class list. Its ``loader_stub``
    (classes, num_samples) stands for the database loader of a run that reads no database image."""
    key = index_key(
        model_identity["weights"],
        list(db_config.dims),
        dict(db_identity, max_samples=args.max_samples),
        args.knn_index,
        precision=_precision(amp_dtype),
    )
    build_meta: Dict[str, Any] = {}

    def database() -> EmbeddingSet:
        loader = make_loader()
        build_meta["classes"] = getattr(loader, "classes", None)
        (emb,) = embed_splits(
            model,
            loader,
            [db_config.dims],
            dict(model_identity, **db_identity),
            cache,
            names=[db_config.name],
            desc="embed database",
            device=device,
            amp_dtype=amp_dtype,
            max_samples=args.max_samples,
            share_prefix=not args.no_prefix_sharing,
        )
        return emb

    db = open_index(args.index_dir, key, database, extra_meta=build_meta)
    db.loader_stub = types.SimpleNamespace(classes=db.meta.get("classes"), num_samples=db.ntotal)
    return db


def _full_width_database(args, model, db_loader, db_config, identity, cache, common, backend, device):
    (emb,) = embed_splits(
        model, db_loader, [db_config.dims], identity, cache, names=[db_config.name], desc="embed database", **common
    )
    if args.knn_index == "Flat":
        return ExactDatabase(emb, backend=backend, device=device)
    return FaissDatabase(build_faiss_index(emb.embeddings, args.knn_index), emb.labels, {"index": args.knn_index})


def run_adaptive(
    args: argparse.Namespace,
    model: MatMambaVision,
    levels: Sequence[int],
    db_config: SubmodelConfig,
    db_loader: Any,
    query_loader: Any,
    model_identity: Dict[str, Any],
    db_identity: Dict[str, Any],
    cache: EmbeddingCache,
    backend: str,
    device: str,
    amp_dtype: Optional[torch.dtype],
    img_size: Any,
    out_dir: Path,
    meta: Dict[str, Any],
    database: Any = None,
) -> Dict[str, Path]:
    """The ``--cascade`` and ``--rerank`` runs against the full-width database (``database``: the index of
    ``--index-dir``; else embedded, from the cache when it is there). Prints their tables; returns the files."""
    paths: Dict[str, Path] = {}
    common = dict(device=device, amp_dtype=amp_dtype, max_samples=args.max_samples)
    ident = dict(model_identity, **db_identity)
    run = dict(device=device, amp_dtype=amp_dtype, max_samples=args.max_samples, img_size=img_size)
    if args.cascade:
        configs = parse_granularities(model, [args.cascade], levels, "--cascade")
        if database is None:
            database = _full_width_database(args, model, db_loader, db_config, ident, cache, common, backend, device)
        rows = run_cascade(model, query_loader, configs, database, thresholds=args.cascade_thresholds, **run)
        print("\n" + cascade_table(rows), flush=True)
        out = write_cascade_outputs(rows, out_dir, dict(meta, cascade=args.cascade), title=f"{args.model}: cascade")
        paths.update({f"cascade_{k}": v for k, v in out.items()})
    if args.rerank is not None:
        g = args.shortlist_granularity or min(levels)  # D/8 for the models trained at D .. D/8
        (short_cfg,) = parse_granularities(model, [g], levels, "--shortlist-granularity")
        short_db, full_db = embed_splits(
            model,
            db_loader,
            [short_cfg.dims, db_config.dims],
            ident,
            cache,
            names=[short_cfg.name, db_config.name],
            desc="embed database",
            **common,
        )
        rows = run_rerank(
            model,
            query_loader,
            short_cfg,
            db_config,
            short_db,
            full_db,
            ks=args.rerank or RERANK_KS,
            shortlist_dim=args.shortlist_dim,
            backend=backend,
            **run,
        )
        print("\n" + rerank_table(rows), flush=True)
        out = write_rerank_outputs(rows, out_dir, dict(meta, shortlist_granularity=g))
        paths.update({f"rerank_{k}": v for k, v in out.items()})
    return paths
