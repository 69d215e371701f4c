"""Command-line flags of train.py (timm's names wherever timm's train.py has one) and ``-c/--config`` YAML.

The defaults are the embedded Fashion-MNIST recipe: ``python train.py`` trains
``matmamba_vision_tiny_patch14_28`` (the demo's model, registered under that name) on the CPU. A YAML file sets
defaults by flag name (dashes or underscores); flags given on the command line win, as in timm.
"""

from __future__ import annotations

import argparse
from typing import List, Optional, Tuple

import yaml

from ..argformat import DefaultsHelpFormatter
from ..data.holdout import SPLITS_HELP
from ..flags import (
    FlagType,
    GranularityList,
    ModelKwargs,
    add_model_args,
    compile_backend,
    drop_prob,
    nonneg_float,
    nonneg_int,
    not_nan_float,
    optimizer_name,
    parse_flags,
    parse_granularity_list,
    parse_model_kwargs,
    positive_float,
    positive_fraction,
    positive_int,
    prob,
    seed_int,
)
from ..models.matmamba_vision import DEFAULT_MODEL
from .preemption import signal_name

__all__ = ["build_parser", "parse_args", "check_args", "schedule_flags", "DEFAULT_MODEL", "SCHEDULERS"]


SCHEDULE_GROUP = "learning-rate schedule"
RE_MAX_AREA = FlagType("re_max_area", float, lambda v: 0.02 <= v <= 1, "in [0.02, 1] (the box is 2 % or more)")

