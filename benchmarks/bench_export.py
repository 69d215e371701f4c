"""Issue 15: exported submodels in ONNX Runtime vs PyTorch eager, in one process (CPU, fp32).

For the demo model (Fashion-MNIST recipe, 28 px) and MatMamba-Vision-35M (224 px), each of D, D/2, D/4, D/8 is
exported with ``export_model`` (verified) and its ONNX Runtime session timed against the same submodel in eager
PyTorch (its default fast CPU paths), interleaved, at batch 1 and 8. Prints the file sizes, per-case
img/s, and the ratio lines for the issue's goals (random weights: speed does not depend on them).

    python benchmarks/bench_export.py [--rounds 5] [--models demo 35m]
"""

from __future__ import annotations

import json
import os
import tempfile

import onnxruntime as ort
import timm
import torch
from _common import arg_parser, header, interleaved, ratio_line, setup, stats

import matmamba_vision
from matmamba_vision.export import export_model

MODELS = {
    "demo": ("matmamba_vision_tiny_patch4_28", dict(patch_size=7, embed_dim=128, depth=4, d_state=16, headdim=16)),
    "35m": ("matmamba_vision_35m_patch16_224", {}),
}


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = arg_parser(__doc__, rounds=5)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    setup(args.threads)
    header(f"ONNX Runtime {ort.__version__} ({args.threads} intra-op threads) vs PyTorch eager, exported submodels")
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        for key in args.models:
            run_model(key, tmp, args)


def run_model(key: str, tmp: str, args) -> None:
    """Export each trained level of one model, time ORT against eager, print the rows and the ratio lines."""
    name, kwargs = MODELS[key]
    model = timm.create_model(name, **kwargs).eval()
    c, h, w = model.in_chans, *model.patch_embed.img_size
    print(f"\n## {key}: {name} {kwargs or ''} ({h}x{w} px)")
    print(
        f"{'g':>5s} {'params':>9s} {'ONNX MB':>8s} {'max rel err':>11s} {'batch':>5s} "
        f"{'ORT img/s best/median':>22s} {'eager img/s best/median':>24s}"
    )
    times = {}
    for g in model.matryoshka_levels:
        path = os.path.join(tmp, f"{key}_g{g}.onnx")
        export_model(model, path, granularity=g, sidecar=True, metadata={"bench": key})
        with open(path + ".json") as f:
            info = json.load(f)
        sub = matmamba_vision.extract_submodel(model, g).eval()
        session = _session(path, args.threads)
        for b in args.batches:
            x = torch.randn(b, c, h, w)
            feed = {"input": x.numpy()}
            with torch.inference_mode():
                t = interleaved({"ort": lambda: session.run(None, feed), "eager": lambda: sub(x)}, args.rounds)
            times[(g, b)] = t
            so, se = stats(t["ort"]), stats(t["eager"])
            print(
                f"{g:5d} {info['params']:9d} {info['bytes'] / 1e6:8.2f} "
                f"{info['verification']['max_relative_error']:11.1e} {b:5d} "
                f"{b / so['min']:10.2f} /{b / so['median']:9.2f}  {b / se['min']:11.2f} /{b / se['median']:10.2f}",
                flush=True,
            )
    levels = model.matryoshka_levels
    for b in args.batches:
        for g in levels:
            print(
                ratio_line(
                    f"{key} b{b} g={g}: ORT speed vs eager",
                    times[(g, b)]["ort"],
                    times[(g, b)]["eager"],
                    ">= 0.8x (ORT within 1.25x of eager)",
                )
            )
        print(
            ratio_line(
                f"{key} b{b}: ORT g={levels[-1]} speed-up over g={levels[0]}",
                times[(levels[-1], b)]["ort"],
                times[(levels[0], b)]["ort"],
                ">= 4x" if key == "35m" else "(none)",
            )
        )
        print(
            ratio_line(
                f"{key} b{b}: eager g={levels[-1]} speed-up over g={levels[0]}",
                times[(levels[-1], b)]["eager"],
                times[(levels[0], b)]["eager"],
                "(reference)",
            )
        )


if __name__ == "__main__":
    main()
