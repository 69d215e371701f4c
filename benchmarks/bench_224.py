"""Goal 1: MatMamba-Vision-35M vs timm's vit_small_patch16_224 throughput at 224 px, batch 8 (CPU, fp32).

    python benchmarks/bench_224.py [--rounds 7] [--batch 8] [--compile] [--gemm-floor]

``--compile``: both models wrapped in ``torch.compile`` with the same settings (inductor, its CPU C++
backend, default mode); the first call of each (the compilation) is timed and printed separately, then
the compiled models are timed as in eager. Figures from this mode are "with torch.compile", not eager.
``--gemm-floor``: also each model's matrix products timed one by one (``_common.gemm_floor``), and the ratio
35M would reach if the rest of its work were free: the ceiling for this goal on this machine.
"""

from __future__ import annotations

import time

import timm
import torch
from _common import arg_parser, gemm_floor_report, header, interleaved, ratio_line, setup, stats

import matmamba_vision  # noqa: F401  (registers the models)


def main() -> None:
    ap = arg_parser(__doc__, rounds=7, batch=8)
    ap.add_argument("--compile", action="store_true", help="torch.compile both models (inductor, CPU C++)")
    ap.add_argument("--gemm-floor", action="store_true", help="also time each model's matrix products alone")
    args = ap.parse_args()
    setup(args.threads)
    header(
        "224 px throughput: MatMamba-Vision-35M vs ViT-S/16" + (" (both with torch.compile)" if args.compile else "")
    )
    models = {
        "matmamba_vision_35m": timm.create_model("matmamba_vision_35m_patch16_224").eval(),
        "vit_small_patch16_224": timm.create_model("vit_small_patch16_224").eval(),
    }
    x = torch.randn(args.batch, 3, 224, 224)
    if args.compile:
        models = {k: torch.compile(m, backend="inductor") for k, m in models.items()}
        with torch.inference_mode():
            for k, m in models.items():
                t0 = time.perf_counter()
                m(x)
                print(f"# compile (first call) {k}: {time.perf_counter() - t0:.1f} s")
    fns = {k: (lambda m=m: m(x)) for k, m in models.items()}
    with torch.inference_mode():
        times = interleaved(fns, args.rounds)
    print(f"{'model':24s} {'img/s (best)':>12s} {'img/s (median)':>14s} {'s/batch min':>11s} {'median':>8s}")
    for k, ts in times.items():
        s = stats(ts)
        print(
            f"{k:24s} {args.batch / s['min']:12.2f} {args.batch / s['median']:14.2f} "
            f"{s['min']:11.3f} {s['median']:8.3f}"
        )
    print(ratio_line("35M / ViT-S throughput", times["matmamba_vision_35m"], times["vit_small_patch16_224"], ">= 0.6x"))
    if args.gemm_floor and not args.compile:
        gemm_floor_report(fns, times, "matmamba_vision_35m", "vit_small_patch16_224", ">= 0.6x")


if __name__ == "__main__":
    main()
