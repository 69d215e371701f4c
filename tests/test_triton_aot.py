"""The Triton kernels compile for sm_80 and sm_90 at the launch arguments the models' wrappers compute, within
the GPUs' limits and issue 25's spill limits (benchmarks/triton_aot.py; no GPU needed, skipped without the
ptxas that ships in the triton wheel). The full check takes a few minutes on two cores."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import triton_aot  # noqa: E402
import triton_launches  # noqa: E402
from triton_launches import Scenario, record  # noqa: E402


def _kernels():
    """Names of the launchable kernels: every ``triton.jit`` function of the kernel modules that no other one
    calls (those are helpers, compiled into their callers)."""
    import triton

    fns = {
        name: obj
        for mod in triton_launches.kernel_modules()
        for name, obj in vars(mod).items()
        if isinstance(obj, triton.runtime.jit.JITFunction)
    }
    return {n for n in fns if not any(f"{n}(" in f.src for m, f in fns.items() if m != n)}


def test_one_block_launches_what_the_whole_model_does():
    """What lets the check record one block per model; and inference launches what training's forward does."""
    s = Scenario("135m", 1024, 1, "bf16", width=8, train=True)
    assert set(record(s, depth=1)) == set(record(s))
    infer = Scenario("35m", 224, 64, "fp16", width=8, train=False)
    assert set(record(infer, depth=1)) <= set(record(Scenario("35m", 224, 64, "fp16", width=8, train=True), depth=1))


def test_recorded_launches_are_the_wrappers_own():
    """The gated norm's wrapper launches over the active width with its own tile (strides from the model)."""
    launches = record(Scenario("35m", 224, 64, "bf16", width=2, train=False), depth=1)
    norm = [x for x in launches if x.name == "_norm_fwd_kernel"]
    assert len(norm) == 1
    from matmamba_vision.ops.triton.gated_norm import _tile

    kw = dict(norm[0].kwargs)
    block_m, block_d, warps = _tile(512)  # active inner width 2g at g = D/2 = 256
    assert (kw["BLOCK_M"], kw["BLOCK_D"], kw["num_warps"]) == (block_m, block_d, warps)
    rows = 64 * 197
    assert norm[0].grid == (-(-rows // block_m),)
    assert norm[0].args[0].dtype.itemsize == 2  # bf16 autocast: the projections' outputs are 16-bit


def test_kernels_compile_for_sm80_and_sm90_within_limits():
    why = triton_aot.tools_missing()
    if why:
        pytest.skip(why)
    report = triton_aot.check()
    print(report.table())
    print(f"{len(report.results)} specialisations, {report.seconds:.0f} s ({report.cpu_seconds:.0f} CPU s)")
    compiled = {r.spec.name for r in report.results}
    assert compiled == _kernels(), f"kernels never launched by the models: {_kernels() - compiled}"
    assert {r.spec.cc for r in report.results} == set(triton_aot.ARCHS)
    failures = report.failures()
    assert not failures, "\n".join(["", report.table(), *failures])


def test_missing_ptxas_is_a_reason_to_skip(tmp_path, monkeypatch):
    monkeypatch.setattr(triton_aot, "tool_dir", lambda: tmp_path)
    assert "ptxas is not in the triton wheel" in triton_aot.tools_missing()
