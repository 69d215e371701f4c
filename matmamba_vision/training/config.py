"""Command-line flags of train.py (timm's names wherever timm's train.py has one) and ``-c/--config`` YAML.

The defaults are the embedded Fashion-MNIST recipe: ``python train.py`` trains
``matmamba_vision_tiny_patch4_28`` on the CPU. A YAML file sets defaults by flag name (dashes or
underscores); flags given on the command line win, as in timm.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

import yaml

__all__ = ["build_parser", "parse_args", "DEFAULT_MODEL", "DEFAULT_MODEL_KWARGS", "SCHEDULERS"]

DEFAULT_MODEL = "matmamba_vision_tiny_patch4_28"
# The embedded CPU recipe (issue 17): cycle mode (the official schedule: each width trains on its own quarter of
# the batch, so a step costs about a quarter of a sum-mode step on the same batch), batch 512 and lr 4e-3.
# The recipe's model: the tiny model at patch 7 (16 tokens), which trains ~2x faster than at
# patch 4 on 2 cores; applied only to DEFAULT_MODEL when --model-kwargs is not given. Checkpoints record
# the kwargs, so validate.py / retrieval.py rebuild the same model.
DEFAULT_MODEL_KWARGS = "{patch_size: 7, embed_dim: 128, depth: 4, d_state: 16, headdim: 16}"


# timm's create_scheduler_v2 names (an unknown name there silently means no schedule), and none for that
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt", "none")


def _ints(text: str) -> List[int]:
    try:
        return [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas or spaces, got {text!r}") from None


def _checked(kind, ok, valid: str):
    """An argparse type: ``kind(text)`` that must satisfy ``ok``, else an error saying it must be ``valid``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {valid}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {valid}, got {text!r}")
        return value
    parse.__name__ = valid
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Matryoshka training of MatMamba-Vision models (timm-style flags).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", default="", help="YAML file of defaults (keys are flag names)")
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="", help="'' (Fashion-MNIST without --data-dir, folder with it), "
                   "'fmnist', 'folder' or 'ffcv'")
    d.add_argument("--data-dir", default=None, help="folder with train/ and val/ (or the .beton files for ffcv)")
    d.add_argument("--train-split", default="train")
    d.add_argument("--val-split", default="val")
    d.add_argument("-j", "--workers", type=int, default=0, help="data loader processes per rank")
    d.add_argument("--skip-corrupt", action="store_true", help="skip (and log) images that fail to decode")
    m = p.add_argument_group("model")
    m.add_argument("--model", default=DEFAULT_MODEL)
    m.add_argument("--pretrained", action="store_true", help="start from the model's published weights")
    m.add_argument("--initial-checkpoint", default="", help="weights to start from (ours or official)")
    m.add_argument("--resume", default="", help="state file, weights file or experiment folder to continue")
    m.add_argument("--num-classes", type=int, default=None, help="default: the number of class folders")
    m.add_argument("--img-size", type=int, default=None)
    m.add_argument("--in-chans", type=int, default=None)
    m.add_argument("--drop", type=float, default=0.0, help="dropout before the head")
    m.add_argument("--proj-drop", type=float, default=0.0, help="dropout on the mixers' in/out projections")
    m.add_argument("--drop-path", type=float, default=0.0, help="stochastic depth (linear over depth)")
    m.add_argument("--head-init-bias", type=float, default=None, help="initial value of the head's bias")
    m.add_argument("--model-kwargs", default=None,
                   help=f"extra create_model kwargs as YAML, e.g. '{{depth: 2}}' (default for {DEFAULT_MODEL}: "
                   f"{DEFAULT_MODEL_KWARGS}; none for other models)")
    t = p.add_argument_group("Matryoshka")
    t.add_argument("--granularities", type=_ints, nargs="+", default=None,
                   help="trained g values, e.g. 128 64 or 128,64; default D, D/2, D/4, D/8")
    t.add_argument("--matryoshka-mode", choices=("sum", "cycle"), default="cycle",
                   help="sum: every g on each batch, averaged; cycle: one g per micro-batch, one step per cycle")
    t.add_argument("--distill", action="store_true",
                   help="in-place distillation: the widest trained g's logits teach the narrower ones")
    t.add_argument("--distill-weight", type=_checked(float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
                   default=0.5, help="--distill: loss = (1 - w) label CE + w KD for every narrower width")
    t.add_argument("--distill-temperature", type=_checked(float, lambda v: 0 < v < float("inf"), "a positive number"),
                   default=1.0, help="--distill: softmax temperature of teacher and student (KD scaled by T^2)")
    t.add_argument("--sample-granularities", type=_checked(int, lambda v: v >= 0, "an integer >= 0"), default=0,
                   metavar="N", help="each step also trains N random untrained valid widths between the "
                   "smallest and largest trained g")
    t.add_argument("--best-granularity", type=int, default=None, help="g whose val top-1 picks the best model")
    o = p.add_argument_group("optimisation")
    o.add_argument("-b", "--batch-size", type=int, default=512,
                   help="GLOBAL batch per optimiser step, split over ranks and --grad-accum-steps")
    o.add_argument("-vb", "--validation-batch-size", type=int, default=None, help="per rank; default 2x per-rank batch")
    o.add_argument("--grad-accum-steps", type=int, default=1)
    o.add_argument("--epochs", type=int, default=8)
    o.add_argument("--opt", default="adamw")
    o.add_argument("--opt-eps", type=float, default=None)
    o.add_argument("--opt-betas", type=float, nargs="+", default=None)
    o.add_argument("--momentum", type=float, default=0.9)
    o.add_argument("--lr", type=float, default=4e-3)
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--clip-grad", type=float, default=1.0, help="0 or less: no clipping")
    o.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"))
    o.add_argument("--sched", default="cosine", choices=SCHEDULERS, help="timm's schedulers; none: constant --lr")
    o.add_argument("--sched-on-updates", action=argparse.BooleanOptionalAction, default=True,
                   help="step the schedule every optimiser update (not once per epoch)")
    o.add_argument("--warmup-epochs", type=float, default=0.3)
    o.add_argument("--warmup-lr", type=float, default=1e-5)
    o.add_argument("--warmup-prefix", action="store_true")
    o.add_argument("--min-lr", type=float, default=1e-5)
    o.add_argument("--decay-epochs", type=float, default=None, help="step: epochs between decays (timm: 90)")
    o.add_argument("--decay-milestones", type=int, nargs="+", default=[90, 180, 270], help="multistep: decay epochs")
    o.add_argument("--decay-rate", "--dr", type=float, default=0.1, help="step, multistep, plateau: LR factor")
    o.add_argument("--patience-epochs", type=int, default=10, help="plateau: epochs without gain before a decay")
    o.add_argument("--cooldown-epochs", type=int, default=0, help="epochs at --min-lr after the schedule")
    o.add_argument("--lr-cycle-mul", type=float, default=1.0, help="cosine/tanh: cycle length multiplier")
    o.add_argument("--lr-cycle-decay", type=float, default=0.5, help="cosine/tanh: LR factor per cycle")
    o.add_argument("--lr-cycle-limit", type=int, default=1, help="cosine/tanh: number of cycles")
    o.add_argument("--lr-k-decay", type=float, default=1.0, help="cosine/poly: k-decay")
    o.add_argument("--model-ema", action="store_true")
    o.add_argument("--model-ema-decay", type=float, default=0.9998)
    a = p.add_argument_group("augmentation and regularisation")
    a.add_argument("--mixup", type=float, default=0.0)
    a.add_argument("--cutmix", type=float, default=0.0)
    a.add_argument("--mixup-prob", type=float, default=1.0)
    a.add_argument("--mixup-switch-prob", type=float, default=0.5)
    a.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"))
    a.add_argument("--smoothing", type=float, default=0.1)
    a.add_argument("--aa", default=None, help="RandAugment policy, e.g. rand-m9-n2-mstd0.5-inc1")
    a.add_argument("--color-jitter", type=float, default=0.0)
    a.add_argument("--color-jitter-prob", type=float, default=None)
    a.add_argument("--reprob", type=float, default=0.0)
    a.add_argument("--remode", default="pixel", choices=("pixel", "rand", "const"))
    a.add_argument("--recount", type=int, default=1)
    a.add_argument("--scale", type=float, nargs=2, default=None)
    a.add_argument("--ratio", type=float, nargs=2, default=None)
    a.add_argument("--hflip", type=float, default=0.5)
    a.add_argument("--translate", type=int, default=0,
                   help="Fashion-MNIST fast path: random translation by up to this many pixels")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ...; default cuda when available")
    r.add_argument("--amp", action="store_true")
    r.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    r.add_argument("--torchcompile", nargs="?", const="inductor", default=None, help="torch.compile backend")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads per rank")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    r.add_argument("--output", default="output/train")
    r.add_argument("--experiment", default="")
    r.add_argument("--checkpoint-hist", type=int, default=2)
    r.add_argument("--log-interval", type=int, default=50)
    r.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def _config_value(action: argparse.Action, value, path: str):
    """A config file's value for ``action``, checked as the command line would check it (``set_defaults`` applies
    no ``type`` or ``choices``): ValueError naming the key and what it takes."""
    key = action.dest

    def convert(v):
        if action.type is None:
            return v
        if isinstance(v, (bool, list, dict)):
            raise ValueError(f"--config: {path}: {key} takes {getattr(action.type, '__name__', 'a value')}, got {v!r}")
        if action.type in (int, float) and isinstance(v, (int, float)):
            if action.type is int and not float(v).is_integer():
                raise ValueError(f"--config: {path}: {key} takes an integer, got {v!r}")
            return action.type(v)
        try:
            return action.type(str(v))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"--config: {path}: {key}: {e}") from None

    if value is None:
        return None
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ValueError(f"--config: {path}: {key} takes true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        values = value if isinstance(value, list) else [value] if action.type is _ints else None
        if values is None:
            raise ValueError(f"--config: {path}: {key} takes a list, got {value!r}")
        values = [convert(v) for v in values]
        if isinstance(action.nargs, int) and len(values) != action.nargs:
            raise ValueError(f"--config: {path}: {key} takes {action.nargs} values, got {len(values)}")
        bad = [v for v in values if action.choices is not None and v not in action.choices]
    else:
        if isinstance(value, (list, dict)) and key != "model_kwargs":
            raise ValueError(f"--config: {path}: {key} takes one value, got {value!r}")
        values = convert(value)
        bad = [values] if action.choices is not None and values not in action.choices else []
    if bad:
        raise ValueError(f"--config: {path}: {key} must be one of {list(action.choices)}, got {bad[0]!r}")
    return values


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """Parse ``argv``; a ``-c/--config`` YAML file supplies defaults (unknown keys raise ValueError)."""
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
    args = parser.parse_args(argv)
    if args.granularities is not None:  # '128 64', '128,64' or a YAML list: one flat list
        args.granularities = [g for v in args.granularities for g in (v if isinstance(v, list) else [v])]
    if args.model_kwargs is None:
        args.model_kwargs = DEFAULT_MODEL_KWARGS if args.model == DEFAULT_MODEL else ""
    return args
