"""64-bit offsets: inputs whose token stride times token index passes 2^31 elements, through the interpreter.

The views are ``torch.as_strided`` over one large uninitialised storage: only the pages the tokens sit on are
touched (a few MB), the rest is address space. The storage starts 2^31 elements before the views, so an offset
wrapped to int32 still lands inside it and shows up as a wrong result, not a crash.
"""

import torch

from matmamba_vision.ops import causal_conv1d_ref, gated_rms_norm_ref, ssd_scan_ref
from matmamba_vision.ops.triton.causal_conv import causal_conv1d
from matmamba_vision.ops.triton.gated_norm import gated_rms_norm
from matmamba_vision.ops.triton.ssd import ssd

STRIDE = 1 << 20  # elements between tokens
SHIFT = 1 << 31  # where the views start in the storage
TOKENS = 2048 + 64 + 5  # tokens 2048.. have t * STRIDE >= 2^31: two chunks of 64 past it, the last ragged


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


def wide_views(widths, dtype=torch.float16):
    """One (1, TOKENS, w) view per width, side by side in each token's row of a storage with STRIDE elements
    between tokens; filled with random values (only the views' elements are written)."""
    storage = torch.empty(SHIFT + TOKENS * STRIDE, dtype=dtype)
    views, col = [], 0
    for w in widths:
        v = torch.as_strided(storage, (1, TOKENS, w), (TOKENS * STRIDE, STRIDE, 1), SHIFT + col)
        v.copy_(torch.randn(1, TOKENS, w))
        views.append(v)
        col += w
    return views


def test_ssd_forward_with_token_offsets_past_2_31():
    h, p, g, n = 2, 4, 1, 16
    xv, dtv, Bv, Cv = wide_views([h * p, h, g * n, g * n])
    x, B, C = xv.view(1, TOKENS, h, p), Bv.view(1, TOKENS, g, n), Cv.view(1, TOKENS, g, n)
    dt = torch.nn.functional.softplus(dtv.float() - 1.0).half()
    dt = torch.as_strided(dtv, dtv.shape, dtv.stride()).copy_(dt)
    assert x.stride(1) * (TOKENS - 1) >= 2**31
    A, D, h0 = -torch.rand(h) - 0.5, torch.randn(h), torch.randn(1, h, p, n)
    y, final = ssd(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True, chunk_size=64)
    compact = [t.contiguous() for t in (x, dt, B, C)]
    y_ref, final_ref = ssd_scan_ref(
        *compact[:2], A, *compact[2:], chunk_size=64, initial_state=h0, return_final_state=True, D=D
    )
    assert max_rel(y, y_ref) <= 2e-3
    assert max_rel(final, final_ref) <= 2e-5


def test_gated_norm_and_conv_with_row_offsets_past_2_31():
    d = 16
    y, z, x = wide_views([d, d, d])
    weight, bias = torch.randn(d).half(), torch.randn(d).half()
    assert max_rel(gated_rms_norm(y, z, weight), gated_rms_norm_ref(y.contiguous(), z.contiguous(), weight)) <= 3e-3
    conv_w = torch.randn(d, 4).half()
    assert max_rel(causal_conv1d(x, conv_w, bias), causal_conv1d_ref(x.contiguous(), conv_w, bias)) <= 3e-3
