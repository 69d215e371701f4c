"""``torch.library.opcheck`` on the Triton custom ops (through the interpreter): the schema, the autograd
registration, the fake implementations against the real outputs (shapes, strides, dtypes), and AOT dispatch
with dynamic shapes. Inputs are strided views of wider buffers and leading slices of weights, as the mixer
passes them."""

import pytest
import torch
import torch.nn.functional as F
from torch.library import opcheck

import matmamba_vision.ops.triton.causal_conv as conv_module
import matmamba_vision.ops.triton.gated_norm as norm_module
import matmamba_vision.ops.triton.ssd as ssd_module


def leaves(*tensors):
    """Detached copies that require grad (None stays None)."""
    return [None if t is None else t.detach().clone().requires_grad_() for t in tensors]


def ssd_inputs(seqlen, dtype, b=1, h=2, p=4, g=2, n=16):
    x = torch.randn(b, seqlen, h, p + 3).to(dtype)[..., :p]  # headdim a slice: strided
    dt = F.softplus(torch.randn(b, seqlen, h) - 1)
    A = -torch.empty(h).uniform_(1.0, 2.0)
    bc = torch.randn(b, seqlen, 2 * g * n).to(dtype)  # B and C views of one buffer
    B, C = bc[..., : g * n].view(b, seqlen, g, n), bc[..., g * n :].view(b, seqlen, g, n)
    return x, dt, A, B, C, torch.randn(h), torch.randn(b, h, p, n)


@pytest.mark.parametrize(  # 20 tokens: two chunks of 16, the second ragged; and none
    "seqlen, dtype, extras",
    [(20, torch.float32, True), (20, torch.float16, True), (20, torch.float32, False), (0, torch.float32, True)],
)
def test_ssd_ops(seqlen, dtype, extras):
    x, dt, A, B, C, D, h0 = ssd_inputs(seqlen, dtype)
    if not extras:
        D = h0 = None
    opcheck(ssd_module._ssd_fwd, (*leaves(x, dt, A, B, C, D, h0), 16))
    grad_y, grad_final = torch.randn(x.shape).to(dtype), torch.randn(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])
    opcheck(ssd_module._ssd_bwd, (x, dt, A, B, C, D, h0, grad_y, grad_final, 16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gated_norm_ops(dtype):
    y = torch.randn(2, 5, 24).to(dtype)
    z = torch.randn(2, 5, 3, 9).to(dtype)[..., :8].flatten(2)  # z a strided view, as of the (z, dt) buffer
    weight = (1 + 0.1 * torch.randn(30)).to(dtype)[:24]
    opcheck(norm_module._norm_fwd, (*leaves(y, z, weight), 1e-5))
    rstd = norm_module._norm_fwd(y, z, weight, 1e-5)[1]
    opcheck(norm_module._norm_bwd, (y, z, weight, rstd, torch.randn_like(y)))


@pytest.mark.parametrize("dtype, silu", [(torch.float32, True), (torch.float16, True), (torch.float32, False)])
def test_conv_ops(dtype, silu):
    """The backward's weight gradient once came back with strides (1, channels) against the fake's (k, 1)."""
    x = torch.randn(2, 9, 96).to(dtype)[..., :70]  # channels a slice of a wider projection output
    weight, bias = torch.randn(80, 4).to(dtype)[:70], torch.randn(80).to(dtype)[:70]
    opcheck(conv_module._conv_fwd, (*leaves(x, weight, bias), silu))
    opcheck(conv_module._conv_bwd, (x, weight, bias, torch.randn(2, 9, 70).to(dtype), silu))
