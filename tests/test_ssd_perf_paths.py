"""Correctness of the SSD scan's fast paths and their fallbacks (issue 5). Nothing here is timed."""

from __future__ import annotations

import functools

import pytest
import torch

import matmamba_vision.ops.ssd_fast as ssd_fast
from matmamba_vision.ops import choose_chunk_len, ssd_scan, ssd_scan_ref
from matmamba_vision.ops import ssd_recurrence_ref as recurrence

TORCH_SCAN = functools.partial(ssd_scan, backend="torch")  # the fast path and its fallbacks


def inputs(b=2, L=70, h=8, p=4, g=1, n=8, dt_scale=0.1, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=dtype)  # noqa: E731
    dt = torch.rand(b, L, h, generator=gen, dtype=dtype) * dt_scale
    A = -(torch.rand(h, generator=gen, dtype=dtype) * 15 + 1)
    return r(b, L, h, p), dt, A, r(b, L, g, n), r(b, L, g, n)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def count_paths(monkeypatch):
    calls = {"factorised": 0, "exact": 0, "unsafe": 0, "row_blocks": 0}
    fact, exact, rows = ssd_fast._ssd_factorised, ssd_fast.ssd_chunked_exact, ssd_fast._ssd_row_blocks

    def rb(*a, **k):
        y = rows(*a, **k)
        calls["row_blocks"] += y is not None
        return y

    def f(*a):
        y, bad, final = fact(*a)
        calls["factorised"] += 1
        calls["unsafe"] += int(bad.sum())
        return y, bad, final

    def e(*a):
        calls["exact"] += 1
        return exact(*a)

    monkeypatch.setattr(ssd_fast, "_ssd_factorised", f)
    monkeypatch.setattr(ssd_fast, "ssd_chunked_exact", e)
    monkeypatch.setattr(ssd_fast, "_ssd_row_blocks", rb)
    return calls


@pytest.mark.parametrize("L,chunk,g", [(1, 256, 1), (37, 256, 1), (70, 16, 1), (130, 256, 2), (300, 64, 1)])
def test_factorised_matches_recurrence(L, chunk, g, monkeypatch):
    calls = count_paths(monkeypatch)
    x, dt, A, B, C = inputs(L=L, g=g)
    y = TORCH_SCAN(*(t.float() for t in (x, dt, A, B, C)), chunk_size=chunk)
    assert calls["factorised"] + calls["row_blocks"] >= 1 and calls["unsafe"] == 0 and calls["exact"] == 0
    assert rel(y, recurrence(x, dt, A, B, C)) < 2e-6


@pytest.mark.parametrize("dt_scale,fallback", [(0.05, False), (2.0, True)])
def test_row_blocks_recentre_and_fall_back(dt_scale, fallback, monkeypatch):
    """Short sequences: one chunk, split into row blocks when the whole range is unsafe; a head unsafe even
    per block is redone by the chunked path."""
    calls = count_paths(monkeypatch)
    x, dt, A, B, C = inputs(L=200, h=16, n=128, dt_scale=dt_scale)
    if fallback:
        dt = dt * 0.01
        dt[..., 0] = 30.0  # one head: e^-480 per token
    y = TORCH_SCAN(*(t.float() for t in (x, dt, A, B, C)))
    assert calls["row_blocks"] == 1 and (calls["factorised"] + calls["exact"] > 0) == fallback
    assert rel(y, recurrence(x, dt, A, B, C)) < 2e-6


