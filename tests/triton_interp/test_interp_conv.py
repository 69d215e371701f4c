"""Causal depthwise conv1d + SiLU in Triton against its plain-torch reference (forward and the gradients of x,
weight and bias), through the interpreter."""

import pytest
import torch

from matmamba_vision.ops.causal_conv import causal_conv1d_ref
from matmamba_vision.ops.triton.causal_conv import causal_conv1d

# fp32: kernels and reference differ only in summation order; fp16: outputs and grads rounded to fp16
# (max error relative to the largest reference value).
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize(
    "seqlen,k,silu,dtype",
    [
        (37, 4, True, torch.float32),
        (37, 4, True, torch.float16),
        (1, 4, True, torch.float32),
        (9, 2, False, torch.float32),
    ],
)
def test_conv_matches_reference(dtype, seqlen, k, silu):
    # A leading slice of wider weights and a strided slice of a wider buffer, as the mixer passes them.
    buf = torch.randn(2, seqlen, 96, dtype=dtype, requires_grad=True)
    weight = torch.randn(80, k, dtype=dtype, requires_grad=True)
    bias = torch.randn(80, dtype=dtype, requires_grad=True)
    x = buf[:, :, :70]
    y = causal_conv1d(x, weight[:70], bias[:70], silu=silu)
    assert y.shape == x.shape and y.dtype == dtype
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (buf, weight, bias), grad)
    ref_in = [t.detach().float().requires_grad_() for t in (buf, weight, bias)]
    y_ref = causal_conv1d_ref(ref_in[0][:, :, :70], ref_in[1][:70], ref_in[2][:70], silu=silu)
    want = torch.autograd.grad(y_ref, ref_in, grad.float())
    assert max_rel(y, y_ref) <= TOL[dtype]
    for name, g, w in zip(("x", "weight", "bias"), got, want):
        assert g.dtype == dtype
        assert max_rel(g, w) <= TOL[dtype], name
    assert not got[1][70:].any() and not got[0][:, :, 70:].any()  # inactive channels untouched


def test_conv_rejects_bad_shapes():
    with pytest.raises(ValueError, match="channels"):
        causal_conv1d(torch.randn(1, 4, 8), torch.randn(6, 4), torch.randn(8))
