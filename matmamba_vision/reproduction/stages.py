"""The stages of ``make reproduce`` and their record: each finished stage is written to ``stages.json`` in the
run folder (atomically), so a rerun skips it; an interrupted training continues from its last checkpoint.

Every model is trained by train.py with the demo's recipe (its embedded defaults plus ``train_args``) and the
same number of optimiser steps; it is evaluated at its final weights (not a checkpoint picked on the test split).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import timm
import yaml

from ..training.checkpoint_files import newest_checkpoint, weights_of
from ..training.config import parse_args as parse_train_args
from ..weights import atomic_write

__all__ = ["VARIANTS", "Plan", "StageLog", "Runners", "untrained_grid", "final_weights"]

VARIANTS = (
    "distill",
    "sample",
)  # the train.py variants `reproduce.py --variants` adds (--distill, --sample-granularities)

Runner = Callable[[List[str]], Any]


@dataclass
class Runners:
    """train.py, validate.py and retrieval.py entry points (``main(argv)``)."""

    train: Runner
    validate: Runner
    retrieval: Runner


class StageLog:
    """``stages.json``: name -> {seconds, finished}; a stage is recorded only after it completed."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "stages.json"
        self.done: Dict[str, Dict[str, Any]] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, fn: Callable[[], Any], log: Callable[[str], None] = print) -> bool:
        """Run ``fn`` unless ``name`` is recorded; True when it ran now."""
        if name in self.done:
            log(f"[reproduce] {name}: done already ({self.done[name]['seconds']:.0f} s), skipped")
            return False
        log(f"[reproduce] {name}: running")
        t0 = time.time()
        fn()
        self.done[name] = {"seconds": round(time.time() - t0, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        text = json.dumps(self.done, indent=2) + "\n"
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))
        log(f"[reproduce] {name}: finished in {self.done[name]['seconds']:.0f} s")
        return True


def final_weights(exp_dir: Path) -> Path:
    """The weights of the last finished epoch in a train.py experiment folder."""
    state = newest_checkpoint(exp_dir)
    if state is None:
        raise ValueError(f"{exp_dir}: no finished training checkpoint")
    return weights_of(state)


def untrained_grid(model, levels: Sequence[int]) -> List[int]:
    """Every valid uniform width from the smallest to the largest trained level, one head-group apart."""
    lo, hi = min(levels), max(levels)
    out = []
    for g in range(lo, hi + 1):
        try:
            model.resolve_granularity(g)
        except ValueError:
            continue
        out.append(g)
    return out


@dataclass
class Plan:
    """Names, folders and command lines of every stage of one reproduction run."""

    run_dir: Path
    train_args: List[str] = field(default_factory=list)  # appended to every train.py call
    data_args: List[str] = field(default_factory=list)  # --dataset/--data-dir, for all three scripts
    eval_args: List[str] = field(default_factory=list)  # e.g. --max-samples, for validate/retrieval
    sample_n: int = 2

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        args = parse_train_args([*self.data_args, *self.train_args])
        self.model_name = args.model
        self.model_kwargs = dict(args.model_kwargs)  # parsed by train.py's parser (KEY=VALUE or a YAML mapping)
        probe = timm.create_model(self.model_name, **self.model_kwargs)
        self.levels = sorted(args.granularities or probe.matryoshka_levels, reverse=True)
        self.widths = untrained_grid(probe, self.levels)
        self.depth = len(probe.layers)
        self.embed_dim = probe.embed_dim

    # ------------------------------------------------------------------ folders
    def exp_dir(self, name: str) -> Path:
        return self.run_dir / "train" / name

    def eval_dir(self, name: str) -> Path:
        return self.run_dir / "eval" / name

    # ------------------------------------------------------------------ names
    @staticmethod
    def nested(seed: int, variant: str = "") -> str:
        return f"nested{'-' + variant if variant else ''}-s{seed}"

    @staticmethod
    def baseline(g: int, seed: int) -> str:
        return f"baseline-g{g}-s{seed}"

    # ------------------------------------------------------------------ command lines
    def variant_flags(self, variant: str) -> List[str]:
        return {
            "": [],
            "distill": ["--distill"],
            "sample": ["--sample-granularities", str(self.sample_n)],
            "distill-sample": ["--distill", "--sample-granularities", str(self.sample_n)],
        }[variant]

    def train_argv(self, name: str, seed: int, extra: Sequence[str] = ()) -> List[str]:
        exp = self.exp_dir(name)
        argv = [
            *self.data_args,
            *self.train_args,
            *extra,
            "--seed",
            str(seed),
            "--output",
            str(exp.parent),
            "--experiment",
            name,
            "--no-progress",
        ]
        if newest_checkpoint(exp) is not None:  # interrupted: continue from its last finished epoch
            argv += ["--resume", str(exp)]
        return argv

    def nested_train_argv(self, seed: int, variant: str = "") -> List[str]:
        return self.train_argv(self.nested(seed, variant), seed, self.variant_flags(variant))

    def baseline_train_argv(self, g: int, seed: int) -> List[str]:
        """A standalone model whose mixers are g wide (the nested submodel's size), trained at that width."""
        kwargs = dict(self.model_kwargs, mixer_dims=[g] * self.depth)
        flow = yaml.safe_dump(kwargs, default_flow_style=True, width=10_000).strip()
        return self.train_argv(self.baseline(g, seed), seed, ["--model-kwargs", flow, "--granularities", str(g)])

    def validate_argv(self, name: str, widths: Optional[Sequence[int]] = None, mixnmatch: bool = False) -> List[str]:
        argv = [
            *self.data_args,
            *self.eval_args,
            "--checkpoint",
            str(final_weights(self.exp_dir(name))),
            "--output",
            str(self.eval_dir(name)),
            "--workers",
            "0",
        ]
        if widths:
            argv += ["--granularities", *map(str, widths)]
        if mixnmatch:
            argv += ["--mixnmatch", "official"]
        return argv

    def retrieval_argv(self, name: str, baselines: Dict[int, str]) -> List[str]:
        argv = [
            *self.data_args,
            *self.eval_args,
            "--checkpoint",
            str(final_weights(self.exp_dir(name))),
            "--output",
            str(self.eval_dir(name) / "retrieval"),
            "--workers",
            "0",
            "--cache-dir",
            str(self.run_dir / "embedding_cache"),
            "--query-granularities",
            *map(str, self.levels),
        ]
        if baselines:
            argv += [
                "--baseline-checkpoints",
                *[f"g{g}={final_weights(self.exp_dir(b))}" for g, b in sorted(baselines.items(), reverse=True)],
            ]
        return argv
