"""The paper's Fig. 4 on one GPU, and issue 14's targets, with ``ssd_backend="triton"`` (stops at ``--budget-s``).

1. Inference, bf16 autocast, batch 1 and 64 at 224, 512, 1024, 1536 and 2048 px: MatMamba-Vision-35M at
   D, D/2, D/4, D/8 and 135M at D (Triton backend; torch and mamba_ssm backends beside it at full width where
   they run), against timm's ViT-S/16 and ViT-B/16 (SDPA); img/s, peak memory, achieved TFLOP/s and % of the
   measured bf16 matmul rate. 35M at 224 px batch 256 for the throughput target; 35M at batch 1 also
   captured in a CUDA graph (``torch.compile(mode="reduce-overhead")``).
2. Training at 224 px, batch 128 (bf16 autocast, AdamW): full width, a Matryoshka ``sum`` step over the four
   levels, and ``cycle`` (one level per step).
3. One ratio line per target (``PASS``/``MISS``/``n/a``), a PNG of speed and memory against resolution
   (batch 1), and a JSON of every row (written after each section).

Beside each measured inference figure: the roofline forecast (``benchmarks/roofline.py``, for the H200 on an
H200, else the H100 SXM) and the measured share of it; on CUDA, the 35M model's Triton kernels timed one by
one (torch.profiler) against their forecast at the targets' sizes, batch 1, to show which is off its roofline
(before the inference table, whose sizes may use up the time budget).

    python benchmarks/gpu_fig4.py --json fig4.json --png fig4.png           # on a GPU
    python benchmarks/gpu_fig4.py --device cpu --quick   # smoke run of the script (torch backend on the CPU)
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from typing import Dict, List, Optional

import timm
import torch
import torch.nn.functional as F
from gpu_suite import (  # benchmarks/ is the script's dir
    ceilings,
    flops_per_image,
    peak_mib,
    reset_peak,
    timed,
)
from roofline import device_for, forecast

import matmamba_vision  # noqa: F401
from matmamba_vision.ops import mamba_ssm_available

T0 = time.perf_counter()
TODAY_TRAIN_IMG_S = 647.0  # full-width training at 224 px batch 128 on one H200 before this work (BENCHMARKS.md)


def triton_backend(device: torch.device) -> str:
    """'triton' where its kernels can run (CUDA, or the CPU under TRITON_INTERPRET=1), else 'torch'."""
    from matmamba_vision.ops.triton import triton_available
    from matmamba_vision.ops.triton._launch import interpreter_active

    if triton_available() and (device.type == "cuda" or interpreter_active()):
        return "triton"
    return "torch"


def variants(args, device: torch.device) -> Dict[str, tuple]:
    """name -> (timm arch, kwargs, granularity divisor or None, compile mode or None)."""
    tb = triton_backend(device)
    out = {f"35m D {tb}": ("matmamba_vision_35m_patch16_224", dict(ssd_backend=tb), 1, None)}
    for k in (2, 4, 8):
        out[f"35m D/{k} {tb}"] = ("matmamba_vision_35m_patch16_224", dict(ssd_backend=tb), k, None)
    out[f"135m D {tb}"] = ("matmamba_vision_135m_patch16_224", dict(ssd_backend=tb), 1, None)
    if not args.quick:
        out["35m D torch"] = ("matmamba_vision_35m_patch16_224", dict(ssd_backend="torch"), 1, None)
    if device.type == "cuda" and mamba_ssm_available():
        out["35m D mamba_ssm"] = ("matmamba_vision_35m_patch16_224", dict(ssd_backend="mamba_ssm"), 1, None)
    if device.type == "cuda":
        out[f"35m D {tb} cudagraph"] = ("matmamba_vision_35m_patch16_224", dict(ssd_backend=tb), 1, "reduce-overhead")
    out["vit_s16"] = ("vit_small_patch16_224", {}, None, None)
    out["vit_b16"] = ("vit_base_patch16_224", {}, None, None)
    return out


FORECAST_MODELS = {  # timm name -> the roofline's model
    "matmamba_vision_35m_patch16_224": "35m",
    "matmamba_vision_135m_patch16_224": "135m",
    "vit_small_patch16_224": "vit_s16",
    "vit_base_patch16_224": "vit_b16",
}


def forecast_img_s(arch: str, kw: Dict, div: Optional[int], size: int, batch: int, report: Dict) -> Optional[float]:
    """The roofline forecast's img/s for a row (None where it has none: the torch and mamba_ssm backends, whose
    kernels it does not model, or where it fails)."""
    if arch not in FORECAST_MODELS or kw.get("ssd_backend", "triton") != "triton":
        return None
    try:
        extra = {k: v for k, v in kw.items() if k == "depth"}
        fc = forecast(FORECAST_MODELS[arch], size, batch, width=div or 1, **extra)
        return fc.img_s(device_for(report["device"]))
    except Exception as e:  # the forecast is a guide: a failure must not end the run
        print(f"(no forecast for {arch} at {size} px: {type(e).__name__}: {str(e)[:200]})")
        return None


def run_inference(args, device: torch.device, report: Dict) -> None:
    extra = dict(depth=2) if args.quick else {}
    print(
        f"\n{'model':26s} {'px':>5s} {'batch':>5s} {'img/s best':>10s} {'median':>8s} {'peak MiB':>9s} "
        f"{'TFLOP/s':>8s} {'% peak':>7s} {'forecast':>9s} {'% fcst':>7s}   (forecast: {device_for(report['device'])})"
    )
    fpis: Dict = {}
    for size in args.sizes:  # the most telling sizes first, in case the budget runs out
        for name, (arch, kw, div, mode) in variants(args, device).items():
            batches = list(args.batches)
            if size == args.big_batch_px and name in (f"35m D {triton_backend(device)}", "vit_s16"):
                batches.append(args.big_batch)  # the throughput target
            if mode:
                batches = [1]  # the CUDA graph: batch-1 latency
            other_backend = name.endswith((" torch", " mamba_ssm")) and name != f"35m D {triton_backend(device)}"
            if other_backend and size not in (args.big_batch_px, 1024):
                continue  # the torch and mamba_ssm backends beside the Triton one where the targets compare them
            if time.perf_counter() - T0 > args.budget_s - args.train_reserve_s:
                print("(time budget reached: skipping the rest of the inference table)")
                return
            model = run = None
            try:
                model = timm.create_model(arch, img_size=size, **kw, **(extra if div else {})).to(device).eval()
                if div:
                    model.set_granularity(model.embed_dim // div)
                key = (arch, div, size)
                if key not in fpis:
                    fpis[key] = flops_per_image(model, size, device)
                run = torch.compile(model, mode=mode) if mode else model
            except Exception as e:
                print(f"{name:26s} {size:5d}  failed to build: {type(e).__name__}: {str(e)[:200]}", flush=True)
                report["inference"].append(dict(model=name, px=size, error=repr(e)[:500]))
                continue
            for batch in batches:
                row = dict(model=name, px=size, batch=batch)
                try:
                    x = torch.randn(batch, 3, size, size, device=device)
                    reset_peak(device)

                    def fwd():
                        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16):
                            run(x)

                    ts = timed(fwd, device, args.iters, args.warmup + (3 if mode else 0))
                    best, med = batch / min(ts), batch / sorted(ts)[len(ts) // 2]
                    tflops = fpis[key] * best / 1e12
                    fc = forecast_img_s(arch, dict(kw, **(extra if div else {})), div, size, batch, report)
                    row.update(
                        img_s=best,
                        img_s_median=med,
                        peak_mib=peak_mib(device),
                        tflops=tflops,
                        pct_peak=100 * tflops / args.peak_tflops,
                        forecast_img_s=fc,
                        pct_forecast=None if fc is None else 100 * best / fc,
                    )
                    mem = row["peak_mib"]
                    fc_txt = f"{fc:9.1f} {row['pct_forecast']:6.1f}%" if fc is not None else f"{'-':>9s} {'-':>7s}"
                    print(
                        f"{name:26s} {size:5d} {batch:5d} {best:10.1f} {med:8.1f} "
                        f"{mem if mem is not None else float('nan'):9.0f} {tflops:8.2f} {row['pct_peak']:6.1f}% "
                        f"{fc_txt}",
                        flush=True,
                    )
                except torch.cuda.OutOfMemoryError:
                    row.update(error="out of memory")
                    print(f"{name:26s} {size:5d} {batch:5d}  out of memory", flush=True)
                except Exception as e:  # one failing row must not end the run
                    row.update(error=repr(e)[:500])
                    print(f"{name:26s} {size:5d} {batch:5d}  failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                report["inference"].append(row)
                x = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            model = run = None


def _kernel_times(fn, iters: int) -> Dict[str, List[float]]:
    """GPU kernel name -> [launches, device microseconds] per call of ``fn`` (torch.profiler, ``iters`` calls)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    out: Dict[str, List[float]] = {}
    for evt in prof.key_averages():
        if evt.device_type != DeviceType.CUDA:
            continue
        us = getattr(evt, "self_device_time_total", None)
        us = us if us is not None else evt.self_cuda_time_total
        out[evt.key] = [evt.count / iters, us / iters]
    return out


