"""What validate.py and retrieval.py share: timm-style flags, building the model, data config and loaders, and
the start both make (:func:`setup_from_args`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import torch

from ..data.match import data_channels, data_mismatch_warnings
from ..data.transforms import model_data_config
from ..flags import add_model_args, model_kwargs_from_args, nonneg_int, positive_fraction, positive_int
from ..models.matmamba_vision import DEFAULT_MODEL, MatMambaVision, checkpoint_filter_fn
from ..runtime import check_output_dir, resolve_device
from ..weights import CheckpointFile, build_model, read_checkpoint

__all__ = [
    "add_common_args",
    "model_from_args",
    "data_config_from_args",
    "loader_from_args",
    "resolve_device",
    "amp_dtype_from_args",
    "output_dir_from_args",
    "check_outputs",
    "build_baseline",
    "read_checkpoint_from_args",
    "trained_levels",
    "EvalSetup",
    "setup_from_args",
]


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags both scripts take, named as in timm's validate.py where timm has one (the model's from
    :func:`..flags.add_model_args`; ``--model-kwargs`` add to, and override, those a train.py checkpoint of the
    same model recorded)."""
    g = add_model_args(
        parser, model_help=f"timm model name (default: the one recorded in a train.py checkpoint, else {DEFAULT_MODEL})"
    )
    g.add_argument("--checkpoint", default="", help="our safetensors checkpoint or an official pytorch_model.bin")
    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset",
        default="",
        help="'' (Fashion-MNIST without --data-dir, else an ImageNet-style folder), 'fmnist', 'folder' or 'ffcv'",
    )
    d.add_argument("--data-dir", default=None, help="dataset root (default: the Fashion-MNIST package)")
    d.add_argument("--batch-size", "-b", type=positive_int, default=256)
    d.add_argument("--workers", "-j", type=nonneg_int, default=2)
    d.add_argument(
        "--crop-pct", type=positive_fraction, default=None, help="centre-crop fraction (default: the model's cfg)"
    )
    d.add_argument(
        "--interpolation",
        default="",
        choices=("", "bilinear", "bicubic", "nearest", "random"),
        help="resize interpolation (default: the model's cfg)",
    )
    d.add_argument("--mean", type=float, nargs="+", default=None, help="normalisation mean (default: the model's cfg)")
    d.add_argument("--std", type=float, nargs="+", default=None, help="normalisation std (default: the model's cfg)")
    d.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help="evaluate only N images of each split, spread evenly over it (every class of a class-sorted folder)",
    )
    d.add_argument("--skip-corrupt", action="store_true", help="skip (and log) images that fail to decode")
    r = parser.add_argument_group("run")
    r.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    r.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    r.add_argument("--amp-dtype", default="bfloat16", choices=("float16", "bfloat16"))
    r.add_argument(
        "--output",
        default="",
        help="folder for CSV/JSON/PNG (default: the checkpoint's folder, else output/eval/<model>)",
    )
    r.add_argument("--results-file", default="", help="also write the result rows to this .csv or .json file")
    r.add_argument("--log-freq", type=nonneg_int, default=10, help="batches between progress-bar updates")
    r.add_argument(
        "--no-prefix-sharing",
        action="store_true",
        help="run every configuration as a full forward instead of sharing common leading blocks",
    )
    return parser


def read_checkpoint_from_args(args: argparse.Namespace) -> Optional[CheckpointFile]:
    """``--checkpoint`` read once (weights, train.py's record of model, kwargs and granularities, SHA-256), or
    None without one."""
    return read_checkpoint(args.checkpoint) if args.checkpoint else None


def trained_levels(checkpoint: Optional[CheckpointFile], model: MatMambaVision) -> List[int]:
    """The granularities the checkpoint was trained at (train.py records them), else D, D/2, D/4, D/8."""
    levels = checkpoint.metadata.get("granularities") if checkpoint is not None else None
    if isinstance(levels, list) and levels and all(isinstance(g, int) for g in levels):
        try:
            model.resolve_granularity(max(levels))
            for g in levels:
                model.resolve_granularity(g)
            return sorted(set(levels), reverse=True)
        except ValueError:
            pass
    return model.matryoshka_levels


def model_from_args(args: argparse.Namespace, checkpoint: Optional[CheckpointFile] = None, **extra) -> MatMambaVision:
    """``build_model`` from ``--model/--pretrained`` (+ size flags) and ``checkpoint`` (``--checkpoint`` as
    :func:`read_checkpoint_from_args` read it); eval mode.

    Without ``--model`` the model named in a train.py checkpoint is used, with the kwargs it recorded (when it
    names the same model), updated by ``--model-kwargs`` and the size flags. Sets ``args.model`` to the model
    built.
    """
    if checkpoint is None and not args.pretrained:
        print(
            f"warning: no --checkpoint or --pretrained: {args.model or 'the model'} has random weights",
            file=sys.stderr,
            flush=True,
        )
    meta = checkpoint.metadata if checkpoint is not None else {}
    if not args.model:
        args.model = meta.get("model") or DEFAULT_MODEL
    kwargs: Dict[str, Any] = {}
    if meta.get("model") == args.model and isinstance(meta.get("model_kwargs"), dict):
        kwargs.update(meta["model_kwargs"])  # --model-kwargs and the size flags add to and override these
    kwargs.update(model_kwargs_from_args(args))
    kwargs.update(extra)
    try:
        model = build_model(args.model, pretrained=args.pretrained, checkpoint=checkpoint, **kwargs)
    except TypeError as e:  # timm's contract for unknown create_model kwargs
        raise ValueError(f"--model-kwargs: {e}") from None
    return model.eval()


