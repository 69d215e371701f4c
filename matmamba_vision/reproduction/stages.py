"""The plan of one ``make reproduce`` run and the record of its finished stages.

Every model is trained by train.py with the recipe file (``-c``) plus ``train_args``, on the training split minus
a stratified held-out split (``minitrain``; per-epoch validation on ``minival``), and evaluated at its final
weights on the test split. Models of one seed see the same data order (train.py ``--seed``); their initial weights
are written by the plan itself (``init/``), so that what starts from what is explicit:

- ``nested-s{seed}`` and its variants start from ``init/nested-s{seed}``, a model created under ``seed``;
- ``baseline-own-g{g}-s{seed}``: a g-wide model created under its own init seed (:meth:`Plan.own_init_seed`);
- ``baseline-same-g{g}-s{seed}``: the nested model's initial weights sliced to width g.

``stages.json`` holds the plan's record and each finished stage; a rerun with another plan refuses to continue.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import yaml

from ..data.loader import dataset_classes, train_holdout_record
from ..elastic import extract_submodel
from ..training.checkpoint_files import newest_checkpoint, weights_of
from ..training.config import parse_args as parse_train_args
from ..weights import atomic_write, build_model, save_weights

__all__ = ["VARIANTS", "Plan", "Stage", "StageLog", "Runners", "PlanMismatch", "untrained_grid", "final_weights"]

VARIANTS = ("distill", "sample")  # the train.py variants of every run with variants (--distill, --sample-granularities)
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = "minitrain", "minival", "val"  # choices on minival; numbers on the test set

Runner = Callable[[List[str]], Any]


class PlanMismatch(ValueError):
    """The run folder holds stages of another plan."""


@dataclass
class Runners:
    """train.py, validate.py and retrieval.py entry points (``main(argv)``)."""

    train: Runner
    validate: Runner
    retrieval: Runner


@dataclass(frozen=True)
class Stage:
    """One step of the run: ``verb`` (train/validate/retrieval) of model ``model``."""

    verb: str
    model: str

    @property
    def name(self) -> str:
        return f"{self.verb} {self.model}"

    @property
    def cost_key(self) -> str:
        """Stages of one key cost about the same (the ETA's unit): the verb and the model without its seed."""
        return f"{self.verb} {self.model.rsplit('-s', 1)[0]}"

    @property
    def kind_key(self) -> str:
        """The verb and whether the model is nested or a baseline (the ETA's fallback unit)."""
        return f"{self.verb} {self.model.split('-', 1)[0]}"


def final_weights(exp_dir: Path) -> Path:
    """The weights of the last finished epoch in a train.py experiment folder."""
    state = newest_checkpoint(exp_dir)
    if state is None:
        raise ValueError(f"{exp_dir}: no finished training checkpoint")
    return weights_of(state)


def untrained_grid(model, levels: Sequence[int]) -> List[int]:
    """Every valid uniform width from the smallest to the largest trained level, one head-group apart."""
    out = []
    for g in range(min(levels), max(levels) + 1):
        try:
            model.resolve_granularity(g)
        except ValueError:
            continue
        out.append(g)
    return out


def git_commit(repo: Optional[Path] = None) -> Optional[str]:
    """HEAD of the checkout holding this package (``+dirty`` when tracked files differ), or None."""
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@dataclass
class Plan:
    """Names, folders, initial weights and command lines of every stage of one reproduction run."""

    run_dir: Path
    config: str = ""  # train.py -c recipe file
    train_args: List[str] = field(default_factory=list)  # appended to every train.py call
    data_args: List[str] = field(default_factory=list)  # --dataset/--data-dir, for all three scripts
    eval_args: List[str] = field(default_factory=list)  # e.g. --max-samples, for validate/retrieval
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = VARIANTS
    sample_n: int = 2
    commit: Optional[str] = None

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        self.seeds = [int(s) for s in self.seeds]
        self.variants = list(self.variants)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: expected one or more distinct seeds, got {self.seeds}")
        if set(self.variants) - set(VARIANTS):
            raise ValueError(f"variants: valid ones are {list(VARIANTS)}, got {self.variants}")
        args = parse_train_args(self._recipe_argv())
        self.model_name = args.model
        self.dataset, self.data_dir = args.dataset, args.data_dir
        self.model_kwargs = dict(args.model_kwargs)  # parsed by train.py's parser (KEY=VALUE or a YAML mapping)
        self.model_kwargs.setdefault("num_classes", len(dataset_classes(args.dataset, args.data_dir, "train")))
        probe = build_model(self.model_name, **self.model_kwargs)
        self.levels = sorted(args.granularities or probe.matryoshka_levels, reverse=True)
        self.widths = untrained_grid(probe, self.levels)
        self.depth = len(probe.layers)
        self.embed_dim = probe.embed_dim
        self.patches = int(probe.patch_embed.num_patches)
        self.tokens = int(probe.pos_embed.shape[1])  # the sequence the scan sees: the patches and [CLS]
        nested = set(self.seeds)
        for s in self.seeds:
            for g in self.levels:
                if self.own_init_seed(g, s) in nested:
                    raise ValueError(f"seeds: {self.own_init_seed(g, s)} is both a seed and a baseline's init seed")

    def _recipe_argv(self) -> List[str]:
        return [*(["-c", self.config] if self.config else []), *self.data_args, *self.train_args]

    # ------------------------------------------------------------------ the record a rerun must match
    def record(self) -> Dict[str, Any]:
        """What makes two runs the same run (stored in ``stages.json`` and ``results.json``)."""
        return dict(
            model=self.model_name,
            model_kwargs=self.model_kwargs,
            levels=self.levels,
            seeds=self.seeds,
            variants=self.variants,
            sample_n=self.sample_n,
            config=self.config,
            config_text=Path(self.config).read_text() if self.config else "",
            train_args=self.train_args,
            data_args=self.data_args,
            eval_args=self.eval_args,
            commit=self.commit,
        )

    def holdout_record(self) -> Dict[str, Any]:
        """The held-out split the models were trained without (sizes, seed, per class, index SHA-256)."""
        return train_holdout_record(self.dataset, self.data_dir)

    # ------------------------------------------------------------------ names and folders
    @staticmethod
    def nested(seed: int, variant: str = "") -> str:
        return f"nested{'-' + variant if variant else ''}-s{seed}"

    @staticmethod
    def baseline(g: int, seed: int, init: str = "own") -> str:
        return f"baseline-{init}-g{g}-s{seed}"

    @staticmethod
    def own_init_seed(g: int, seed: int) -> int:
        """The init seed of the own-init baseline of width ``g`` (unique per width and seed)."""
        return 1000 * (seed + 1) + g

    def exp_dir(self, name: str) -> Path:
        return self.run_dir / "train" / name

    def eval_dir(self, name: str) -> Path:
        return self.run_dir / "eval" / name

    def init_path(self, name: str) -> Path:
        return self.run_dir / "init" / f"{name}.safetensors"

    def null_partner(self, seed: int) -> Optional[int]:
        """The seed whose nested model's queries go against nested-s{seed}'s database (the null), or None."""
        if len(self.seeds) < 2:
            return None
        return self.seeds[(self.seeds.index(seed) + 1) % len(self.seeds)]

    # ------------------------------------------------------------------ the stages, all known at the start
    def stages(self) -> List[Stage]:
        out: List[Stage] = []
        for s in self.seeds:
            models = [self.nested(s)] + [self.nested(s, v) for v in self.variants]
            models += [self.baseline(g, s, init) for init in ("own", "same") for g in self.levels]
            out += [Stage("train", m) for m in models] + [Stage("validate", m) for m in models]
        for s in self.seeds:
            out += [Stage("retrieval", self.nested(s))] + [Stage("retrieval", self.nested(s, v)) for v in self.variants]
        return out

    def parse_model(self, name: str) -> Dict[str, Any]:
        """kind, variant, seed, width, init of a model name of this plan."""
        head, seed = name.rsplit("-s", 1)
        if head.startswith("baseline-"):
            _, init, g = head.split("-")
            g = int(g[1:])
            init_seed = self.own_init_seed(g, int(seed)) if init == "own" else int(seed)
            return dict(kind="baseline", init=init, width=g, seed=int(seed), init_seed=init_seed)
        variant = head[len("nested-") :] if head.startswith("nested-") else ""
        return dict(kind="nested", variant=variant, seed=int(seed), init="nested", init_seed=int(seed))

    # ------------------------------------------------------------------ initial weights
    def write_init(self, name: str) -> Path:
        """The initial weights of model ``name`` (written once; the same bytes on every call)."""
        path = self.init_path(name)
        if path.is_file():
            return path
        info = self.parse_model(name)
        if info["kind"] == "nested" or info["init"] == "same":
            torch.manual_seed(info["seed"])
            model = build_model(self.model_name, **self.model_kwargs)
            if info["kind"] == "baseline":
                model = extract_submodel(model, info["width"])
        else:
            torch.manual_seed(info["init_seed"])
            model = build_model(self.model_name, **dict(self.model_kwargs, mixer_dims=[info["width"]] * self.depth))
        meta = dict(model=self.model_name, model_kwargs=self.model_kwargs, init=info["init"], seed=info["init_seed"])
        return save_weights(model.state_dict(), path, metadata=meta)

    def write_extract(self, name: str, g: int) -> Path:
        """Model ``name``'s trained weights sliced to width ``g`` (the null's queries), as a standalone file."""
        path = self.run_dir / "extract" / f"{name}-g{g}.safetensors"
        if not path.is_file():
            model = build_model(self.model_name, checkpoint=final_weights(self.exp_dir(name)), **self.model_kwargs)
            meta = dict(model=self.model_name, model_kwargs=self.model_kwargs, extracted_from=name, width=g)
            save_weights(extract_submodel(model, g).state_dict(), path, metadata=meta)
        return path

    # ------------------------------------------------------------------ command lines
    def variant_flags(self, variant: str) -> List[str]:
        return {"": [], "distill": ["--distill"], "sample": ["--sample-granularities", str(self.sample_n)]}[variant]

    def train_argv(self, name: str) -> List[str]:
        info = self.parse_model(name)
        exp = self.exp_dir(name)
        if info["kind"] == "nested":
            extra = self.variant_flags(info["variant"])
            init = self.init_path(self.nested(info["seed"]))
        else:
            kwargs = dict(self.model_kwargs, mixer_dims=[info["width"]] * self.depth)
            flow = yaml.safe_dump(kwargs, default_flow_style=True, width=10_000).strip()
            extra = ["--model-kwargs", flow, "--granularities", str(info["width"])]
            init = self.init_path(name)
        argv = [
            *self._recipe_argv(),
            *extra,
            "--train-split",
            TRAIN_SPLIT,
            "--val-split",
            VAL_SPLIT,
            "--initial-checkpoint",
            str(init),
            "--seed",
            str(info["seed"]),
            "--output",
            str(exp.parent),
            "--experiment",
            name,
            "--no-progress",
        ]
        if newest_checkpoint(exp) is not None:  # interrupted: continue from its last finished epoch
            argv += ["--resume", str(exp)]
        return argv

    def validate_argv(self, name: str) -> List[str]:
        info = self.parse_model(name)
        argv = [
            *self.data_args,
            *self.eval_args,
            "--split",
            TEST_SPLIT,
            "--checkpoint",
            str(final_weights(self.exp_dir(name))),
            "--output",
            str(self.eval_dir(name)),
            "--workers",
            "0",
        ]
        if info["kind"] == "nested":
            argv += ["--granularities", *map(str, self.widths)]
            if not info["variant"]:
                argv += ["--mixnmatch", "official"]
        return argv

    def retrieval_baselines(self, name: str) -> List[Tuple[str, int, Path]]:
        """(query model, width, weights) of every separate query model scored against ``name``'s database."""
        info = self.parse_model(name)
        if info["variant"]:
            return []
        s = info["seed"]
        out = [(self.baseline(g, s, init), g, None) for init in ("own", "same") for g in self.levels]
        out = [(m, g, final_weights(self.exp_dir(m))) for m, g, _ in out]
        partner = self.null_partner(s)
        if partner is not None:
            other = self.nested(partner)
            out += [(other, g, self.write_extract(other, g)) for g in self.levels]
        return out

    def retrieval_argv(self, name: str) -> List[str]:
        argv = [
            *self.data_args,
            *self.eval_args,
            "--db-split",
            "train",
            "--query-split",
            TEST_SPLIT,
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
        baselines = self.retrieval_baselines(name)
        if baselines:
            argv += ["--baseline-checkpoints", *[f"{m}@{g}={path}" for m, g, path in baselines]]
        return argv


class StageLog:
    """``stages.json``: the plan's record, every invocation's command, and name -> {seconds, finished} of each
    finished stage (a stage is recorded only after it completed)."""

    def __init__(self, run_dir: Path, plan_record: Dict[str, Any], command: str = ""):
        self.path = Path(run_dir) / "stages.json"
        data = self.check(run_dir, plan_record)
        self.plan = plan_record
        self.commands: List[str] = list(data["commands"]) if data else []
        self.done: Dict[str, Dict[str, Any]] = dict(data["stages"]) if data else {}
        if command:
            self.commands.append(command)
        self._write()

    @staticmethod
    def check(run_dir: Path, plan_record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The ``stages.json`` of ``run_dir`` (None when absent); PlanMismatch when it holds another plan."""
        path = Path(run_dir) / "stages.json"
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or "plan" not in data:
            raise PlanMismatch(f"{path} was written by an older reproduce.py (no plan); use another --output")
        diff = plan_difference(data["plan"], plan_record)
        if diff:
            raise PlanMismatch(f"{run_dir} holds a run with another plan ({diff}); use --new-run or another --output")
        return data

    def _write(self) -> None:
        text = json.dumps(dict(plan=self.plan, commands=self.commands, stages=self.done), indent=2) + "\n"
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def eta(self, remaining: Sequence[Stage]) -> Tuple[Optional[float], int]:
        """(seconds left, stages not counted): each remaining stage costs the mean of the finished stages of its cost
        key, else of those of its verb and kind (nested or baseline); a stage with neither is not yet timed and
        left out of the seconds (a baseline trains in a fraction of the nested model's time, so no guess is made).
        Seconds are None before the first stage finished."""
        if not self.done:
            return None, len(remaining)
        by_key: Dict[str, List[float]] = {}
        for name, rec in self.done.items():
            st = Stage(*name.split(" ", 1))
            for key in (st.cost_key, st.kind_key):
                by_key.setdefault(key, []).append(rec["seconds"])
        total, untimed = 0.0, 0
        for st in remaining:
            seconds = next((by_key[k] for k in (st.cost_key, st.kind_key) if k in by_key), None)
            if seconds is None:
                untimed += 1
            else:
                total += sum(seconds) / len(seconds)
        return total, untimed

    def run(self, index: int, stages: Sequence[Stage], fn: Callable[[], Any], log: Callable[[str], None] = print):
        """Run stage ``stages[index]`` unless it is recorded; True when it ran now."""
        stage = stages[index]
        head = f"[reproduce] stage {index + 1} of {len(stages)}: {stage.name}"
        if stage.name in self.done:
            log(f"{head}: done already ({self.done[stage.name]['seconds']:.0f} s), skipped")
            return False
        eta, untimed = self.eta([s for s in stages[index:] if s.name not in self.done])
        note = ""
        if eta is not None:
            note = f" (ETA of the run: {_minutes(eta)}" + (f" + {untimed} stages not yet timed)" if untimed else ")")
        log(f"{head}: running{note}")
        t0 = time.time()
        fn()
        self.done[stage.name] = {
            "seconds": round(time.time() - t0, 1),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        }
        self._write()
        log(f"{head}: finished in {self.done[stage.name]['seconds']:.0f} s")
        return True


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan_difference(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    """'' when the plans match, else the first differing field, both values shown."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            a, b = (json.dumps(v, default=str)[:120] for v in (old.get(key), new.get(key)))
            return f"{key}: {a} there, {b} now"
    return ""