def kernels_vs_roofline(args, device: torch.device, report: Dict) -> None:
    """The 35M model's forward at the targets' sizes, batch 1, bf16: each Triton kernel's measured time against
    its forecast, then the other kernels (torch's) together, then the sum."""
    report["kernels"] = []
    if device.type != "cuda" or triton_backend(device) != "triton":
        return
    dev = device_for(report["device"])
    for size in (1024, 2048):  # first after the ceilings (the inference table may use up the budget)
        try:
            model = timm.create_model("matmamba_vision_35m_patch16_224", img_size=size, ssd_backend="triton")
            model = model.to(device).eval()
            x = torch.randn(1, 3, size, size, device=device)

            def fwd():
                with torch.no_grad(), torch.autocast("cuda", torch.bfloat16):
                    model(x)

            timed(fwd, device, 1, 2)  # compile and warm up
            measured = _kernel_times(fwd, 3)
            fc = forecast("35m", size, 1)
        except Exception as e:  # report and go on
            print(f"kernel table at {size} px failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        print(f"\n35M, {size} px, batch 1, bf16: kernels vs roofline on {dev} (us per forward)")
        print(f"{'kernel':34s} {'launches':>8s} {'measured':>10s} {'forecast':>10s} {'% of roofline':>14s}")
        rows = []
        for key, item in sorted(fc.items.items()):
            if key.startswith("triton:"):
                name = key.split(":", 1)[1]
                launches, us = measured.pop(name, [0.0, 0.0])
                rows.append((name, launches, us, item.seconds[dev] * 1e6))
        other_fc = sum(i.seconds[dev] for k, i in fc.items.items() if not k.startswith("triton:")) * 1e6
        rows.append(
            (
                "other kernels (torch)",
                sum(v[0] for v in measured.values()),
                sum(v[1] for v in measured.values()),
                other_fc,
            )
        )
        rows.append(("all", sum(r[1] for r in rows), sum(r[2] for r in rows), fc.seconds(dev) * 1e6))
        for name, launches, us, fus in rows:
            pct = f"{100 * fus / us:13.0f}%" if us else f"{'-':>14s}"
            print(f"{name:34s} {launches:8.0f} {us:10.1f} {fus:10.1f} {pct}")
            report["kernels"].append(dict(px=size, kernel=name, launches=launches, us=us, forecast_us=fus, device=dev))
        model = x = None
        torch.cuda.empty_cache()


def run_training(args, device: torch.device, report: Dict) -> None:
    batch = 2 if args.quick else args.train_batch
    px = 32 if args.quick else 224
    kw = dict(depth=2, img_size=px) if args.quick else {}
    tb = triton_backend(device)
    print(f"\n{'training (35M, 224 px)':30s} {'batch':>5s} {'img/s best':>10s} {'median':>8s} {'peak MiB':>9s}")
    for mode in ("full", "sum", "cycle"):
        if time.perf_counter() - T0 > args.budget_s:
            print("(time budget reached: skipping the rest of training)")
            return
        name = f"{mode} {tb}"
        try:
            model = timm.create_model("matmamba_vision_35m_patch16_224", ssd_backend=tb, **kw).to(device).train()
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
            x = torch.randn(batch, 3, px, px, device=device)
            y = torch.randint(0, 1000, (batch,), device=device)
            levels = model.matryoshka_levels
            counter = [0]

            def step():
                opt.zero_grad(set_to_none=True)
                if mode == "full":
                    steps = [None]
                elif mode == "sum":
                    steps = levels
                else:  # cycle: one level per step, in turn
                    steps = [levels[counter[0] % len(levels)]]
                    counter[0] += 1
                loss = 0.0
                with torch.autocast(device.type, torch.bfloat16):
                    for g in steps:
                        model.set_granularity(g)
                        loss = loss + F.cross_entropy(model(x), y)
                (loss / len(steps)).backward()
                opt.step()
                model.set_granularity(None)

            reset_peak(device)
            ts = timed(step, device, max(args.iters, 4), args.warmup)  # >= 4: cycle visits every level
            row = dict(
                mode=name,
                batch=batch,
                img_s=batch / min(ts),
                img_s_median=batch / sorted(ts)[len(ts) // 2],
                step_s_median=sorted(ts)[len(ts) // 2],
                peak_mib=peak_mib(device),
            )
            mem = row["peak_mib"]
            print(
                f"{name:30s} {batch:5d} {row['img_s']:10.1f} {row['img_s_median']:8.1f} "
                f"{mem if mem is not None else float('nan'):9.0f}",
                flush=True,
            )
        except Exception as e:  # report and go on
            row = dict(mode=name, batch=batch, error=repr(e)[:500])
            print(f"{name}: failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
        report["training"].append(row)
        model = opt = None


def _find(rows: List[Dict], **keys) -> Optional[Dict]:
    for r in rows:
        if all(r.get(k) == v for k, v in keys.items()) and "error" not in r:
            return r
    return None


def targets(args, device: torch.device, report: Dict) -> None:
    """One line per target of issue 14: measured ratio, goal, PASS / MISS (n/a where a row is missing)."""
    inf, tr = report["inference"], report["training"]
    tb = triton_backend(device)
    hi, top = (1024, 2048) if not args.quick else (32, 64)
    lines = []

    def ratio(label, num, den, key, goal, higher=True):
        if num is None or den is None or not den.get(key):
            lines.append(dict(target=label, value=None, goal=goal, verdict="n/a"))
            return
        v = num[key] / den[key]
        ok = v >= goal if higher else v <= goal
        lines.append(dict(target=label, value=v, goal=goal, verdict="PASS" if ok else "MISS"))

    mm = f"35m D {tb}"
    for px, goal in ((hi, 1.0), (top, 2.0)):
        a, b = _find(inf, model=mm, px=px, batch=1), _find(inf, model="vit_s16", px=px, batch=1)
        ratio(f"35M / ViT-S/16 img/s, batch 1, {px} px", a, b, "img_s", goal)
        ratio(f"35M / ViT-S/16 peak memory, batch 1, {px} px", a, b, "peak_mib", 1.0, higher=False)
    ratio(
        f"35M / ViT-S/16 img/s, {args.big_batch_px} px, batch {args.big_batch}",
        _find(inf, model=mm, px=args.big_batch_px, batch=args.big_batch),
        _find(inf, model="vit_s16", px=args.big_batch_px, batch=args.big_batch),
        "img_s",
        0.5,
    )
    r = _find(inf, model=mm, px=hi, batch=max(args.batches))
    lines.append(
        dict(
            target=f"35M % of measured bf16 matmul rate, {hi} px, batch {max(args.batches)}",
            value=r["pct_peak"] if r else None,
            goal=15.0,
            verdict="n/a" if r is None else ("PASS" if r["pct_peak"] >= 15.0 else "MISS"),
        )
    )
    full, summ = _find(tr, mode=f"full {tb}"), _find(tr, mode=f"sum {tb}")
    lines.append(
        dict(
            target="training full width img/s / today's 647 (224 px, batch 128)",
            value=full["img_s"] / TODAY_TRAIN_IMG_S if full else None,
            goal=1.5,
            verdict="n/a"
            if full is None or args.quick
            else ("PASS" if full["img_s"] / TODAY_TRAIN_IMG_S >= 1.5 else "MISS"),
        )
    )
    ratio("Matryoshka sum step time / full step time", summ, full, "step_s_median", 2.2, higher=False)
    for px, batch in dict.fromkeys(((hi, 1), (hi, max(args.batches)), (args.big_batch_px, max(args.batches)))):
        ratio(
            f"triton / mamba_ssm img/s, 35M, {px} px, batch {batch}",
            _find(inf, model=mm, px=px, batch=batch),
            _find(inf, model="35m D mamba_ssm", px=px, batch=batch),
            "img_s",
            1.0,
        )
    print("\ntargets (issue 14)")
    for ln in lines:
        v = "n/a" if ln["value"] is None else f"{ln['value']:.2f}"
        at_most = "memory" in ln["target"] or "step time" in ln["target"]
        print(f"  {ln['verdict']:4s} {ln['target']:62s} {v:>8s}  (goal {'<=' if at_most else '>='} {ln['goal']})")
    report["targets"] = lines


def plot(args, report: Dict) -> None:
    """Speed and peak memory against resolution at batch 1, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    names = sorted({r["model"] for r in report["inference"]})
    for name in names:
        rows = sorted(
            (r for r in report["inference"] if r["model"] == name and r["batch"] == 1 and "error" not in r),
            key=lambda r: r["px"],
        )
        if len(rows) < 2:
            continue
        ax1.plot([r["px"] for r in rows], [r["img_s"] for r in rows], marker="o", label=name)
        if rows[0]["peak_mib"] is not None:
            ax2.plot([r["px"] for r in rows], [r["peak_mib"] for r in rows], marker="o", label=name)
    ax1.set(xlabel="resolution (px)", ylabel="img/s (batch 1, bf16)", yscale="log", title="speed")
    ax2.set(xlabel="resolution (px)", ylabel="peak MiB (batch 1)", yscale="log", title="memory")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=7)
    fig.suptitle(f"Fig. 4 reproduction on {report['device']}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=120)
    print(f"wrote {args.png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (any device)")
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1024, 2048, 224, 512, 1536],
        help="image sizes, run in this order (the targets' sizes first, in case the budget runs out)",
    )
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--big-batch", type=int, default=256, help="batch of the throughput target")
    ap.add_argument("--big-batch-px", type=int, default=224, help="image size of the throughput target")
    ap.add_argument("--train-batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=450.0, help="skip remaining work after this many seconds")
    ap.add_argument("--train-reserve-s", type=float, default=90.0, help="of the budget, kept for training")
    ap.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="bf16 matmul ceiling for the %% column (replaced by the measured one on CUDA)",
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default=None)
    args = ap.parse_args()
    if args.quick:  # every code path, however slow the machine: no time budget
        args.iters, args.warmup, args.budget_s = 2, 1, float("inf")
        args.sizes, args.batches, args.big_batch, args.big_batch_px = [32, 64], [1, 2], 4, 32
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here (--device cpu --quick is a smoke run of the script)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"# gpu_fig4 on {name}, torch {torch.__version__}, SSD backend {triton_backend(device)}, mamba_ssm "
        f"available: {mamba_ssm_available()}, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )
    report: Dict = dict(device=name, torch=torch.__version__, quick=args.quick, inference=[], training=[])
    for section in (ceilings, kernels_vs_roofline, run_inference, run_training, targets):
        section(args, device, report)
        if args.json:  # after every section, so a run cut short still leaves its figures
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
    if args.png:
        plot(args, report)
    print(f"\ntotal {time.perf_counter() - T0:.0f} s")


if __name__ == "__main__":
    main()
