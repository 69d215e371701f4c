"""Ahead-of-time compile check of the Triton kernels for sm_80 and sm_90, no GPU needed.

Records every launch the models make (:mod:`triton_launches`: 35M and 135M; 224 px batch 64, 1024 and 2048 px
batch 1; fp32, bf16 and fp16 autocast; inference and a training step; widths D, D/2, D/4, D/8; the
initial-state path), turns each into the specialisation Triton's launcher would compile (its own binder:
argument types, the 16-divisibility and ==1 specialisation of integers, 16-byte alignment of pointers,
constexprs, ``num_warps``, ``num_stages``), compiles each unique one for each architecture with
``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` (ptxas from the triton wheel), and reads
registers, spills and stack from ptxas's own report, static shared memory from ``cuobjdump
--dump-resource-usage`` and dynamic shared memory from Triton's metadata. Then it checks:

- shared memory per block (dynamic + static) <= the architecture's opt-in maximum (CUDA: 163 KB on sm_80,
  227 KB on sm_90);
- registers <= 255 per thread, and registers (allocated per warp in units of 256) x threads <= 64K per block;
- grid: x < 2^31, y and z <= 65535 at every recorded launch;
- spills (ptxas's spill stores or loads, in 4-byte words per thread): none at bf16 and fp16, at most 32 at fp32.

    python benchmarks/triton_aot.py [--jobs 2] [--arch 80 90]   # Markdown table: worst case per kernel, arch, dtype
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))

from triton_launches import Launch, record, scenarios  # noqa: E402

ARCHS = (80, 90)
# cudaDevAttrMaxSharedMemoryPerBlockOptin (CUDA C++ Programming Guide, "Technical Specifications per Compute
# Capability"): 163 KB on 8.0, 227 KB on 9.0.
MAX_SHARED = {80: 163 * 1024, 90: 227 * 1024}
MAX_REGS_THREAD = 255
MAX_REGS_BLOCK = 64 * 1024
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256 (8 per thread)
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_SPILL_WORDS = {"fp32": 32, "bf16": 0, "fp16": 0}  # issue 25's limits, per thread


def tool_dir() -> Path:
    """``triton/backends/nvidia/bin`` of the installed triton wheel (ptxas, cuobjdump)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def tools_missing() -> Optional[str]:
    """Why the check cannot run here (no triton, or no ptxas/cuobjdump in its wheel), or None."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"triton does not import: {e!r}"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(tool_dir() / tool, os.X_OK):
            return f"{tool} is not in the triton wheel ({tool_dir()})"
    return None


@dataclass(frozen=True)
class Spec:
    """One specialisation to compile: the kernel, the architecture and what Triton's launcher derives from the
    launch (signature, constexprs, attributes, options), all hashable."""

    module: str
    name: str
    cc: int
    signature: Tuple[Tuple[str, str], ...]
    constexprs: Tuple[Tuple[Tuple[int, ...], object], ...]
    attrs: Tuple[Tuple[Tuple[int, ...], Tuple], ...]
    options: Tuple[Tuple[str, object], ...]


@dataclass
class Result:
    spec: Spec
    precisions: List[str] = field(default_factory=list)  # of the scenarios that launch it (fp32 | bf16 | fp16)
    regs: int = 0
    spill_stores: int = 0  # bytes per thread
    spill_loads: int = 0
    stack: int = 0
    shared_dynamic: int = 0
    shared_static: int = 0
    num_warps: int = 0
    error: Optional[str] = None
    scenarios: List[str] = field(default_factory=list)

    @property
    def spill_words(self) -> int:
        return max(self.spill_stores, self.spill_loads) // 4

    @property
    def shared(self) -> int:
        return self.shared_dynamic + self.shared_static

    @property
    def max_spill_words(self) -> int:
        """The strictest limit of the precisions that launch it."""
        return min(MAX_SPILL_WORDS[p] for p in self.precisions)


def _hashable(v):
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, (list, tuple)):
        return tuple(_hashable(x) for x in v)
    return v


def specialise(launch: Launch, cc: int) -> Spec:
    """What Triton's launcher compiles for ``launch`` on compute capability ``cc`` (its binder and
    ``_pack_args``, the code ``JITFunction.run`` calls, with the target's backend)."""
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel()
    backend = make_backend(GPUTarget("cuda", cc, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = dict(launch.kwargs)
    kwargs["debug"] = kwargs.get("debug", kernel.debug) or knobs.runtime.debug
    kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return Spec(
        launch.module,
        launch.name,
        cc,
        tuple(signature.items()),
        _hashable(constexprs),
        _hashable(attrs),
        _hashable(options.__dict__),
    )


_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_CUOBJDUMP = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


def _record(s, depth):
    return record(s, depth=depth)


def _init_worker(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)  # compile real kernels, whatever the parent runs under
    os.environ["TRITON_CACHE_DIR"] = cache_dir


def compile_spec(spec: Spec) -> Tuple[Spec, Dict]:
    """Compile ``spec`` (in a worker); returns its resource figures, or ``error``."""
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(spec.module), spec.name)
    src = ASTSource(
        kernel, dict(spec.signature), dict(spec.constexprs), {k: [list(a) for a in v] for k, v in spec.attrs}
    )
    options = dict(spec.options)  # CUDAOptions' fields, its tuples as they were
    knobs.nvidia.dump_ptxas_log = True  # ptxas -v's report, printed by Triton after each compile
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget("cuda", spec.cc, 32), options=options)
    except Exception as e:  # a compile error is a finding, not a crash of the check
        return spec, dict(error=f"{type(e).__name__}: {str(e)[:800]}")
    text = log.getvalue()
    out = dict(shared_dynamic=int(compiled.metadata.shared), num_warps=int(compiled.metadata.num_warps))
    m, r = _PTXAS_SPILL.search(text), _PTXAS_REGS.search(text)
    if m is None or r is None:
        return spec, dict(error=f"no ptxas report in Triton's output: {text[-400:]!r}")
    out.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)), regs=int(r.group(1)))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        dump = subprocess.run(
            [str(tool_dir() / "cuobjdump"), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    c = _CUOBJDUMP.search(dump)
    if c is None:
        return spec, dict(error=f"no resource usage from cuobjdump: {dump[-400:]!r}")
    out.update(shared_static=int(c.group(3)))
    if int(c.group(1)) != out["regs"]:
        out["error"] = f"ptxas reports {out['regs']} registers, cuobjdump {c.group(1)}"
    return spec, out


@dataclass
class Report:
    results: List[Result]
    grid_errors: List[str]
    launches: int
    seconds: float
    cpu_seconds: float  # of the worker processes (compiles, recording), from getrusage

    def failures(self) -> List[str]:
        """One line per breach (empty: the check holds)."""
        lines = list(self.grid_errors)
        for r in self.results:
            more = f" and {len(r.scenarios) - 1} more" if len(r.scenarios) > 1 else ""
            where = f"{r.spec.name} sm_{r.spec.cc} ({r.scenarios[0]}{more})"
            if r.error:
                lines.append(f"{where}: compile error: {r.error}")
                continue
            threads = r.num_warps * 32
            if r.shared > MAX_SHARED[r.spec.cc]:
                lines.append(f"{where}: shared memory {r.shared} B > {MAX_SHARED[r.spec.cc]} B")
            if r.regs > MAX_REGS_THREAD:
                lines.append(f"{where}: {r.regs} registers per thread > {MAX_REGS_THREAD}")
            alloc = -(-r.regs * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT * r.num_warps
            if alloc > MAX_REGS_BLOCK:
                lines.append(f"{where}: {r.regs} registers x {threads} threads ({alloc} allocated) > {MAX_REGS_BLOCK}")
            if r.spill_words > r.max_spill_words:
                lines.append(
                    f"{where}: spills {r.spill_words} words per thread (stores {r.spill_stores} B, loads "
                    f"{r.spill_loads} B) > {r.max_spill_words} allowed at {'/'.join(r.precisions)}"
                )
        return lines

    def worst(self) -> List[Tuple[str, int, str, int, Result]]:
        """(kernel, arch, precision, specialisations, the worst of them: most spills, then registers, shared),
        per kernel, arch and precision of the scenarios that launch it."""
        best: Dict = {}
        for r in self.results:
            for prec in r.precisions:
                key = (r.spec.name, r.spec.cc, prec)
                rank = (r.error is not None, r.spill_words, r.regs, r.shared)
                n, old = best.get(key, (0, None))
                if old is None or rank > (old.error is not None, old.spill_words, old.regs, old.shared):
                    old = r
                best[key] = (n + 1, old)
        order = {p: i for i, p in enumerate(MAX_SPILL_WORDS)}
        keys = sorted(best, key=lambda k: (k[0], k[1], order[k[2]]))
        return [(*k, *best[k]) for k in keys]

    def table(self) -> str:
        """Markdown: the worst case per kernel, arch and precision."""
        rows = [
            "| kernel | arch | dtype | specs | regs | spill words | stack B | shared KB | warps |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, cc, prec, n, r in self.worst():
            if r.error:
                rows.append(f"| `{name}` | sm_{cc} | {prec} | {n} | error | | | | |")
                continue
            flag = " **over**" if r.spill_words > MAX_SPILL_WORDS[prec] else ""
            rows.append(
                f"| `{name}` | sm_{cc} | {prec} | {n} | {r.regs} | {r.spill_words}{flag} | "
                f"{r.stack} | {r.shared / 1024:.1f} | {r.num_warps} |"
            )
        return "\n".join(rows)


def check(
    scenario_list: Optional[Iterable] = None,
    archs: Iterable[int] = ARCHS,
    jobs: int = 2,
    depth: Optional[int] = 1,
) -> Report:
    """Record, specialise, compile and measure (see the module's docstring); ``depth``: blocks recorded per
    model (None: all; its blocks' mixers are alike and launch alike, which tests/test_triton_aot.py checks)."""
    t0 = time.perf_counter()
    todo = list(scenario_list if scenario_list is not None else scenarios())
    cache = tempfile.mkdtemp(prefix="triton_aot_")
    try:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch's threads
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(cache,)) as pool:
            launches: Dict[Launch, List] = {}  # unique launch -> the scenarios that make it
            for s, recorded in zip(todo, pool.map(_record, todo, [depth] * len(todo))):
                for launch in dict.fromkeys(recorded):
                    launches.setdefault(launch, []).append(s)
            grid_errors = []
            specs: Dict[Spec, Result] = {}
            for launch, made_by in launches.items():
                grid = tuple(launch.grid) + (1,) * (3 - len(launch.grid))
                if any(g < 1 or g > cap for g, cap in zip(grid, MAX_GRID)):
                    grid_errors.append(f"{launch.name} ({made_by[0].label()}): grid {grid} outside 1..{MAX_GRID}")
                for cc in archs:
                    spec = specialise(launch, cc)
                    res = specs.setdefault(spec, Result(spec))
                    for s in made_by:
                        if s.label() not in res.scenarios:
                            res.scenarios.append(s.label())
                        if s.precision not in res.precisions:
                            res.precisions.append(s.precision)
            # the costliest kernels (the SSD's) first, so the pool's last tasks are short ones
            order = sorted(specs, key=lambda s: (not s.name.startswith("_chunk"), s.name))
            for spec, figures in pool.map(compile_spec, order):
                for k, v in figures.items():
                    setattr(specs[spec], k, v)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Report(
        list(specs.values()), grid_errors, len(launches), time.perf_counter() - t0, cpu.ru_utime + cpu.ru_stime
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2, help="compiler processes")
    ap.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=list(ARCHS))
    args = ap.parse_args()
    why = tools_missing()
    if why:
        ap.exit(2, f"triton_aot: {why}\n")
    report = check(archs=args.arch, jobs=args.jobs)
    print(report.table())
    print(
        f"\n{len(report.results)} specialisations from {report.launches} unique launches, "
        f"{report.seconds:.0f} s with {args.jobs} processes ({report.cpu_seconds:.0f} CPU s in them)"
    )
    fails = report.failures()
    for line in fails:
        print(f"FAIL {line}")
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
