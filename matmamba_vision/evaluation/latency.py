"""Measured latency and peak memory of submodels on this machine, in one runtime, with a cache keyed by both.

Every configuration is cut out as a standalone submodel (:func:`~matmamba_vision.extract_submodel`, what a
deployment runs), warmed up, then timed in interleaved rounds (one call of each configuration per round, the
start rotating), so drift and noise from other processes hit all configurations alike. Reported: the median
and 90th-percentile milliseconds per batch, and the memory of the configuration.

ONNX Runtime is timed as a single deployed session runs, which export.py's re-timing measures: in a child process
whose sessions share one intra-op thread pool (:func:`_ort_timings`), each timed call right after an untimed one
of the same configuration (``settle``, :func:`.latency_cache.default_settle`). Timed in the parent, with a pool
per session and no such call, the medians ran 2-3x the re-timed ones at batch 1 and far more at batch 32.

Memory:

- ``memory_mb`` = its weights (PyTorch: parameter and buffer bytes; ONNX Runtime: the model file) plus the
  peak working memory of one call. On CUDA the working memory is ``torch.cuda.max_memory_allocated`` growth
  during a call after the warm-up. On the CPU it is the growth of the process's peak resident set (Linux
  ``VmHWM``, reset through ``/proc/self/clear_refs`` after ``malloc_trim``) during a call after the warm-up
  (PyTorch), or during the first call (ONNX Runtime, whose arena keeps its memory after it). Python's
  ``tracemalloc`` does not see torch's allocations, and this torch's profiler reports CPU frees only. Where
  ``/proc`` cannot be used the column is empty.

With ``compile`` every configuration is its own compiled graph of the same ``forward``; a call checks the
guards of the graphs before its own, a per-call overhead growing with the number of configurations.

Timings are cached (:mod:`.latency_cache`) under a key naming the machine, runtime, threads, batch and size;
timings from another machine or runtime are refused, not reused.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from tqdm.auto import tqdm

from ..elastic import extract_submodel
from ..export import package_version
from ..flags import nonneg_int, positive_int
from ..models.matmamba_vision import MatMambaVision
from .latency_cache import (
    RUNTIMES,
    LatencyCache,
    default_cache_path,
    default_settle,
    dims_key,
    key_mismatch,
    latency_key,
    machine_name,
)
from .report import format_table, pareto_front
from .submodels import SubmodelConfig

__all__ = [  # the key and the cache (:mod:`.latency_cache`) are re-exported
    "RUNTIMES",
    "default_cache_path",
    "machine_name",
    "default_settle",
    "latency_key",
    "key_mismatch",
    "LatencyCache",
    "LATENCY_COLUMNS",
    "add_latency_args",
    "measure_latency",
    "add_latency_columns",
    "check_latency_args",
    "latency_from_args",
    "latency_table",
    "time_exported",
]

LATENCY_COLUMNS = ("latency_ms", "latency_p90_ms", "memory_mb", "pareto_latency")
LIVE_BYTES = 2 << 30  # memory the submodels kept built at once may hold; those beyond it are rebuilt per visit
Dims = Tuple[int, ...]


def add_latency_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """validate.py's ``--latency`` flags (the input size is ``--img-size``, the device ``--device``)."""
    g = parser.add_argument_group("latency (measured on this machine)")
    g.add_argument("--latency", action="store_true", help="also time every configuration and record its memory")
    g.add_argument("--latency-runtime", default="eager", choices=RUNTIMES, help="default: %(default)s")
    g.add_argument("--latency-batch", type=positive_int, default=1, help="images per timed call (default: 1)")
    g.add_argument(
        "--latency-threads",
        type=positive_int,
        default=None,
        help="intra-op threads while timing (default: torch.get_num_threads())",
    )
    g.add_argument("--latency-repeats", type=positive_int, default=10, help="timed rounds (default: 10)")
    g.add_argument("--latency-warmup", type=nonneg_int, default=2, help="untimed calls per build (default: 2)")
    g.add_argument(
        "--latency-live-mb",
        type=nonneg_int,
        default=LIVE_BYTES >> 20,
        help="memory (MB) the configurations kept built while timing may hold (weights; in ONNX Runtime also "
        "each session's arena); the others are rebuilt and warmed up again at each of their timed calls "
        "(default: %(default)s)",
    )
    g.add_argument(
        "--latency-cache",
        default=None,
        help=f"timings cache file (default: {default_cache_path()}); 'none' to measure everything anew",
    )
    return parser


