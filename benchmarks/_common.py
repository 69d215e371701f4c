"""Shared helpers for the CPU benchmarks: fixed threads, interleaved timing, a header naming the run."""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import torch


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
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def header(title: str) -> None:
    """Print what ran, where and when (the lines BENCHMARKS.md quotes)."""
    cmd = " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])
    print(f"# {title}")
    print(f"# command: {cmd}")
    print(f"# machine: {cpu_name()}, {os.cpu_count()} cores visible, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, fp32")
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