# timm's create_scheduler_v2 names (an unknown name there silently means no schedule), and none for that
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Matryoshka training of MatMamba-Vision models (timm-style flags).",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("-c", "--config", default="", help="YAML file of defaults (keys are flag names)")
    d = p.add_argument_group("data")
    d.add_argument(
        "--dataset",
        default="",
        help="'' (Fashion-MNIST without --data-dir, folder with it), 'fmnist', 'folder' or 'ffcv'",
    )
    d.add_argument("--data-dir", default=None, help="folder with train/ and val/ (or the .beton files for ffcv)")
    d.add_argument("--train-split", default="train", help=f"split trained on: {SPLITS_HELP}")
    d.add_argument("--val-split", default="val", help=f"split validated on each epoch: {SPLITS_HELP}")
    d.add_argument("-j", "--workers", type=nonneg_int, default=0, help="data loader processes per rank")
    d.add_argument("--skip-corrupt", action="store_true", help="skip (and log) images that fail to decode")
    m = add_model_args(p, model_default=DEFAULT_MODEL, num_classes_default="the number of class folders", dropout=True)
    m.add_argument("--initial-checkpoint", default="", help="weights to start from (ours or official)")
    m.add_argument(
        "--resume",
        default="",
        help="state file, weights file or experiment folder to continue; 'auto': "
        "the newest checkpoint in --output/--experiment if there is one (else start fresh)",
    )
    m.add_argument("--head-init-bias", type=float, default=None, help="initial value of the head's bias")
    t = p.add_argument_group("Matryoshka")
    t.add_argument(
        "--granularities",
        action=GranularityList,
        nargs="+",
        default=None,
        help="trained g values, e.g. 128 64 or 128,64; default D, D/2, D/4, D/8",
    )
    t.add_argument(
        "--matryoshka-mode",
        choices=("sum", "cycle"),
        default="sum",
        help="sum: every g on each batch, averaged; cycle: one g per micro-batch, one step per cycle",
    )
    t.add_argument(
        "--distill",
        action="store_true",
        help="in-place distillation: the widest trained g's logits teach the narrower ones",
    )
    t.add_argument(
        "--distill-weight",
        type=prob,
        default=0.5,
        help="--distill: loss = (1 - w) label CE + w KD for every narrower width",
    )
    t.add_argument(
        "--distill-temperature",
        type=positive_float,
        default=1.0,
        help="--distill: softmax temperature of teacher and student (KD scaled by T^2)",
    )
    t.add_argument(
        "--sample-granularities",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="each step also trains N random untrained valid widths between the smallest and largest trained g",
    )
    t.add_argument("--best-granularity", type=int, default=None, help="g whose val top-1 picks the best model")
    o = p.add_argument_group("optimisation")
    o.add_argument(
        "-b",
        "--batch-size",
        type=positive_int,
        default=256,
        help="GLOBAL batch per optimiser step, split over ranks and --grad-accum-steps",
    )
    o.add_argument(
        "-vb", "--validation-batch-size", type=positive_int, default=None, help="per rank; default 2x per-rank batch"
    )
    o.add_argument("--grad-accum-steps", type=positive_int, default=1)
    o.add_argument("--opt", type=optimizer_name, default="adamw", help="a timm optimizer name")
    o.add_argument("--opt-eps", type=positive_float, default=None)
    o.add_argument("--opt-betas", type=float, nargs="+", default=None)
    o.add_argument("--momentum", type=prob, default=0.9)
    o.add_argument("--weight-decay", type=nonneg_float, default=0.05)
    o.add_argument("--clip-grad", type=not_nan_float, default=1.0, help="0 or less: no clipping")
    o.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"))
    o.add_argument("--model-ema", action="store_true")
    o.add_argument("--model-ema-decay", type=prob, default=0.9998)
    # the schedule's flags: timm's scheduler_kwargs reads them; a resume reports those that changed
    s = p.add_argument_group(SCHEDULE_GROUP)
    s.add_argument("--epochs", type=positive_int, default=8)
    s.add_argument("--lr", type=positive_float, default=3e-3)
    s.add_argument("--sched", default="cosine", choices=SCHEDULERS, help="timm's schedulers; none: constant --lr")
    s.add_argument(
        "--sched-on-updates",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="step the schedule every optimiser update (not once per epoch)",
    )
    s.add_argument("--warmup-epochs", type=nonneg_float, default=0.3)
    s.add_argument("--warmup-lr", type=nonneg_float, default=1e-5)
    s.add_argument("--warmup-prefix", action="store_true")
    s.add_argument("--min-lr", type=nonneg_float, default=1e-5, help="at most --lr")
    s.add_argument("--decay-epochs", type=positive_float, default=None, help="step: epochs between decays (timm: 90)")
    s.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270], help="multistep: decay epochs")
    s.add_argument("--decay-rate", "--dr", type=positive_float, default=0.1, help="step, multistep, plateau: LR factor")
    s.add_argument("--patience-epochs", type=nonneg_int, default=10, help="plateau: epochs without gain before a decay")
    s.add_argument("--cooldown-epochs", type=nonneg_int, default=0, help="epochs at --min-lr after the schedule")
    s.add_argument("--lr-cycle-mul", type=positive_float, default=1.0, help="cosine/tanh: cycle length multiplier")
    s.add_argument("--lr-cycle-decay", type=positive_float, default=0.5, help="cosine/tanh: LR factor per cycle")
    s.add_argument("--lr-cycle-limit", type=positive_int, default=1, help="cosine/tanh: number of cycles")
    s.add_argument("--lr-k-decay", type=positive_float, default=1.0, help="cosine/poly: k-decay")
    a = p.add_argument_group("augmentation and regularisation")
    a.add_argument("--mixup", type=nonneg_float, default=0.0)
    a.add_argument("--cutmix", type=nonneg_float, default=0.0)
    a.add_argument("--mixup-prob", type=prob, default=1.0)
    a.add_argument("--mixup-switch-prob", type=prob, default=0.5)
    a.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"))
    a.add_argument("--smoothing", type=drop_prob, default=0.1)
    a.add_argument(
        "--aa",
        default=None,
        help="RandAugment: a timm policy, e.g. rand-m9-n2-mstd0.5-inc1, or "
        "'official' (the official run's: 2 ops, magnitude 9, its quirks kept; folder and ffcv) or "
        "'official-fixed' (TranslateY and Equalize corrected)",
    )
    a.add_argument("--color-jitter", type=nonneg_float, default=0.0)
    a.add_argument("--color-jitter-prob", type=prob, default=None)
    a.add_argument("--reprob", type=prob, default=0.0)
    a.add_argument("--remode", default="pixel", choices=("pixel", "rand", "const"))
    a.add_argument("--recount", type=positive_int, default=1)
    a.add_argument(
        "--re-max-area",
        type=RE_MAX_AREA,
        default=1 / 3,
        help="random erasing: largest box as a fraction of the image (official run: 0.3)",
    )
    a.add_argument("--scale", type=positive_fraction, nargs=2, default=None, help="RandomResizedCrop area range")
    a.add_argument("--ratio", type=positive_float, nargs=2, default=None, help="RandomResizedCrop aspect range")
    a.add_argument("--hflip", type=prob, default=0.5)
    a.add_argument(
        "--translate",
        type=nonneg_int,
        default=0,
        help="Fashion-MNIST fast path: random translation by up to this many pixels",
    )
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default cuda when available")
    r.add_argument("--amp", action="store_true")
    r.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    r.add_argument(
        "--torchcompile", type=compile_backend, nargs="?", const="inductor", default=None, help="torch.compile backend"
    )
    r.add_argument("--threads", type=nonneg_int, default=None, help="torch CPU threads per rank (0: torch's default)")
    r.add_argument("--seed", type=seed_int, default=42)
    r.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    r.add_argument("--output", default="output/train")
    r.add_argument("--experiment", default="")
    r.add_argument("--checkpoint-hist", type=positive_int, default=2)
    r.add_argument(
        "--checkpoint-interval-steps",
        type=nonneg_int,
        default=0,
        help="also checkpoint inside epochs every N optimiser steps (0: only at epoch ends)",
    )
    r.add_argument(
        "--checkpoint-interval-minutes",
        type=nonneg_float,
        default=0.0,
        help="also checkpoint inside epochs when this many minutes passed since the last one (0: off)",
    )
    r.add_argument(
        "--preempt-signal",
        type=signal_name,
        nargs="*",
        default=[],
        help="signals handled like SIGTERM (checkpoint, then exit 75), e.g. SIGUSR1",
    )
    r.add_argument(
        "--preempt-deadline",
        type=positive_float,
        default=25.0,
        help="seconds from a preemption signal to exit; past it the previous checkpoint is kept (exit 76)",
    )
    r.add_argument("--log-interval", type=positive_int, default=50)
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def _config_value(action: argparse.Action, value, path: str):
    """A config file's value for ``action``, checked by the function that checks the flag (``set_defaults``
    applies no ``type`` or ``choices``): ValueError naming the key and what it takes."""
    key = action.dest
    base = getattr(action.type, "base", action.type)

    def convert(v):
        if action.type is None:
            return v
        if isinstance(v, (bool, list, dict)):
            raise ValueError(f"--config: {path}: {key} takes {getattr(base, '__name__', 'a value')}, got {v!r}")
        if base in (int, float) and isinstance(v, (int, float)):
            if base is int and not float(v).is_integer():
                raise ValueError(f"--config: {path}: {key} takes an integer, got {v!r}")
            v = base(v)
        try:
            return action.type(v if base in (int, float) else str(v))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"--config: {path}: {key}: {e}") from None

    if value is None:
        return None
    if isinstance(action, ModelKwargs):  # a mapping, a YAML mapping string or a list of KEY=VALUE
        return parse_model_kwargs(value)
    if isinstance(action, GranularityList):  # a list, one number, or '128 64' / '128,64'
        return parse_granularity_list(value, f"--config: {path}: {key}")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ValueError(f"--config: {path}: {key} takes true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        values = value if isinstance(value, list) else None
        if values is None:
            raise ValueError(f"--config: {path}: {key} takes a list, got {value!r}")
        values = [convert(v) for v in values]
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise ValueError(f"--config: {path}: {key} takes {action.nargs} values, got {len(values)}")
        bad = [v for v in values if action.choices is not None and v not in action.choices]
    else:
        if isinstance(value, (list, dict)):
            raise ValueError(f"--config: {path}: {key} takes one value, got {value!r}")
        values = convert(value)
        bad = [values] if action.choices is not None and values not in action.choices else []
    if bad:
        raise ValueError(f"--config: {path}: {key} must be one of {list(action.choices)}, got {bad[0]!r}")
    return values


def _ordered(pair: Optional[List[float]]) -> bool:
    return pair is None or pair[0] <= pair[1]


def check_args(args: argparse.Namespace) -> None:
    """The checks that involve more than one value (each value alone was checked by its flag's type):
    ValueError naming the flag."""
    for flag, value, ok, valid in (
        ("--min-lr", args.min_lr, args.min_lr <= args.lr, "in [0, --lr]"),
        ("--scale", args.scale, _ordered(args.scale), "two numbers 0 < min <= max <= 1"),
        ("--ratio", args.ratio, _ordered(args.ratio), "two numbers 0 < min <= max"),
        # timm's plateau scheduler steps once per epoch, on the validation top-1, and ends its warm-up only at a
        # whole epoch (after a fractional one the LR stays at a warm-up value for good)
        (
            "--sched-on-updates",
            "on",
            args.sched != "plateau" or not args.sched_on_updates,
            "off (--no-sched-on-updates) with --sched plateau",
        ),
        (
            "--warmup-epochs",
            args.warmup_epochs,
            args.sched != "plateau" or float(args.warmup_epochs).is_integer(),
            "a whole number with --sched plateau",
        ),
    ):
        if not ok:
            raise ValueError(f"{flag} must be {valid}, got {value}")


def schedule_flags(parser: Optional[argparse.ArgumentParser] = None) -> Tuple[str, ...]:
    """The ``dest`` names of the learning-rate schedule's flags (those a resume compares with the saved run's)."""
    parser = parser or build_parser()
    group = next(g for g in parser._action_groups if g.title == SCHEDULE_GROUP)
    return tuple(a.dest for a in group._group_actions)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv``; a ``-c/--config`` YAML file supplies defaults (unknown keys raise ValueError). A bad value,
    on the command line or in the file, is a one-line ValueError naming the flag."""
    parser = build_parser()
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("-c", "--config", default="")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        try:
            with open(known.config) as f:
                cfg = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"--config: {known.config} is not valid YAML ({str(e).splitlines()[0]})") from None
        except OSError as e:
            raise ValueError(f"--config: cannot read {known.config}: {e}") from e
        if not isinstance(cfg, dict):
            raise ValueError(f"--config: {known.config} must hold a mapping of flag names to values")
        cfg = {k.replace("-", "_"): v for k, v in cfg.items()}
        actions = {a.dest: a for a in parser._actions}
        unknown = sorted(set(cfg) - set(actions))
        if unknown:
            raise ValueError(f"--config: unknown keys in {known.config}: {unknown}")
        parser.set_defaults(**{k: _config_value(actions[k], v, known.config) for k, v in cfg.items()})
    args = parse_flags(parser, argv)
    if args.model_kwargs is None:
        args.model_kwargs = {}
    check_args(args)
    return args
