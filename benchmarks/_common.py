"""Shared helpers for the CPU benchmarks: fixed threads, interleaved timing, a header naming the run."""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from matmamba_vision.evaluation.latency_cache import machine_name


def arg_parser(doc: str, rounds: int, batch: Optional[int] = None) -> argparse.ArgumentParser:
    """The flags every benchmark takes: ``--rounds``, ``--threads`` (2), and ``--batch`` where it has one."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=rounds)
    if batch is not None:
        ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--threads", type=int, default=2)
    return ap


def setup(threads: int = 2) -> None:
    """fp32, ``threads`` intra-op threads, no autograd unless a benchmark turns it on."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)


def cpu_name() -> str:
    """The CPU's model name, as the latency cache records the machine."""
    return machine_name("cpu")


def header(title: str) -> None:
    """Print what ran, where and when (the lines BENCHMARKS.md quotes)."""
    cmd = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])
    print(f"# {title}")
    print(f"# command: {cmd}")
    print(
        f"# machine: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, fp32"
    )
    print(f"# date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each function, run in turn ``rounds`` times (so machine noise hits all alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def stats(ts: List[float]) -> Dict[str, float]:
    return {"min": min(ts), "median": statistics.median(ts)}


def ratio_line(label: str, num: List[float], den: List[float], goal: str) -> str:
    """``den / num`` speed ratio (how many times faster ``num`` is) from min and from median."""
    r_min, r_med = min(den) / min(num), statistics.median(den) / statistics.median(num)
    return f"{label}: {r_min:.2f}x (min) / {r_med:.2f}x (median)   goal {goal}"


_GEMMS = {
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten.baddbmm.default,
    torch.ops.aten.baddbmm_.default,
}


def _spec(x: object) -> object:
    return ("T", tuple(x.shape), tuple(x.stride()), x.dtype) if isinstance(x, torch.Tensor) else x


def _make(x: object) -> object:
    """A tensor of a recorded spec (fresh data in a storage its strides fit, broadcast strides kept)."""
    if not (isinstance(x, tuple) and x[:1] == ("T",)):
        return x
    _, shape, stride, dtype = x
    extent = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
    return torch.empty(extent, dtype=dtype).normal_().as_strided(shape, stride)


def _is_product(func) -> bool:
    """A matrix product, or a fused attention kernel (two of them: ``Q K^T`` and ``P V``)."""
    return func in _GEMMS or "scaled_dot_product" in func.__name__


def _flops(func, args) -> float:
    mats = [a for a in args if isinstance(a, torch.Tensor)]
    if "scaled_dot_product" in func.__name__:  # q (..., L, d), k (..., S, d): 2 L S d multiply-adds per head
        q, k = mats[:2]
        return 4.0 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
    a, b = mats[-2:]
    batch = a.shape[0] if a.dim() == 3 else 1
    return 2.0 * batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


class _GemmRecorder(TorchDispatchMode):
    """Counts the matrix products one call makes, by operator, shapes and strides."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_product(func):
            self.calls[(func, tuple(_spec(a) for a in args))] += 1
        return func(*args, **(kwargs or {}))


def gemm_floor(fn: Callable[[], object], reps: int = 5) -> Tuple[float, float]:
    """(seconds, GFLOP): the time of every matrix product that one call of ``fn`` makes (fused attention kernels
    included), each timed on its own (same operator, shapes and strides, fresh data, warm cache; the least of
    ``reps``) and summed.

    That is the call's time if all of its other work (elementwise ops, norms, convs, scans, Python) were free
    and each product ran as fast as it does alone: a lower bound, to compare with the call's measured time
    and with another model's.
    """
    with torch.no_grad():  # (under inference_mode a dispatch mode sees linear/matmul undecomposed)
        with _GemmRecorder() as rec:
            fn()
        total = gflop = 0.0
        for (func, spec), count in rec.calls.items():
            args = [_make(a) for a in spec]
            best = float("inf")
            for _ in range(reps + 1):
                t0 = time.perf_counter()
                func(*args)
                best = min(best, time.perf_counter() - t0)
            total += best * count
            gflop += 1e-9 * _flops(func, args) * count
    return total, gflop


def gemm_floor_report(
    fns: Dict[str, Callable[[], object]], times: Dict[str, List[float]], ours: str, ref: str, goal: str
) -> None:
    """Print each model's :func:`gemm_floor` beside its measured time, then the best ratio ``ours`` could reach
    against ``ref``'s measured time if all of its own non-GEMM work were free."""
    floors = {}
    for name, fn in fns.items():
        sec, gflop = gemm_floor(fn)
        floors[name] = sec
        print(
            f"# {name}: its matrix products alone {sec:.3f} s ({gflop:.1f} GFLOP at {gflop / sec:.0f} GFLOP/s), "
            f"{sec / min(times[name]):.0%} of its measured {min(times[name]):.3f} s"
        )
    print(
        f"{ours} / {ref} throughput if {ours}'s non-GEMM work were free: "
        f"{min(times[ref]) / floors[ours]:.2f}x (ceiling)   goal {goal}"
    )
