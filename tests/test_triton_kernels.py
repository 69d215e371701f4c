"""The Triton kernels (matmamba_vision/ops/triton), checked on the CPU through Triton's interpreter.

The interpreter is chosen by ``TRITON_INTERPRET=1`` before ``triton`` is imported, so tests/triton_interp runs
in one subprocess (this worker's ``triton`` is left as it is; one process pays the imports once).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_triton_kernels_under_interpreter():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this session runs tests/triton_interp itself")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "tests/triton_interp"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout.splitlines()[-1], proc.stdout[-2000:]


def test_triton_backend_on_cpu_without_interpreter_says_what_to_do():
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("under the interpreter CPU tensors are accepted")
    from matmamba_vision.ops import ssd_scan

    x, dt, B, C = torch.randn(1, 8, 2, 4), torch.rand(1, 8, 2), torch.randn(1, 8, 1, 16), torch.randn(1, 8, 1, 16)
    with pytest.raises(RuntimeError, match="CUDA tensors"):  # the dispatcher's refusal, as for mamba_ssm
        ssd_scan(x, dt, -torch.rand(2), B, C, backend="triton")
    # 'auto' keeps the torch path on the CPU
    torch.testing.assert_close(
        ssd_scan(x, dt, -torch.ones(2), B, C, backend="auto"), ssd_scan(x, dt, -torch.ones(2), B, C, backend="torch")
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_forward_never_waits_on_the_gpu(backend):
    """Batch-1 inference on CUDA makes no host synchronisation (so it can be captured in a CUDA graph)."""
    import timm

    model = (
        timm.create_model(
            "matmamba_vision_tiny_patch4_28",
            img_size=32,
            embed_dim=32,
            depth=2,
            d_state=16,
            headdim=4,
            ssd_backend=backend,
        )
        .cuda()
        .eval()
    )
    x = torch.randn(1, 1, 32, 32, device="cuda")
    with torch.no_grad():
        model(x)  # warm-up: compiles and caches outside the checked call
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            model(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
