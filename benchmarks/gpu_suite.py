"""GPU benchmark suite for one H200-class device (<= ~5 minutes); ``--device cpu --quick`` is a smoke run.

1. Correctness: the 35M model on the device (fp32, and bf16 autocast; torch backend and, when importable,
   mamba_ssm's kernel) vs the CPU fp32 reference on the same weights and images.
2. bf16 inference img/s and peak memory at batch 1 and 64, 224..1024 px: MatMamba-Vision-35M (torch backend,
   torch.compile, mamba_ssm when importable) vs ViT-S/16 and ViT-B/16 (timm, SDPA attention); with the achieved
   TFLOP/s (torch's flop counter) against ``--peak-tflops`` to show how far each is from the hardware.
3. Training img/s of the 35M model at 224 px (bf16 autocast, AdamW): full width, and a Matryoshka ``sum`` step
   over four granularities; eager and torch.compile.

    python benchmarks/gpu_suite.py [--device cuda] [--budget-s 270] [--json out.json]
    python benchmarks/gpu_suite.py --device cpu --quick        # smoke test of every code path
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import Callable, Dict, List, Optional

import timm
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import matmamba_vision  # noqa: F401
from matmamba_vision.ops.ssd import mamba_ssm_available

T0 = time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> List[float]:
    """Seconds per call (synchronised), ``iters`` samples after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t)
    return out


def peak_mib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def flops_per_image(model: torch.nn.Module, size: int, device: torch.device) -> int:
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def build(name: str, size: int, device: torch.device, **kw) -> torch.nn.Module:
    return timm.create_model(name, img_size=size, **kw).to(device).eval()


def check_correctness(args, device: torch.device, report: Dict) -> None:
    torch.manual_seed(0)
    kw = dict(depth=4) if args.quick else {}
    cpu = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend="torch", **kw).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = cpu(x)
    backends = ["torch"] + (["mamba_ssm"] if device.type == "cuda" and mamba_ssm_available() else [])
    for backend in backends:
        dev = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend=backend, **kw).to(device).eval()
        dev.load_state_dict(cpu.state_dict())
        for amp in (False, True):
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                out = dev(x.to(device)).float().cpu()
            err = ((out - ref).norm() / ref.norm()).item()
            key = f"{backend}{' bf16' if amp else ' fp32'}"
            report["correctness"][key] = err
            limit = 5e-2 if amp else 1e-3
            print(f"correctness {key:16s} rel. error vs CPU fp32 {err:.2e}  ({'ok' if err < limit else 'FAIL'} < {limit})")


def inference(args, device: torch.device, report: Dict) -> None:
    sizes = [224] if args.quick else args.sizes
    batches = [1, 2] if args.quick else args.batches
    variants = {"matmamba_35m": ("matmamba_vision_35m_patch16_224", dict(ssd_backend="torch"), False)}
    if not args.quick or args.compile:
        variants["matmamba_35m compile"] = ("matmamba_vision_35m_patch16_224", dict(ssd_backend="torch"), True)
    if device.type == "cuda" and mamba_ssm_available():
        variants["matmamba_35m mamba_ssm"] = ("matmamba_vision_35m_patch16_224", dict(ssd_backend="mamba_ssm"), False)
    variants["vit_s16"] = ("vit_small_patch16_224", {}, False)
    variants["vit_b16"] = ("vit_base_patch16_224", {}, False)
    extra = dict(depth=4) if args.quick else {}
    print(f"\n{'model':24s} {'px':>5s} {'batch':>5s} {'img/s best':>10s} {'median':>8s} {'peak MiB':>9s} "
          f"{'TFLOP/s':>8s} {'% peak':>7s}")
    for size in sizes:
        for name, (arch, kw, compiled) in variants.items():
            if time.perf_counter() - T0 > args.budget_s:
                print(f"(time budget reached: skipping the rest of the inference table)")
                return
            kw = dict(kw, **(extra if arch.startswith("matmamba") else {}))
            try:
                model = build(arch, size, device, **kw)
                fpi = flops_per_image(model, size, device)
                run_model = torch.compile(model) if compiled else model
                for batch in batches:
                    x = torch.randn(batch, 3, size, size, device=device)
                    reset_peak(device)

                    def fwd():
                        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
                            run_model(x)

                    ts = timed(fwd, device, args.iters, args.warmup + (2 if compiled else 0))
                    best, med = batch / min(ts), batch / sorted(ts)[len(ts) // 2]
                    tflops = fpi * best / 1e12
                    mem = peak_mib(device)
                    row = dict(model=name, px=size, batch=batch, img_s=best, img_s_median=med, peak_mib=mem,
                               tflops=tflops, pct_peak=100 * tflops / args.peak_tflops)
                    report["inference"].append(row)
                    print(f"{name:24s} {size:5d} {batch:5d} {best:10.1f} {med:8.1f} "
                          f"{mem if mem is not None else float('nan'):9.0f} {tflops:8.2f} {row['pct_peak']:6.1f}%",
                          flush=True)
                del model, run_model
            except torch.cuda.OutOfMemoryError:
                print(f"{name:24s} {size:5d}  out of memory")
                torch.cuda.empty_cache()


def training(args, device: torch.device, report: Dict) -> None:
    batch = 2 if args.quick else args.train_batch
    kw = dict(depth=4) if args.quick else {}
    modes = [False] + ([True] if (not args.quick or args.compile) else [])
    print(f"\n{'training (35M, 224 px)':34s} {'img/s best':>10s} {'median':>8s} {'peak MiB':>9s}")
    for compiled in modes:
        for step_kind in ("full", "sum4"):
            if time.perf_counter() - T0 > args.budget_s:
                print("(time budget reached: skipping the rest of training)")
                return
            model = timm.create_model("matmamba_vision_35m_patch16_224", **kw).to(device).train()
            fwd = torch.compile(model) if compiled else model
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
            x = torch.randn(batch, 3, 224, 224, device=device)
            y = torch.randint(0, 1000, (batch,), device=device)
            levels = model.matryoshka_levels if step_kind == "sum4" else [None]

            def step():
                opt.zero_grad(set_to_none=True)
                loss = 0.0
                with torch.autocast(device.type, torch.bfloat16):
                    for g in levels:
                        model.set_granularity(g)
                        loss = loss + F.cross_entropy(fwd(x), y)
                (loss / len(levels)).backward()
                opt.step()
                model.set_granularity(None)

            reset_peak(device)
            ts = timed(step, device, args.iters, args.warmup + (2 if compiled else 0))
            name = f"{step_kind}{' compile' if compiled else ''}"
            mem = peak_mib(device)
            report["training"].append(dict(mode=name, batch=batch, img_s=batch / min(ts),
                                           img_s_median=batch / sorted(ts)[len(ts) // 2], peak_mib=mem))
            print(f"{name:34s} {batch / min(ts):10.1f} {batch / sorted(ts)[len(ts) // 2]:8.1f} "
                  f"{mem if mem is not None else float('nan'):9.0f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (any device)")
    ap.add_argument("--compile", action="store_true", help="with --quick: also exercise torch.compile")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 384, 512, 768, 1024])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip remaining work after this many seconds")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="device bf16 dense peak (H200: ~989)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.iters, args.warmup = 2, 1
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# gpu_suite on {name}, torch {torch.__version__}, mamba_ssm available: {mamba_ssm_available()}, "
          f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    report: Dict = dict(device=name, torch=torch.__version__, quick=args.quick, correctness={}, inference=[],
                        training=[])
    check_correctness(args, device, report)
    inference(args, device, report)
    training(args, device, report)
    print(f"\ntotal {time.perf_counter() - T0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