def build_baseline(args: argparse.Namespace, spec: str) -> tuple:
    """A separately trained model from ``[LABEL=]PATH``: a ``save_model_dir`` folder (config.json) or a weights
    file (read once; model and kwargs as train.py recorded them, else ``--model``; per-block widths read from
    its shapes). Returns (label, model, the :class:`CheckpointFile` or None for a folder)."""
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    p = Path(path)
    label = label or (p.stem if p.is_file() else p.name)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ValueError(f"--baseline-checkpoints: {path} is a folder without config.json")
        return label, build_model(f"local-dir:{p}", pretrained=True).eval(), None
    if not p.is_file():
        raise ValueError(f"--baseline-checkpoints: no such file or folder {path!r}")
    checkpoint = read_checkpoint(p)
    meta = checkpoint.metadata
    name = meta.get("model") or args.model or DEFAULT_MODEL
    kwargs = dict(meta.get("model_kwargs") or {}) if isinstance(meta.get("model_kwargs"), dict) else {}
    kwargs.update(model_kwargs_from_args(args))
    kwargs.pop("mixer_dims", None)
    probe = build_model(name, **kwargs)
    state = checkpoint_filter_fn(dict(checkpoint.state_dict), probe)
    mixer = probe.layers[0].mixer
    dims = []
    for i in range(len(probe.layers)):
        key = f"layers.{i}.mixer.dt_bias"
        if key not in state:
            dims = None
            break
        dims.append(int(state[key].shape[0]) * mixer.headdim // mixer.expand)
    extra = {"mixer_dims": dims} if dims else {}
    return label, build_model(name, checkpoint=checkpoint, **dict(kwargs, **extra)).eval(), checkpoint


def data_config_from_args(args: argparse.Namespace, model: MatMambaVision, check_data: bool = True) -> Dict[str, Any]:
    """timm's data config at the model's own input size (a checkpoint trained at another ``img_size`` builds a
    model of that size), overridden by --crop-pct/--interpolation/--mean/--std when given. With ``check_data``
    (scripts that read a dataset), a one-line warning (stderr) when the evaluated split's images or statistics do
    not fit the model's config."""
    overrides = dict(
        in_chans=model.in_chans,
        img_size=args.img_size,
        crop_pct=args.crop_pct,
        interpolation=args.interpolation or None,
        mean=args.mean,
        std=args.std,
    )
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None and len(values) not in (1, model.in_chans):
            valid = "1 value" if model.in_chans == 1 else f"1 or {model.in_chans} values"
            raise ValueError(f"{flag} needs {valid} (one per input channel), got {len(values)}")
        if values is not None and not all(math.isfinite(v) and (flag == "--mean" or v > 0) for v in values):
            raise ValueError(f"{flag} must be finite{' and positive' if flag == '--std' else ''}, got {values}")
    config = model_data_config(model, overrides)
    if not check_data:
        return config
    split = getattr(args, "split", None) or getattr(args, "query_split", None) or "val"  # validate.py, retrieval.py
    for line in data_mismatch_warnings(model, config, data_channels(args.dataset, args.data_dir, split), split):
        print(f"warning: {line}", file=sys.stderr, flush=True)
    return config


def loader_from_args(args: argparse.Namespace, split: str, data_config: Dict[str, Any]):
    """The data module's evaluation loader for ``split`` (an iterable of (images, targets))."""
    from ..data import create_eval_loader

    return create_eval_loader(
        dataset=args.dataset,
        data_dir=args.data_dir,
        split=split,
        data_config=data_config,
        batch_size=args.batch_size,
        workers=args.workers,
        skip_corrupt=args.skip_corrupt,
        max_samples=args.max_samples,
    )


def amp_dtype_from_args(args: argparse.Namespace) -> Optional[torch.dtype]:
    return getattr(torch, args.amp_dtype) if args.amp else None


def output_dir_from_args(args: argparse.Namespace) -> Path:
    if args.output:
        return Path(args.output)
    if args.checkpoint:
        return Path(args.checkpoint).resolve().parent
    return Path("output") / "eval" / args.model


def check_outputs(args: argparse.Namespace) -> Path:
    """The output folder, ``--results-file``'s folder and retrieval's ``--cache-dir``, probed for writing before
    any evaluation runs: ValueError naming the flag (results are not computed only to be lost). Returns the
    output folder."""
    out = output_dir_from_args(args)
    check_output_dir(out)
    if getattr(args, "cache_dir", ""):
        check_output_dir(Path(args.cache_dir), "--cache-dir")
    if args.results_file:
        if Path(args.results_file).is_dir():
            raise ValueError(f"--results-file {args.results_file} is a folder; name a .csv or .json file")
        folder = Path(args.results_file).resolve().parent
        try:
            check_output_dir(folder)
        except ValueError as e:
            raise ValueError(f"--results-file {args.results_file}: its folder cannot be written ({e})") from None
    return out


class EvalSetup(NamedTuple):
    """What validate.py and retrieval.py start from: :func:`setup_from_args`."""

    device: torch.device
    checkpoint: Optional[CheckpointFile]
    model: MatMambaVision
    out_dir: Path
    data_config: Dict[str, Any]
    levels: List[int]


def setup_from_args(args: argparse.Namespace) -> EvalSetup:
    """The evaluation scripts' start: the device, ``--checkpoint`` read once, the model on the device (eval
    mode), the output folders probed before any evaluation runs, the data config and the trained levels."""
    device = resolve_device(args.device)
    checkpoint = read_checkpoint_from_args(args)
    model = model_from_args(args, checkpoint).to(device)
    out_dir = check_outputs(args)
    data_config = data_config_from_args(args, model)
    return EvalSetup(device, checkpoint, model, out_dir, data_config, trained_levels(checkpoint, model))
