#!/usr/bin/env python3
"""Export one submodel of a MatMamba-Vision model to ONNX or a torch.export program, verified before it is kept.

    python export.py --model matmamba_vision_35m_patch16_224 --pretrained --granularity 64 --output mmv35m_g64.onnx
    python export.py --checkpoint output/train/demo/model_best.safetensors --granularity 32 --output demo_g32.onnx
    python export.py --checkpoint CKPT --granularity 128 128 64 64 --format exported-program --output m.pt2
    python export.py --from-results output/eval/RUN/validate.json --max-ms 5 --output best_5ms.onnx

Writes the file and ``FILE.json`` beside it (model args, granularity, input size, mean/std, interpolation, crop,
the file's SHA-256, the verification figure). The export always runs the file (ONNX Runtime on the CPU, or the
loaded program) and compares it with PyTorch; above a relative error of 1e-4 it fails and writes nothing.
With ``--from-results`` (``validate.py --latency``'s file) it exports the most accurate configuration within
``--max-ms``/``--max-memory-mb``/``--max-params``, re-times the file here and records the check in the JSON.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matmamba_vision  # noqa: F401  (registers the models with timm)
from matmamba_vision.evaluation.cli import data_config_from_args, model_from_args, read_checkpoint_from_args
from matmamba_vision.export import (
    DEFAULT_OPSET,
    EXPORT_FORMATS,
    MIN_OPSET,
    ExportVerificationError,
    check_output,
    export_model,
    sidecar_path,
)
from matmamba_vision.flags import GranularityList, add_model_args, parse_flags, positive_fraction, run_script
from matmamba_vision.models.matmamba_vision import DATA_CONFIG_KEYS
from matmamba_vision.selection import add_budget_args, check_exported_choice, choice_from_args, selection_metadata


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = add_model_args(p, model_help="timm model name (default: the one recorded in a train.py checkpoint)")
    model.add_argument("--checkpoint", default="", help="our safetensors checkpoint or an official pytorch_model.bin")
    p.add_argument(
        "--granularity",
        nargs="+",
        action=GranularityList,
        default=None,
        metavar="G",
        help="one g for every block, or one per block (space- or comma-separated); default full width",
    )
    p.add_argument("--format", default="onnx", choices=EXPORT_FORMATS, help="default: %(default)s")
    p.add_argument("--output", "-o", required=True, help="the file to write (and FILE.json beside it)")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, >= {MIN_OPSET} (default: %(default)s)"
    )
    d = p.add_argument_group("preprocessing recorded in the JSON (default: the model's pretrained config)")
    d.add_argument("--mean", type=float, nargs="+", default=None)
    d.add_argument("--std", type=float, nargs="+", default=None)
    d.add_argument("--crop-pct", type=positive_fraction, default=None)
    d.add_argument("--interpolation", default="", choices=("", "bilinear", "bicubic", "nearest"))
    add_budget_args(p)
    # model_from_args (shared with validate.py) checks these evaluation flags; an export has no data loader
    p.set_defaults(batch_size=1, workers=0, max_samples=None)
    args = parse_flags(p, argv)
    if args.checkpoint and args.pretrained:  # the weights: one of the two, or --from-results naming them
        raise ValueError("--checkpoint and --pretrained exclude each other: give one")
    if not (args.checkpoint or args.pretrained or args.from_results):
        raise ValueError("one of --checkpoint, --pretrained or --from-results is required")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    choice = choice_from_args(args)  # --from-results: the configuration, model and weights its results name
    gs = args.granularity  # None: full width; one g for every block, or one per block
    granularity = choice.dims if choice is not None else gs[0] if gs and len(gs) == 1 else gs
    output = Path(args.output)
    if args.format == "onnx" and args.opset < MIN_OPSET:
        raise ValueError(f"--opset must be >= {MIN_OPSET}, got {args.opset}")
    check_output(output, overwrite=args.force, sidecar=True, flag="--output")  # before the model is built
    model = model_from_args(args, read_checkpoint_from_args(args))
    try:
        model.resolve_granularity(granularity)
    except ValueError as e:
        raise ValueError(f"--granularity: {e}") from None
    data_config = data_config_from_args(args, model, check_data=False)  # an export reads no dataset
    metadata = dict(
        model=args.model,
        checkpoint=args.checkpoint or None,
        pretrained=args.pretrained,
        preprocessing={k: data_config.get(k) for k in DATA_CONFIG_KEYS},
        **(selection_metadata(choice, args.from_results) if choice is not None else {}),
    )
    path = export_model(
        model,
        output,
        granularity=granularity,
        format=args.format,
        verify=True,
        overwrite=args.force,
        opset=args.opset,
        sidecar=True,
        metadata=metadata,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {sidecar_path(path)}")
    if choice is not None:
        check = check_exported_choice(path, args.format, choice, repeats=args.retime_repeats)
        print(
            f"chose {choice.name} from {args.from_results}; re-timed here in {check['runtime']}: median "
            f"{check['median_ms']:.4g} ms at batch {check['batch']}, {'meets' if check['meets_budget'] else 'misses'} "
            "the budget"
        )
    return path


if __name__ == "__main__":
    # one clear line, no traceback; exit 2: bad flags or input, 1: the export failed (or onnx is not installed)
    run_script(main, failures=(ModuleNotFoundError, ExportVerificationError))