def test_unsafe_head_redone_in_split_row_blocks(monkeypatch):
    """A head unsafe over the whole sequence but safe over quarters of it is redone by splitting the row
    blocks (reusing their rows of tril(C B^T)), not by the chunked path; output and gradients exact."""
    calls = count_paths(monkeypatch)
    ts = inputs(L=200, h=16, n=128, dt_scale=0.05)
    ts[2][0], ts[1][..., 0] = -16.0, 0.1  # 1.6 nats per token: unsafe over 200 or 100 rows, safe over 50
    w = torch.randn(ts[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    leaves = [t.clone().requires_grad_() for t in ts]
    y_ref = recurrence(*leaves)
    ref = torch.autograd.grad((y_ref * w).sum(), leaves)
    fl = [t.float().requires_grad_() for t in ts]
    y = TORCH_SCAN(*fl)
    got = torch.autograd.grad((y.double() * w).sum(), fl)
    with torch.no_grad():
        y_nograd = TORCH_SCAN(*(t.float() for t in ts))
    assert calls["row_blocks"] == 2 and calls["factorised"] == 0 and calls["exact"] == 0
    assert rel(y, y_ref) < 2e-6 and rel(y_nograd, y_ref) < 2e-6
    for a, r in zip(got, ref):
        assert rel(a, r) < 1e-4


def test_unsafe_range_falls_back_and_stays_exact(monkeypatch):
    """Fast-decaying heads (range >> 80 nats per chunk) must be redone by shorter chunks / the exact path."""
    calls = count_paths(monkeypatch)
    x, dt, A, B, C = inputs(L=200, h=8, dt_scale=0.1)
    dt[..., :3] *= 300  # three heads decay by ~ e^-1000 over a chunk
    y = TORCH_SCAN(*(t.float() for t in (x, dt, A, B, C)))
    assert calls["unsafe"] > 0 and calls["factorised"] + calls["exact"] >= 2
    assert torch.isfinite(y).all()
    assert rel(y, recurrence(x, dt, A, B, C)) < 1e-5


def test_one_unsafe_head_redone_with_shorter_factorised_chunks(monkeypatch):
    calls = count_paths(monkeypatch)
    x, dt, A, B, C = inputs(L=256, h=8, dt_scale=0.02)
    A[0], dt[..., 0] = -16.0, 0.1  # 1.6 nats per token: unsafe over 256 tokens, safe over 16..64
    y = TORCH_SCAN(*(t.float() for t in (x, dt, A, B, C)))
    assert calls["unsafe"] == 1 and calls["factorised"] >= 2 and calls["exact"] == 0
    assert rel(y, recurrence(x, dt, A, B, C)) < 2e-6


def test_exact_path_reached_for_extreme_decay(monkeypatch):
    calls = count_paths(monkeypatch)
    x, dt, A, B, C = inputs(L=64, h=4, dt_scale=50.0)  # every head, every chunk length: unsafe
    y = TORCH_SCAN(*(t.float() for t in (x, dt, A, B, C)))
    assert calls["exact"] >= 1
    assert rel(y, recurrence(x, dt, A, B, C)) < 1e-5


def test_reference_chunks_and_chunk_choice():
    x, dt, A, B, C = (t.float() for t in inputs(L=150))
    ref = recurrence(*(t.double() for t in (x, dt, A, B, C)))
    for chunk in (8, 64, 256):
        assert rel(ssd_scan_ref(x, dt, A, B, C, chunk_size=chunk), ref) < 2e-6
    assert choose_chunk_len(197, 128) == 197
    q = choose_chunk_len(4097, 128)
    assert q <= 128 and -(-4097 // q) * q - 4097 < -(-4097 // q)


def test_no_grad_and_grad_paths_agree():
    x, dt, A, B, C = (t.float() for t in inputs(L=300, g=2))
    with torch.no_grad():
        y0 = TORCH_SCAN(x, dt, A, B, C, chunk_size=64)
    y1 = TORCH_SCAN(*(t.clone().requires_grad_() for t in (x, dt, A, B, C)), chunk_size=64)
    assert rel(y0, y1.detach()) < 1e-6


@pytest.mark.parametrize("dt_scale", [0.1, 30.0])
def test_gradients_match_float64_recurrence(dt_scale):
    """Autograd through the fast path (and the unsafe fallback) vs the sequential recurrence in float64."""
    ts = inputs(L=90, h=4, p=3, g=2, n=6, dt_scale=dt_scale, seed=1)
    w = torch.randn(ts[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    leaves = [t.clone().requires_grad_() for t in ts]
    ref = torch.autograd.grad((recurrence(*leaves) * w).sum(), leaves)
    fl = [t.float().requires_grad_() for t in ts]
    got = torch.autograd.grad((TORCH_SCAN(*fl, chunk_size=32).double() * w).sum(), fl)
    for a, r in zip(got, ref):
        assert torch.isfinite(a).all() and rel(a, r) < 1e-4


def test_bfloat16_inputs_accumulate_in_float32():
    x, dt, A, B, C = (t.float() for t in inputs(L=100))
    y = TORCH_SCAN(x.bfloat16(), dt, A, B.bfloat16(), C.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = TORCH_SCAN(x.bfloat16().float(), dt, A, B.bfloat16().float(), C.bfloat16().float())
    assert rel(y, ref) < 1e-2


def test_scan_stays_float32_under_autocast():
    x, dt, A, B, C = (t.float() for t in inputs(L=100, g=2))
    ref = TORCH_SCAN(x, dt, A, B, C)
    with torch.autocast("cpu", torch.bfloat16):
        y = TORCH_SCAN(x, dt, A, B, C)
    assert y.dtype == torch.float32 and rel(y, ref) < 1e-6


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize(
    "L,chunk,g,dt_scale", [(1, 256, 1, 0.1), (70, 16, 1, 0.1), (130, 64, 2, 0.1), (200, 256, 1, 2.0)]
)
def test_initial_and_final_state(L, chunk, g, dt_scale, exact):
    """Scanning from a given state and returning the last one; dt_scale 2.0 sends heads down the fallbacks."""
    x, dt, A, B, C = inputs(L=L, g=g, dt_scale=dt_scale)
    h0 = torch.randn(x.shape[0], x.shape[2], x.shape[3], B.shape[-1], dtype=torch.float64)
    y_ref, s_ref = recurrence(x, dt, A, B, C, h0, return_final_state=True)
    scan = ssd_scan_ref if exact else TORCH_SCAN
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            y, s = scan(
                *(t.float() for t in (x, dt, A, B, C)),
                chunk_size=chunk,
                initial_state=h0.float(),
                return_final_state=True,
            )
        assert rel(y, y_ref) < 1e-5 and rel(s, s_ref) < 1e-5


def test_pieces_with_carried_state_equal_one_scan():
    x, dt, A, B, C = (t.float() for t in inputs(L=300, g=1))
    whole = TORCH_SCAN(x, dt, A, B, C)
    state, parts = None, []
    for s, e in ((0, 100), (100, 101), (101, 300)):
        y, state = TORCH_SCAN(
            x[:, s:e], dt[:, s:e], A, B[:, s:e], C[:, s:e], initial_state=state, return_final_state=True
        )
        parts.append(y)
    assert rel(torch.cat(parts, 1), whole) < 2e-6


def test_initial_state_shape_is_checked():
    x, dt, A, B, C = (t.float() for t in inputs(L=10))
    with pytest.raises(ValueError, match="initial_state"):
        TORCH_SCAN(x, dt, A, B, C, initial_state=torch.zeros(1, 2, 3, 4))


@pytest.mark.parametrize("L,dt_scale", [(100, 0.05), (100, 2.0), (600, 0.1), (600, 2.0)])  # row blocks, chunks
def test_every_new_tensor_follows_the_inputs_device(L, dt_scale):
    """No factory call in the scan may omit ``device=``: such a tensor lands on the default device (the CPU)
    and breaks CUDA inputs, as index tensors once did (found by the GPU suite). Checked on every path
    (row blocks, chunks, fallbacks, states) by intercepting torch's factory functions."""
    from torch.overrides import TorchFunctionMode

    factories = {
        torch.arange,
        torch.zeros,
        torch.ones,
        torch.empty,
        torch.full,
        torch.tensor,
        torch.eye,
        torch.linspace,
        torch.randn,
        torch.rand,
    }
    missing = []

    class FactoryWatch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in factories and kwargs.get("device") is None:
                missing.append(func.__name__)
            return func(*args, **kwargs)

    x, dt, A, B, C = (t.float() for t in inputs(L=L, h=16, n=32, dt_scale=dt_scale))
    h0 = torch.zeros(2, 16, 4, 32)
    with FactoryWatch():
        TORCH_SCAN(x, dt, A, B, C)
        TORCH_SCAN(x, dt, A, B, C, initial_state=h0, return_final_state=True)
        ssd_scan_ref(x, dt, A, B, C, return_final_state=True)
    assert not missing, missing


@pytest.mark.parametrize("L,dt_scale", [(100, 2.0), (600, 0.5), (600, 4.0)])  # row blocks; chunks with unsafe heads
def test_no_gemm_operand_is_subnormal(L, dt_scale):
    """The scan must not feed float32 subnormals to its GEMMs: x86 processes them at a fraction of the speed
    (seen: the C @ S product 1.6x slower at 1024 px). Unsafe heads, whose rows are redone, once carried
    ``h0 * exp(mid)`` with ``mid`` far below -87 into the states. Every matmul operand is checked."""
    from torch.overrides import TorchFunctionMode

    gemms = {torch.matmul, torch.bmm, torch.baddbmm, torch.Tensor.baddbmm_, torch.Tensor.matmul, torch.mm}
    found = []

    class SubnormalWatch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in gemms:
                for t in args:
                    if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                        tiny = (t.abs() < torch.finfo(torch.float32).tiny) & (t != 0)
                        if bool(tiny.any()):
                            found.append((func.__name__, int(tiny.sum())))
            return func(*args, **(kwargs or {}))

    x, dt, A, B, C = (t.float() for t in inputs(L=L, h=16, n=32, dt_scale=dt_scale))
    h0 = torch.randn(2, 16, 4, 32)
    with SubnormalWatch():
        TORCH_SCAN(x, dt, A, B, C)
        TORCH_SCAN(x, dt, A, B, C, initial_state=h0, return_final_state=True)
    assert not found, found


@pytest.mark.parametrize("zero", ["dt", "A"])
def test_exact_path_gradients_where_a_decay_is_exactly_zero(zero):
    """The exact path (also torch.compile's) once clamped the decay exponents: clamp's gradient is 0 where an
    exponent below the diagonal is exactly 0 (dt = 0 at a token, or A = 0), so dt's and A's gradients were wrong."""
    ts = list(inputs(L=12, h=2, dt_scale=0.5, seed=4))
    if zero == "dt":
        ts[1][:, 5] = 0.0
    else:
        ts[2][0] = 0.0
    w = torch.randn(ts[0].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [t.clone().requires_grad_() for t in ts]
    ref = torch.autograd.grad((recurrence(*leaves) * w).sum(), leaves)
    fl = [t.float().requires_grad_() for t in ts]
    got = torch.autograd.grad((ssd_scan_ref(*fl).double() * w).sum(), fl)
    for a, r in zip(got, ref):
        assert rel(a, r) < 1e-5


def test_empty_sequence_passes_the_state_through():
    x, dt, A, B, C = (t.float() for t in inputs(L=0))
    h0 = torch.randn(2, 8, 4, 8)
    for scan in (TORCH_SCAN, ssd_scan_ref):
        y, s = scan(x, dt, A, B, C, initial_state=h0, return_final_state=True)
        assert y.shape == x.shape and torch.equal(s, h0)
        assert scan(x, dt, A, B, C).shape == x.shape
