"""Goal 2: throughput and peak memory at 224-1024 px, batch 1: MatMamba-Vision-35M vs ViT-S/16 (CPU, fp32).

Throughput: both models timed in turn in this process. Peak memory: torch's CPU allocations are invisible
to tracemalloc, so each (model, size) runs in a fresh subprocess that builds the model and input, calls
``malloc_trim``, resets the kernel's resident-set high-water mark (``/proc/self/clear_refs`` <- 5), runs one
forward and reports ``VmHWM - VmRSS(before)``: the extra resident memory the forward needed (activations and
workspace, weights excluded). glibc's allocator makes that figure vary from process to process (figures:
BENCHMARKS.md), so the least of ``--mem-runs`` processes is reported.

    python benchmarks/bench_highres.py [--sizes 224 384 512 768 1024] [--rounds 3] [--mem-runs 3] [--gemm-floor]

``--gemm-floor``: after the table, at the largest size, each model's matrix products timed one by one
(``_common.gemm_floor``) and the ratio 35M would reach if the rest of its work were free.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys

import timm
import torch
from _common import arg_parser, gemm_floor_report, header, interleaved, setup, stats

import matmamba_vision  # noqa: F401

MODELS = {"matmamba_vision_35m": "matmamba_vision_35m_patch16_224", "vit_small": "vit_small_patch16_224"}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def build(name: str, size: int) -> torch.nn.Module:
    return timm.create_model(MODELS[name], img_size=size).eval()


def measure_memory(name: str, size: int, threads: int) -> float:
    """Child process: extra resident MiB during one forward (see module docstring)."""
    setup(threads)
    model, x = build(name, size), torch.randn(1, 3, size, size)
    with torch.inference_mode():
        model(x)  # first call: one-time allocations (oneDNN primitives etc.)
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    base = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    with torch.inference_mode():
        model(x)
    return (_status_kib("VmHWM") - base) / 1024


def _child_memory(name: str, size: int, threads: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--threads", str(threads), "--child", name, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = arg_parser(__doc__, rounds=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512, 768, 1024])
    ap.add_argument("--mem-runs", type=int, default=3, help="fresh processes per memory figure (the least is kept)")
    ap.add_argument("--gemm-floor", action="store_true", help="also time each model's matrix products alone")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_memory(args.child[0], int(args.child[1]), args.threads)))
        return
    setup(args.threads)
    header("High resolution, batch 1: MatMamba-Vision-35M vs ViT-S/16")
    print(
        f"{'px':>5s} {'tokens':>6s} | {'35M img/s best/med':>18s} {'ViT-S img/s best/med':>20s} | "
        f"{'ratio min/med':>13s} | {'35M peak MiB':>12s} {'ViT-S peak MiB':>14s}"
    )
    rows = []
    for size in args.sizes:
        models = {k: build(k, size) for k in MODELS}
        x = torch.randn(1, 3, size, size)
        fns = {k: (lambda m=m: m(x)) for k, m in models.items()}
        with torch.inference_mode():
            t = interleaved(fns, args.rounds)
        if args.gemm_floor and size == max(args.sizes):
            floor = (fns, t)
        del models, fns
        mem = {}
        for k in MODELS:  # the least of --mem-runs fresh processes (the resident set moves with malloc's mood)
            mem[k] = min(_child_memory(k, size, args.threads) for _ in range(args.mem_runs))
        a, v = stats(t["matmamba_vision_35m"]), stats(t["vit_small"])
        r_min, r_med = v["min"] / a["min"], v["median"] / a["median"]
        rows.append((size, r_min, r_med, mem))
        print(
            f"{size:5d} {(size // 16) ** 2 + 1:6d} | {1 / a['min']:8.3f} {1 / a['median']:8.3f} "
            f"{1 / v['min']:10.3f} {1 / v['median']:8.3f} | {r_min:5.2f} {r_med:6.2f} | "
            f"{mem['matmamba_vision_35m']:12.0f} {mem['vit_small']:14.0f}",
            flush=True,
        )
    size, r_min, r_med, mem = rows[-1]
    print(
        f"at {size} px: 35M / ViT-S throughput {r_min:.2f}x (min) / {r_med:.2f}x (median), goal >= 1.3x; "
        f"peak memory {mem['matmamba_vision_35m']:.0f} vs {mem['vit_small']:.0f} MiB, goal lower"
    )
    if args.gemm_floor:
        gemm_floor_report(*floor, "matmamba_vision_35m", "vit_small", ">= 1.3x")


if __name__ == "__main__":
    main()
