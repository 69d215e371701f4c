"""bf16 inputs through the interpreter: the dots that take 16-bit operands on a GPU (ops/triton/ssd.py,
``_ops16``) multiply float32 operands here, as the interpreter holds bf16 as uint16 and would multiply integers."""

import pytest
import torch
import torch.nn.functional as F

import matmamba_vision.ops.triton.ssd as ssd_module
from matmamba_vision.ops import ssd_recurrence_ref
from matmamba_vision.ops.triton.ssd import ssd


def test_ssd_forward_bf16_matches_recurrence():
    torch.manual_seed(0)
    x = torch.randn(1, 37, 4, 4).bfloat16()
    dt, A = F.softplus(torch.randn(1, 37, 4) - 1), -torch.rand(4) - 1
    B, C = torch.randn(1, 37, 2, 16).bfloat16(), torch.randn(1, 37, 2, 16).bfloat16()
    y = ssd(x, dt, A, B, C, chunk_size=16)
    y_ref = ssd_recurrence_ref(x, dt, A, B, C)
    assert y.dtype == torch.bfloat16
    # y cast to bf16, which the interpreter truncates: under 2^-8 of a value (measured: 3.6e-3 of the max)
    assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item() <= 1e-2


# The operand switches that benchmarks/ssd_dot_precision.py chose, per kernel and input dtype, as a GPU gets them:
# 16-bit dots take exact 16-bit values, or float32 values rounded to bf16 where the measured errors allowed.
CHOSEN = {
    torch.bfloat16: {"OPS16": True, "SCORES16": True, "XGY16": True, "DSB16": True, "WB16": True},
    torch.float16: {"OPS16": True, "SCORES16": False, "XGY16": True, "DSB16": False, "WB16": False},
    torch.float32: {"OPS16": False, "SCORES16": False, "XGY16": False, "DSB16": False, "WB16": False},
}
KERNELS = {
    "_chunk_cb_kernel": ("OPS16",),
    "_chunk_scan_kernel": ("SCORES16",),
    "_chunk_bwd_kernel": ("XGY16", "DSB16"),
    "_chunk_w_kernel": ("OPS16",),
    "_chunk_bwd_bc_kernel": ("WB16",),
}


@pytest.mark.parametrize("dtype", list(CHOSEN))
def test_ssd_16bit_operands_as_chosen_on_gpu(dtype, monkeypatch):
    """The switches each launch gets outside the interpreter (recorded, not run: the interpreter cannot multiply
    bf16); fp16 inputs take only exact 16-bit operands, float32 inputs none."""
    seen = {}
    monkeypatch.setattr(ssd_module, "interpreter_active", lambda: False)
    monkeypatch.setattr(ssd_module, "launch", lambda kernel, grid, *a, **kw: seen.setdefault(kernel.fn.__name__, kw))
    x = torch.randn(1, 40, 2, 16).to(dtype)
    dt, A = torch.rand(1, 40, 2), -torch.rand(2)
    B, C = torch.randn(1, 40, 1, 32).to(dtype), torch.randn(1, 40, 1, 32).to(dtype)
    ssd_module._ssd_fwd(x, dt, A, B, C, None, None, 16)
    ssd_module._ssd_bwd(x, dt, A, B, C, None, None, x.clone(), torch.zeros(1, 2, 16, 32), 16)
    for kernel, names in KERNELS.items():
        assert {n: seen[kernel][n] for n in names} == {n: CHOSEN[dtype][n] for n in names}, kernel
    switches = {(k, n) for k, kw in seen.items() for n in kw if n.endswith("16")}
    assert switches == {(k, n) for k, names in KERNELS.items() for n in names}  # none left unchecked
