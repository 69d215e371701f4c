"""GPU benchmark suite for one H200-class device (stops at ``--budget-s``); ``--device cpu --quick`` is a smoke run.

0. Ceilings measured on the device: a large device-to-device copy (GB/s) and an 8192^3 bf16 matmul (TFLOP/s).
1. Correctness: the 35M model on the device (fp32 without TF32, and bf16 autocast; torch backend, torch.compile
   and, when importable, mamba_ssm's kernel) vs the CPU fp32 reference on the same weights and images; the SSD
   scan alone (torch path and mamba_ssm's Triton kernel vs the exact path in float64), with its timings.
2. bf16 inference img/s and peak memory at batch 1 and 64, 224..1024 px: MatMamba-Vision-35M (torch backend,
   torch.compile, mamba_ssm when importable) vs ViT-S/16 and ViT-B/16 (timm, SDPA attention); with the achieved
   TFLOP/s (torch's flop counter) against the measured matmul ceiling, to show how far each is from the
   hardware. torch.compile rows run at ``--compile-sizes`` (each size is a fresh compile).
3. Training img/s of the 35M model at 224 px (bf16 autocast, AdamW): full width and a Matryoshka ``sum`` step
   over four granularities, eager; full width with torch.compile.

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
from matmamba_vision import use_backend
from matmamba_vision.ops import mamba_ssm_available

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
    """Products and convs of one forward; a MatMamba model counts on the ``'reference'`` backend (the torch SSD's
    exact form), so every variant of it, the mamba_ssm one included (its Triton kernel is invisible to the
    counter), gets the same figure."""
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), use_backend(model, "reference"), FlopCounterMode(display=False) as fc:
        model(x)
    return int(fc.get_total_flops())


def build(name: str, size: int, device: torch.device, **kw) -> torch.nn.Module:
    return timm.create_model(name, img_size=size, **kw).to(device).eval()


def ceilings(args, device: torch.device, report: Dict) -> None:
    """Measured copy bandwidth and bf16 matmul rate: the roofs the model figures are read against."""
    if device.type != "cuda" or args.quick:
        report["ceilings"] = dict(copy_gb_s=None, bf16_tflops=args.peak_tflops)
        return
    src = torch.randn(2**30 // 4, device=device)  # 1 GiB fp32
    dst = torch.empty_like(src)
    t = min(timed(lambda: dst.copy_(src), device, 10, 3))
    copy = 2 * src.numel() * 4 / t / 1e9
    a, b = (torch.randn(8192, 8192, device=device, dtype=torch.bfloat16) for _ in range(2))
    t = min(timed(lambda: a @ b, device, 10, 3))
    tflops = 2 * 8192**3 / t / 1e12
    src = dst = a = b = None  # free the buffers (the timed lambdas close over these names)
    torch.cuda.empty_cache()
    args.peak_tflops = tflops
    report["ceilings"] = dict(copy_gb_s=copy, bf16_tflops=tflops)
    print(f"ceilings: device copy {copy:.0f} GB/s (read + write), bf16 matmul 8192^3 {tflops:.0f} TFLOP/s")


def ssd_kernels(args, device: torch.device, report: Dict) -> None:
    """The SSD scan alone (64 heads, headdim 16, d_state 128, L 197 and 4096): error vs float64, and time."""
    from matmamba_vision.ops import ssd_scan
    from matmamba_vision.ops.ssd_mamba_ssm import _mamba_ssm_kernel
    from matmamba_vision.ops.ssd_ref import ssd_chunked_exact

    print(f"\n{'ssd scan (fp32 in)':28s} {'L':>5s} {'batch':>5s} {'rel. err':>9s} {'ms best':>8s} {'median':>8s}")
    for seqlen, batch in ((197, 64), (4096, 8)) if not args.quick else ((197, 2),):
        g = torch.Generator().manual_seed(seqlen)
        h, p, n = 64, 16, 128
        x = torch.randn(batch, seqlen, h, p, generator=g)
        dt = F.softplus(torch.randn(batch, seqlen, h, generator=g) - 3)
        A = -torch.rand(h, generator=g) * 8 - 0.5
        B, C = (torch.randn(batch, seqlen, 1, n, generator=g) / n**0.5 for _ in range(2))
        # float64 throughout (the torch backend's scan itself computes in float32 whatever its inputs)
        ref = ssd_chunked_exact(*(t.double() for t in (x, dt, A, B, C)), 64)[0]
        ins = [t.to(device) for t in (x, dt, A, B, C)]
        impls = {"torch (eager)": lambda: ssd_scan(*ins, backend="torch")}
        kernel = _mamba_ssm_kernel() if device.type == "cuda" else None
        if kernel is not None:
            impls["mamba_ssm triton"] = lambda: kernel(*ins, 256)
        for name, fn in impls.items():
            try:
                with torch.no_grad():
                    out = fn()
                    err = ((out.double().cpu() - ref).norm() / ref.norm()).item()
                    ts = timed(fn, device, args.iters * 2, args.warmup)
            except Exception as e:  # a third-party kernel failing must not end the suite
                print(f"{name:28s} {seqlen:5d} {batch:5d} failed: {type(e).__name__}: {str(e)[:200]}")
                report["ssd"].append(dict(impl=name, L=seqlen, batch=batch, error=repr(e)[:500]))
                continue
            report["ssd"].append(
                dict(
                    impl=name,
                    L=seqlen,
                    batch=batch,
                    rel_err=err,
                    ms=1e3 * min(ts),
                    ms_median=1e3 * sorted(ts)[len(ts) // 2],
                )
            )
            print(
                f"{name:28s} {seqlen:5d} {batch:5d} {err:9.1e} {1e3 * min(ts):8.2f} "
                f"{1e3 * sorted(ts)[len(ts) // 2]:8.2f}",
                flush=True,
            )


def check_correctness(args, device: torch.device, report: Dict) -> None:
    torch.manual_seed(0)
    kw = dict(depth=4) if args.quick else {}
    cpu = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend="torch", **kw).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ref = cpu(x)
    backends = ["torch", "torch compile"] + (["mamba_ssm"] if device.type == "cuda" and mamba_ssm_available() else [])
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 here; the settings are restored below
    torch.backends.cudnn.allow_tf32 = False
    try:
        _compare_backends(backends, kw, cpu, x, ref, device, report)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _compare_backends(backends, kw, cpu, x, ref, device, report) -> None:
    for backend in backends:
        dev = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend=backend.split()[0], **kw)
        dev = dev.to(device).eval()
        dev.load_state_dict(cpu.state_dict())
        run = torch.compile(dev) if backend.endswith("compile") else dev
        for amp in (False, True):
            key = f"{backend}{' bf16' if amp else ' fp32'}"
            try:
                with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
                    out = run(x.to(device)).float().cpu()
            except Exception as e:  # report and go on to the next backend
                print(f"correctness {key:20s} failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                report["correctness"][key] = repr(e)[:500]
                continue
            err = ((out - ref).norm() / ref.norm()).item()
            report["correctness"][key] = err
            limit = 5e-2 if amp else 1e-3
            print(
                f"correctness {key:20s} rel. error vs CPU fp32 {err:.2e}  "
                f"({'ok' if err < limit else 'FAIL'} < {limit})",
                flush=True,
            )


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
    print(
        f"\n{'model':24s} {'px':>5s} {'batch':>5s} {'img/s best':>10s} {'median':>8s} {'peak MiB':>9s} "
        f"{'TFLOP/s':>8s} {'% peak':>7s}"
    )
    fpis: Dict = {}
    for size in sizes:
        for name, (arch, kw, compiled) in variants.items():
            if compiled and not args.quick and size not in args.compile_sizes:
                continue
            if time.perf_counter() - T0 > args.budget_s - args.train_reserve_s:
                print("(time budget reached: skipping the rest of the inference table)")
                return
            kw = dict(kw, **(extra if arch.startswith("matmamba") else {}))
            try:
                model = build(arch, size, device, **kw)
                if (arch, size) not in fpis:  # counted once per architecture (the torch path's ops)
                    fpis[arch, size] = flops_per_image(model, size, device)
                fpi = fpis[arch, size]
                run_model = torch.compile(model) if compiled else model
                for batch in batches if not compiled else batches[-1:]:  # compiled: the largest batch only
                    x = torch.randn(batch, 3, size, size, device=device)
                    reset_peak(device)

                    def fwd():
                        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
                            run_model(x)

                    ts = timed(fwd, device, args.iters, args.warmup + (2 if compiled else 0))
                    best, med = batch / min(ts), batch / sorted(ts)[len(ts) // 2]
                    tflops = fpi * best / 1e12
                    mem = peak_mib(device)
                    row = dict(
                        model=name,
                        px=size,
                        batch=batch,
                        img_s=best,
                        img_s_median=med,
                        peak_mib=mem,
                        tflops=tflops,
                        pct_peak=100 * tflops / args.peak_tflops,
                    )
                    report["inference"].append(row)
                    print(
                        f"{name:24s} {size:5d} {batch:5d} {best:10.1f} {med:8.1f} "
                        f"{mem if mem is not None else float('nan'):9.0f} {tflops:8.2f} {row['pct_peak']:6.1f}%",
                        flush=True,
                    )
                model = run_model = None  # free it before the next variant
            except torch.cuda.OutOfMemoryError:
                print(f"{name:24s} {size:5d}  out of memory")
                report["inference"].append(dict(model=name, px=size, error="out of memory"))
                model = run_model = None
                torch.cuda.empty_cache()
            except Exception as e:  # e.g. a third-party kernel failing at one size: report, go on
                print(f"{name:24s} {size:5d}  failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                report["inference"].append(dict(model=name, px=size, error=repr(e)[:500]))


def training(args, device: torch.device, report: Dict) -> None:
    batch = 2 if args.quick else args.train_batch
    kw = dict(depth=4) if args.quick else {}
    runs = [("torch", False, "full"), ("torch", False, "sum4")]
    if not args.quick or args.compile:
        runs.append(("torch", True, "full"))
    if device.type == "cuda" and mamba_ssm_available():
        runs += [("mamba_ssm", False, "full"), ("mamba_ssm", False, "sum4")]
    print(f"\n{'training (35M, 224 px)':34s} {'img/s best':>10s} {'median':>8s} {'peak MiB':>9s}")
    for backend, compiled, step_kind in runs:
        if time.perf_counter() - T0 > args.budget_s:
            print("(time budget reached: skipping the rest of training)")
            return
        try:
            model = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend=backend, **kw).to(device).train()
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
            name = f"{step_kind} {backend}{' compile' if compiled else ''}"
            mem = peak_mib(device)
            report["training"].append(
                dict(
                    mode=name,
                    batch=batch,
                    img_s=batch / min(ts),
                    img_s_median=batch / sorted(ts)[len(ts) // 2],
                    peak_mib=mem,
                )
            )
            print(
                f"{name:34s} {batch / min(ts):10.1f} {batch / sorted(ts)[len(ts) // 2]:8.1f} "
                f"{mem if mem is not None else float('nan'):9.0f}",
                flush=True,
            )
        except Exception as e:  # report and go on
            print(
                f"{step_kind} {backend}{' compile' if compiled else ''}: failed: {type(e).__name__}: {str(e)[:200]}",
                flush=True,
            )
            report["training"].append(dict(mode=f"{step_kind} {backend}", compiled=compiled, error=repr(e)[:500]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (any device)")
    ap.add_argument("--compile", action="store_true", help="with --quick: also exercise torch.compile")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[224, 1024, 512, 768, 384],
        help="image sizes, run in this order (the most telling first, in case the budget runs out)",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--compile-sizes", type=int, nargs="+", default=[224, 1024])
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=270.0, help="skip remaining work after this many seconds")
    ap.add_argument("--train-reserve-s", type=float, default=60.0, help="of the budget, kept for the training part")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="bf16 matmul ceiling for the %% column (replaced by the measured one on CUDA)",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.iters, args.warmup = 2, 1
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# gpu_suite on {name}, torch {torch.__version__}, mamba_ssm available: {mamba_ssm_available()}, "
        f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )
    report: Dict = dict(
        device=name, torch=torch.__version__, quick=args.quick, correctness={}, ssd=[], inference=[], training=[]
    )
    for section in (ceilings, check_correctness, ssd_kernels, inference, training):
        section(args, device, report)
        if args.json:  # after every section, so a run cut short still leaves its figures
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    print(f"\ntotal {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__":
    main()
