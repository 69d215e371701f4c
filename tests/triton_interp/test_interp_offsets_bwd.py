"""64-bit offsets in the SSD backward kernels: inputs whose batch offset (batch index x batch stride) or token
offset (token index x token stride) passes 2^31 elements, through the interpreter (which wraps int32 as a GPU does).

The inputs are ``torch.as_strided`` views over one large uninitialised storage: only the pages their elements sit
on are touched (a few MB), the rest is address space. The views start 2^31 elements into the storage, so an offset
wrapped to int32 still lands inside it and shows up as a wrong gradient, not a crash. The forward kernels that the
backward reruns (entering states, C.B) get compact copies here: their offsets are test_interp_offsets.py's.
"""

import pytest
import torch
import torch.nn.functional as F

import matmamba_vision.ops.triton.ssd as ssd_module

SHIFT = 1 << 31  # where the views start in the storage
H, P, G, N, Q = 2, 4, 1, 16, 16  # heads, headdim, groups, d_state, chunk
WIDTHS = [H * P, G * N, G * N, H * P]  # x, B, C and grad_y side by side in each token's row
ROW = sum(WIDTHS)

# (batch, seqlen, batch stride, token stride) in elements: batch 2 starts past 2^31 (2^30 + 2 rows per batch),
# or tokens 32.. of 40 do (2^26 between tokens; three chunks, the last ragged; one batch, its stride unused)
LAYOUTS = {"batch": (3, 20, (1 << 30) + 2 * ROW, ROW), "token": (1, 40, 1 << 26, 1 << 26)}


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


def far_views(batch, seqlen, batch_stride, token_stride, dtype=torch.float16):
    """x, B, C, grad_y as views at SHIFT + (batch index x batch_stride) + (token index x token_stride) of one
    storage, filled with random values (only the views' elements are written)."""
    storage = torch.empty(SHIFT + (batch - 1) * batch_stride + (seqlen - 1) * token_stride + ROW, dtype=dtype)
    views, col = [], 0
    for w in WIDTHS:
        v = torch.as_strided(storage, (batch, seqlen, w), (batch_stride, token_stride, 1), SHIFT + col)
        v.copy_(torch.randn(batch, seqlen, w))
        views.append(v)
        col += w
    x, B, C, gy = views
    return (
        x.view(batch, seqlen, H, P),
        B.view(batch, seqlen, G, N),
        C.view(batch, seqlen, G, N),
        gy.view(batch, seqlen, H, P),
    )


def compact_inputs(fn):
    """``fn`` (a forward kernel's wrapper) run on contiguous copies of its tensor arguments."""
    return lambda *args: fn(*(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_ssd_backward_with_offsets_past_2_31(layout, monkeypatch):
    batch, seqlen, batch_stride, token_stride = LAYOUTS[layout]
    x, B, C, gy = far_views(batch, seqlen, batch_stride, token_stride)
    far = max(batch_stride * (batch - 1), token_stride * (seqlen - 1))
    assert 2**31 <= far and batch_stride < 2**31 and token_stride < 2**31  # int32 arguments, int64 products
    dt = F.softplus(torch.randn(batch, seqlen, H) - 1.0)
    A, D, h0 = -torch.rand(H) - 0.5, torch.randn(H), torch.randn(batch, H, P, N)
    gfinal = torch.randn(batch, H, P, N)
    monkeypatch.setattr(ssd_module, "_entering_states", compact_inputs(ssd_module._entering_states))
    monkeypatch.setattr(ssd_module, "_chunk_cb", compact_inputs(ssd_module._chunk_cb))
    grads = ssd_module._ssd_bwd(x, dt, A, B, C, D, h0, gy, gfinal, Q)
    ref = ssd_module._ssd_bwd(x.contiguous(), dt, A, B.contiguous(), C.contiguous(), D, h0, gy.contiguous(), gfinal, Q)
    for name, g, r in zip(("dx", "ddt", "dA", "dB", "dC", "dD", "dh0"), grads, ref):
        assert max_rel(g, r) <= 1e-6, name
