"""The chunked SSD scan against the recurrence's definition, evaluated step by step in float64."""

import pytest
import torch

from matmamba_vision.ops import SSD_BACKENDS, check_ssd_backend, ssd_scan
from matmamba_vision.ops import ssd_recurrence_ref as recurrence


def make_inputs(b, seqlen, h, p, g, n, dtype=torch.float32, dt_scale=0.5, a_scale=4.0):
    x = torch.randn(b, seqlen, h, p, dtype=dtype)
    dt = (torch.rand(b, seqlen, h) * dt_scale + 1e-3).to(dtype)
    A = -(torch.rand(h) * a_scale + 0.1)
    B = torch.randn(b, seqlen, g, n, dtype=dtype)
    C = torch.randn(b, seqlen, g, n, dtype=dtype)
    return x, dt, A, B, C


SHAPES = [  # (batch, seqlen, heads, headdim, groups, d_state, chunk)
    (2, 37, 4, 3, 1, 5, 8),  # several chunks, ragged last chunk
    (2, 50, 6, 2, 2, 4, 16),  # two groups
    (1, 16, 2, 2, 1, 3, 16),  # exactly one chunk
    (1, 197, 8, 4, 1, 16, 256),  # one chunk longer than the sequence (the 224 px case)
    (1, 100, 4, 4, 1, 8, 7),  # chunk size that divides nothing
    (3, 1, 2, 2, 1, 2, 4),  # a single token
]


@pytest.mark.parametrize("shape", SHAPES)
def test_values_match_recurrence(shape):
    *dims, chunk = shape
    x, dt, A, B, C = make_inputs(*dims)
    y = ssd_scan(x, dt, A, B, C, chunk, backend="torch")
    ref = recurrence(x, dt, A, B, C)
    assert y.dtype == torch.float32 and y.shape == x.shape
    torch.testing.assert_close(y.double(), ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[1], SHAPES[4]])
def test_gradients_match_recurrence(shape):
    *dims, chunk = shape
    inputs = [t.double().requires_grad_() for t in make_inputs(*dims)]
    weight = torch.randn(inputs[0].shape, dtype=torch.float64)
    (ssd_scan(*[t.float() for t in inputs], chunk_size=chunk, backend="torch").double() * weight).sum().backward()
    ours = [t.grad.clone() for t in inputs]
    for t in inputs:
        t.grad = None
    (recurrence(*inputs) * weight).sum().backward()
    for name, got, ref in zip("x dt A B C".split(), ours, [t.grad for t in inputs]):
        torch.testing.assert_close(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item(), msg=name)


def test_chunk_size_does_not_change_result():
    x, dt, A, B, C = make_inputs(2, 70, 4, 4, 1, 8)
    ys = [ssd_scan(x, dt, A, B, C, q, backend="torch") for q in (1, 5, 16, 64, 256)]
    for y in ys[1:]:
        torch.testing.assert_close(y, ys[0], rtol=1e-4, atol=1e-4)


def test_bf16_inputs_accumulate_in_fp32():
    x, dt, A, B, C = make_inputs(2, 90, 4, 4, 1, 8)
    xb, dtb, Bb, Cb = (t.bfloat16() for t in (x, dt, B, C))
    y = ssd_scan(xb, dtb, A, Bb, Cb, 32, backend="torch")
    assert y.dtype == torch.bfloat16
    ref = recurrence(xb.float(), dtb.float(), A, Bb.float(), Cb.float())
    # only the output rounding to bf16 remains: fp32 accumulation keeps the error at bf16's resolution
    torch.testing.assert_close(y.double(), ref, rtol=1e-2, atol=1e-2 * ref.abs().max().item())


def test_no_grad_path_equals_grad_path():
    x, dt, A, B, C = make_inputs(2, 40, 4, 4, 1, 8)
    with torch.no_grad():
        y0 = ssd_scan(x, dt, A, B, C, 16, backend="torch")
    y1 = ssd_scan(x, dt, A.requires_grad_(), B, C, 16, backend="torch")
    torch.testing.assert_close(y0, y1.detach(), rtol=0, atol=0)


def test_backend_names():
    assert SSD_BACKENDS[:2] == ("auto", "torch")
    with pytest.raises(ValueError, match="ssd_backend must be one of"):
        check_ssd_backend("cuda_fast")
    x, dt, A, B, C = make_inputs(1, 10, 2, 2, 1, 4)
    torch.testing.assert_close(
        ssd_scan(x, dt, A, B, C, 4, backend="auto"), ssd_scan(x, dt, A, B, C, 4, backend="torch")
    )
    with pytest.raises(ValueError):
        ssd_scan(x, dt, A, B, C, 4, backend="nope")


def test_mamba_ssm_backend_on_cpu_says_what_to_do():
    x, dt, A, B, C = make_inputs(1, 10, 2, 2, 1, 4)
    with pytest.raises(RuntimeError, match="ssd_backend='torch'"):
        ssd_scan(x, dt, A, B, C, 4, backend="mamba_ssm")


def test_heads_must_fill_groups():
    x, dt, A, B, C = make_inputs(1, 10, 3, 2, 2, 4)
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd_scan(x, dt, A, B, C, 4, backend="torch")


def test_exported_decay_form_equals_the_masked_one():
    """The exported graph's decay (clamp and subtract, no select) matches the eager masked form: the same
    zeros below e^-60, the kept terms within e^-60 (~1e-26)."""
    from matmamba_vision.ops.ssd_ref import exp_dropped, exp_dropped_traced

    q = 40
    a = torch.cumsum(-torch.rand(3, q) * torch.tensor([[0.1], [3.0], [9.0]]), dim=-1)  # cumulative decays
    seg = a.unsqueeze(-1) - a.unsqueeze(-2)  # <= 0 on and below the diagonal, > 0 above
    keep = torch.ones(q, q, dtype=torch.bool).tril_(-1)
    want = exp_dropped(seg.masked_fill(~keep, 0.0))
    got = exp_dropped_traced(seg)
    assert ((got == 0) == (want == 0)).all() and (want == 0).any()
    torch.testing.assert_close(got, want, rtol=0, atol=1e-25)