def _percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in (0, 100])."""
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def _proc_status(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> Optional[int]:
    """Return freed heap to the OS, reset the peak resident set to the current one; the current RSS, or None
    where ``/proc`` does not allow it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status("VmRSS")


def _peak_growth(call: Callable[[], Any], device: torch.device) -> Optional[int]:
    """Bytes of peak working memory one ``call`` adds (see the module docstring), or None if unmeasurable."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    before = _reset_peak_rss()
    call()
    peak = _proc_status("VmHWM") if before is not None else None
    return None if peak is None else max(0, peak - before)


class _Runner:
    """One configuration built for the runtime: ``call()`` runs one batch; ``weight_bytes`` its weights."""

    def __init__(self, call: Callable[[], Any], weight_bytes: int, keep: Any = None):
        self.call, self.weight_bytes, self._keep = call, weight_bytes, keep


def _torch_runner(
    model: MatMambaVision, dims: Dims, x: torch.Tensor, runtime: str, amp_dtype: Optional[torch.dtype]
) -> _Runner:
    from ..accuracy import autocast_context

    sub = extract_submodel(model, list(dims)).to(x.device).eval().requires_grad_(False)
    weight_bytes = sum(t.numel() * t.element_size() for t in [*sub.parameters(), *sub.buffers()])
    fn = torch.compile(sub) if runtime == "compile" else sub
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)

    def call():
        with torch.inference_mode(), autocast_context(x.device, amp_dtype):
            fn(x)
        sync()

    return _Runner(call, weight_bytes, keep=fn)


def _ort_session(path: os.PathLike, threads: int, shared_pool: bool = False):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads of its own, or (``shared_pool``) running on
    the process's global thread pools, which :func:`_ort_timings` sizes first."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if shared_pool:
        opts.use_per_session_threads = False
    else:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _export_onnx(model: MatMambaVision, dims: Dims, folder: Path) -> Path:
    from ..export import export_model

    path = folder / f"{dims_key(dims).replace(' ', '_')}.onnx"
    if not path.is_file():
        export_model(model, path, granularity=list(dims), verify=False)
    return path


def _ort_timings(
    paths: Dict[Dims, str], shape: Sequence[int], threads: int, rounds: Dict[str, Any]
) -> Tuple[Dict[Dims, List[float]], Dict[Dims, Optional[int]], Dict[str, Any]]:
    """Run in a child process of its own (:func:`_in_child`): time the exported files with :func:`_time_rounds`,
    every session on one global intra-op pool of ``threads`` threads.

    In the parent, each session would bring its own pool, whose threads keep spinning after its call while the
    next configuration's session runs: on 2 cores at batch 32, some configurations' medians came out 10-50x
    their time alone. One pool, sized before the process's first session, is what a single deployed session has.
    Returns (times, memory, how: the child's pid and the pool setting)."""
    import numpy as np
    import onnxruntime as ort

    ort.set_global_thread_pool_sizes(threads, 1)
    x = np.random.default_rng(0).standard_normal(tuple(shape), dtype=np.float32)

    def make(dims: Dims) -> _Runner:
        session = _ort_session(paths[dims], threads, shared_pool=True)
        feed = {session.get_inputs()[0].name: x}
        return _Runner(lambda: session.run(None, feed), Path(paths[dims]).stat().st_size, keep=session)

    times, memory = _time_rounds(list(paths), make, memory_first=True, device=torch.device("cpu"), **rounds)
    return times, memory, dict(pid=os.getpid(), per_session_threads=False, global_intra_op_threads=threads)


def _in_child(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a fresh (spawned) Python process; its result or its exception."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def _compile_limits(runtime: str, n: int):
    """For ``compile``: room for one compiled graph per configuration (they share the model's ``forward``, and
    past dynamo's recompile limit a configuration would silently run eager)."""
    if runtime != "compile":
        return contextlib.nullcontext()
    import torch._dynamo.config as dynamo

    limit = max(dynamo.recompile_limit, n + 1)
    return dynamo.patch(
        recompile_limit=limit, accumulated_recompile_limit=max(dynamo.accumulated_recompile_limit, limit)
    )


def _time_rounds(
    todo: Sequence[Dims],
    make: Callable[[Dims], _Runner],
    *,
    repeats: int,
    warmup: int,
    settle: int,
    live_bytes: int,
    memory_first: bool,
    device: torch.device,
    desc: str = "",
    progress: bool = True,
) -> Tuple[Dict[Dims, List[float]], Dict[Dims, Optional[int]]]:
    """Seconds of ``repeats`` interleaved timed calls per configuration, and its memory (weights plus working
    memory, see the module docstring; None where unmeasurable).

    ``make(dims)`` builds a runner. Runners are kept while what they hold totals at most ``live_bytes``; the
    others are rebuilt, and warmed up again, at each visit. A kept one is called ``settle`` times untimed right
    before its timed call. ``memory_first``: the working memory is taken in the first call, and a kept runner
    holds it too (ONNX Runtime, whose arena keeps its memory: 35M sessions at batch 32 hold about a GB each);
    else it is taken after the warm-up, and a kept runner holds its weights."""
    live: Dict[Dims, _Runner] = {}
    memory: Dict[Dims, Optional[int]] = {}
    times: Dict[Dims, List[float]] = {d: [] for d in todo}

    def build(dims: Dims) -> _Runner:
        runner = make(dims)
        first = dims not in memory
        if first and memory_first:
            memory[dims] = _peak_growth(runner.call, device)
        for _ in range(warmup):
            runner.call()
        if first and not memory_first:
            memory[dims] = _peak_growth(runner.call, device)
        if memory[dims] is not None and first:
            memory[dims] += runner.weight_bytes
        return runner

    def held(dims: Dims, runner: _Runner) -> int:  # what a kept runner holds: an ORT arena stays with its session
        return memory[dims] if memory_first and memory[dims] is not None else runner.weight_bytes

    bar = tqdm(total=repeats * len(todo), desc=f"latency ({desc})", unit="call", disable=not progress)
    for r in range(repeats):
        shift = r % len(todo)
        for dims in [*todo[shift:], *todo[:shift]]:
            runner = live.get(dims)
            if runner is None:  # built and warmed up in this visit
                runner = build(dims)
                if sum(held(d, k) for d, k in live.items()) + held(dims, runner) <= live_bytes:
                    live[dims] = runner
            else:
                for _ in range(settle):
                    runner.call()
            t0 = time.perf_counter()
            runner.call()
            times[dims].append(time.perf_counter() - t0)
            bar.update()
    bar.close()
    live.clear()
    return times, memory


def measure_latency(
    model: MatMambaVision,
    configs: Sequence[SubmodelConfig],
    *,
    runtime: str = "eager",
    batch: int = 1,
    device: Any = "cpu",
    threads: Optional[int] = None,
    repeats: int = 10,
    warmup: int = 2,
    amp_dtype: Optional[torch.dtype] = None,
    cache: Optional[LatencyCache] = None,
    live_bytes: int = LIVE_BYTES,
    progress: bool = True,
    settle: Optional[int] = None,
) -> Tuple[Dict[str, Any], Dict[Dims, Dict[str, Any]]]:
    """Time every configuration of ``model`` (one batch of ``batch`` images at the model's input size).

    Returns (the :func:`latency_key`, {dims: record}); a record holds ``median_ms``, ``p90_ms``, ``memory_mb``
    (None where unmeasurable), ``repeats`` and ``cached``. Configurations found in ``cache`` under the same key
    are not timed again; new ones are stored in it. ``threads`` (default ``torch.get_num_threads()``) is set for the
    measurement only. Built submodels are kept while what they hold totals at most ``live_bytes`` (their weights; in
    ONNX Runtime also the session's arena); the configurations beyond that are rebuilt, and warmed up again, at each
    visit. A kept one is called ``settle`` times untimed right before its timed call (default:
    :func:`default_settle`, 1 in ONNX Runtime, else 0).
    """
    if not configs:
        raise ValueError("configs: nothing to time")
    for name, v, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    device = torch.device(device)
    threads = int(threads or torch.get_num_threads())
    settle = default_settle(runtime) if settle is None else settle
    key = latency_key(model, runtime, batch, device, threads, amp_dtype, settle)
    stored = cache.lookup(key) if cache is not None else {}
    results: Dict[Dims, Dict[str, Any]] = {}
    todo: List[Dims] = []
    for c in configs:
        dims = tuple(int(g) for g in c.dims)
        if dims_key(dims) in stored:
            results[dims] = dict(stored[dims_key(dims)], cached=True)
        elif dims not in todo:
            todo.append(dims)
    if not todo:
        return key, results
    x = torch.randn(batch, model.in_chans, *model.patch_embed.img_size, device=device)
    rounds = dict(repeats=repeats, warmup=warmup, settle=settle, live_bytes=live_bytes, desc=runtime, progress=progress)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="mmv_latency_") as folder, _compile_limits(runtime, len(todo)):
            if runtime == "onnxruntime":
                paths = {dims: str(_export_onnx(model, dims, Path(folder))) for dims in todo}
                times, memory, _ = _in_child(_ort_timings, paths, tuple(x.shape), threads, rounds)
            else:
                times, memory = _time_rounds(
                    todo,
                    lambda dims: _torch_runner(model, dims, x, runtime, amp_dtype),
                    memory_first=False,
                    device=device,
                    **rounds,
                )
    finally:
        torch.set_num_threads(saved_threads)
    new = {}
    for dims in todo:
        ms = [t * 1e3 for t in times[dims]]
        mem = memory.get(dims)
        rec = dict(
            median_ms=_percentile(ms, 50),
            p90_ms=_percentile(ms, 90),
            memory_mb=None if mem is None else mem / 2**20,
            repeats=len(ms),
        )
        new[dims_key(dims)] = rec
        results[dims] = dict(rec, cached=False)
    if cache is not None:
        cache.store(key, new)
    return key, results


def add_latency_columns(
    rows: Sequence[Dict[str, Any]], timings: Dict[Dims, Dict[str, Any]], metric: str = "top1"
) -> None:
    """Write ``latency_ms``, ``latency_p90_ms``, ``memory_mb`` and ``pareto_latency`` (on the front of
    ``metric`` against median latency) into validate.py's rows (matched by their ``dims``)."""
    for r in rows:
        rec = timings[tuple(int(g) for g in r["dims"])]
        r.update(latency_ms=rec["median_ms"], latency_p90_ms=rec["p90_ms"], memory_mb=rec["memory_mb"])
    front = set(pareto_front([r["latency_ms"] for r in rows], [r[metric] for r in rows]))
    for i, r in enumerate(rows):
        r["pareto_latency"] = i in front


def check_latency_args(args: argparse.Namespace, device: Any) -> None:
    """validate.py, before any evaluation: ValueError when ``--latency-runtime`` cannot run on ``--device``, and
    ModuleNotFoundError when it needs a package that is missing."""
    if not args.latency:
        return
    if args.latency_runtime == "onnxruntime":
        if torch.device(device).type != "cpu":
            raise ValueError(f"--latency-runtime onnxruntime times on the CPU; got --device {device}")
        missing = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise ModuleNotFoundError(
                f"--latency-runtime onnxruntime needs {', '.join(missing)}: pip install 'matmamba-vision[export]'"
            )


def latency_from_args(
    args: argparse.Namespace,
    model: MatMambaVision,
    configs: Sequence[SubmodelConfig],
    rows: Sequence[Dict[str, Any]],
    device: Any,
) -> Dict[str, Any]:
    """validate.py's ``--latency``: time ``configs`` as the flags say, add the latency columns to ``rows``;
    returns the key (machine, runtime, threads, batch, size, ...) with the cache file and repeats, for the meta."""
    amp_dtype = getattr(torch, args.amp_dtype) if getattr(args, "amp", False) else None
    spec = args.latency_cache if args.latency_cache is not None else str(default_cache_path())
    cache = None if spec.lower() == "none" else LatencyCache(spec)
    if cache is not None:
        here = latency_key(model, args.latency_runtime, args.latency_batch, device, args.latency_threads, amp_dtype)
        for why in cache.refused(here, same_model=True):
            print(f"latency cache {cache.path}: timings not reused here ({why})", flush=True)
    key, timings = measure_latency(
        model,
        configs,
        runtime=args.latency_runtime,
        batch=args.latency_batch,
        device=device,
        threads=args.latency_threads,
        repeats=args.latency_repeats,
        warmup=args.latency_warmup,
        amp_dtype=amp_dtype,
        cache=cache,
        live_bytes=args.latency_live_mb << 20,
    )
    add_latency_columns(rows, timings)
    cached = sum(1 for t in timings.values() if t["cached"])
    print(
        f"latency: {len(timings)} configurations on {key['machine']} ({key['runtime']}, {key['threads']} threads, "
        f"batch {key['batch']}), {cached} from the cache",
        flush=True,
    )
    return dict(key, cache=None if cache is None else str(cache.path), repeats=args.latency_repeats, cached=cached)


def latency_table(rows: Sequence[Dict[str, Any]], markdown: bool = False) -> str:
    """The configurations on the accuracy-latency front, fastest first."""
    front = sorted((r for r in rows if r.get("pareto_latency")), key=lambda r: r["latency_ms"])
    cols = ["name", "top1", "latency_ms", "latency_p90_ms", "memory_mb", "params", "gflops"]
    heads = ["configuration", "top-1 %", "median ms", "p90 ms", "memory MB", "params", "GFLOPs"]
    fmt = {"latency_ms": ".3f", "latency_p90_ms": ".3f", "memory_mb": ".1f", "gflops": ".4f"}
    title = f"Accuracy-latency Pareto front, {len(front)} of {len(rows)} configurations:"
    return title + ("\n\n" if markdown else "\n") + format_table(front, cols, heads, fmt, markdown)


def time_exported(
    path: os.PathLike,
    format: str,
    batch: int = 1,
    threads: Optional[int] = None,
    repeats: int = 10,
    warmup: int = 2,
) -> Dict[str, Any]:
    """Time an exported file in its runtime on the CPU (ONNX: ONNX Runtime; exported-program: the loaded
    program in eager PyTorch) at ``batch``; returns median_ms, p90_ms, memory_mb and what ran where."""
    from ..export import EXPORT_FORMATS, INPUT_NAME, sidecar_path

    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {format!r}")
    side = sidecar_path(path)
    info = json.loads(side.read_text()) if side.is_file() else {}
    shape = (info.get("input") or {}).get("shape")
    if not shape:
        raise ValueError(f"{path}: its JSON sidecar (with the input shape) is needed to time it")
    threads = int(threads or torch.get_num_threads())
    x = torch.randn(batch, *[int(s) for s in shape[1:]])
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        weight_bytes = Path(path).stat().st_size
        if format == "onnx":
            session = _ort_session(path, threads)
            feed = {INPUT_NAME: x.numpy()}

            def call():
                session.run(None, feed)

            runtime = f"onnxruntime {package_version('onnxruntime')} (CPU)"
            growth = _peak_growth(call, torch.device("cpu"))
            for _ in range(warmup):
                call()
        else:
            with open(path, "rb") as f:
                module = torch.export.load(f).module()

            def call():
                with torch.inference_mode():
                    module(x)

            runtime = f"torch {torch.__version__} (loaded ExportedProgram)"
            for _ in range(warmup):
                call()
            growth = _peak_growth(call, torch.device("cpu"))
        ms = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(saved)
    return dict(
        runtime=runtime,
        machine=machine_name("cpu"),
        threads=threads,
        batch=batch,
        median_ms=_percentile(ms, 50),
        p90_ms=_percentile(ms, 90),
        memory_mb=None if growth is None else (growth + weight_bytes) / 2**20,
        repeats=repeats,
    )
