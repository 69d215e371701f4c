"""The chunked SSD scan in Triton against the float64 recurrence (matmamba_vision.ops.ssd_recurrence_ref):
forward with D, initial and final states, and the gradients of every input, through the interpreter."""

import pytest
import torch
import torch.nn.functional as F

import matmamba_vision.ops.triton.ssd as ssd_module
from matmamba_vision.ops import ssd_recurrence_ref, ssd_scan_ref
from matmamba_vision.ops.triton.ssd import MAX_CHUNKS, ssd


def recurrence(x, dt, A, B, C, h0=None):
    """The float64 recurrence; (y, final state) when ``h0`` is given."""
    return ssd_recurrence_ref(x, dt, A, B, C, initial_state=h0, return_final_state=h0 is not None)


# Max error relative to the largest reference value. fp32: chunked vs sequential summation; fp16: x, B, C
# and y rounded to fp16 (states and sums stay fp32).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3}


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


def make(b, seqlen, h, p, g, n, dtype, fast_decay=False):
    x = torch.randn(b, seqlen, h, p).to(dtype)
    dt = F.softplus(torch.randn(b, seqlen, h) + (2.0 if fast_decay else -1.0))
    A = -torch.empty(h).uniform_(1.0, 16.0 if fast_decay else 2.0)
    B, C = torch.randn(b, seqlen, g, n).to(dtype), torch.randn(b, seqlen, g, n).to(dtype)
    return x, dt, A, B, C


def reference(x, dt, A, B, C, D, h0):
    y, final = recurrence(
        x, dt, A, B, C, h0 if h0 is not None else x.new_zeros(x.shape[0], x.shape[2], x.shape[3], B.shape[-1])
    )
    return y + x.double() * D.double()[:, None], final


# (batch, seqlen, heads, headdim, groups, d_state, chunk): several chunks with a ragged end, one token,
# headdim 4 and 6 (not a power of two), two groups, d_state 32 (two blocks of the kernels' N loop at 16...).
SHAPES = [(1, 37, 4, 4, 2, 16, 16), (1, 1, 2, 6, 1, 16, 16), (1, 20, 3, 8, 1, 32, 16)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ssd_forward_matches_recurrence(shape, dtype):
    b, seqlen, h, p, g, n, q = shape
    x, dt, A, B, C = make(b, seqlen, h, p, g, n, dtype)
    D, h0 = torch.randn(h), torch.randn(b, h, p, n)
    y, final = ssd(x, dt, A, B, C, D=D, initial_state=h0, return_final_state=True, chunk_size=q)
    assert y.dtype == dtype and final.dtype == torch.float32
    y_ref, final_ref = reference(x, dt, A, B, C, D, h0)
    assert max_rel(y, y_ref) <= TOL[dtype]
    assert max_rel(final, final_ref) <= TOL[torch.float32]
    # without D and initial state
    assert max_rel(ssd(x, dt, A, B, C, chunk_size=q), recurrence(x, dt, A, B, C)) <= TOL[dtype]


def test_ssd_fast_decay_stays_finite_and_exact():
    x, dt, A, B, C = make(1, 40, 2, 4, 1, 16, torch.float32, fast_decay=True)  # decay ranges of hundreds of nats
    y = ssd(x, dt, A, B, C, chunk_size=32)
    assert torch.isfinite(y).all()
    assert max_rel(y, recurrence(x, dt, A, B, C)) <= TOL[torch.float32]


@pytest.mark.parametrize("chunks", [16, 64])
def test_state_passing_over_many_chunks(chunks, monkeypatch):
    """41 chunks (the last ragged) through the state passing, ``chunks`` at a time: tiles of 16, 16 and 9, and
    all in one tile; slow decays (under a nat per chunk), so every entering state counts."""
    monkeypatch.setattr(ssd_module, "STATE_PASS_CHUNKS", chunks)
    x, dt, A, B, C = make(1, 16 * 40 + 5, 2, 4, 1, 16, torch.float32)
    dt, h0 = 0.1 * dt, torch.randn(1, 2, 4, 16)
    y, final = ssd(x, dt, A, B, C, initial_state=h0, return_final_state=True, chunk_size=16)
    y_ref, final_ref = recurrence(x, dt, A, B, C, h0)
    assert max_rel(y, y_ref) <= TOL[torch.float32]
    assert max_rel(final, final_ref) <= TOL[torch.float32]


def test_ssd_pieces_continue_with_states():
    x, dt, A, B, C = make(1, 30, 2, 4, 1, 16, torch.float32)
    y_all, f_all = ssd(x, dt, A, B, C, return_final_state=True, chunk_size=16)
    y1, f1 = ssd(x[:, :13], dt[:, :13], A, B[:, :13], C[:, :13], return_final_state=True, chunk_size=16)
    y2, f2 = ssd(
        x[:, 13:], dt[:, 13:], A, B[:, 13:], C[:, 13:], initial_state=f1, return_final_state=True, chunk_size=16
    )
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f2, f_all, rtol=1e-5, atol=1e-5)


# Gradient cases: (batch, seqlen, heads, headdim, groups, d_state, chunk, fast decay, D and h0, tile caps P/N,
# the dB/dC kernel's MIN_BC_PROGRAMS). Two chunks with a ragged end, two groups of two heads summed in one
# program; one token; headdim 6 and d_state 32 with the N loop over two blocks of 16, one head per program;
# headdim 20 in two blocks of 16 (the headdim partials summed), 3 heads of 3 groups, without D and h0; decays
# of hundreds of nats per chunk; 3 heads a group in splits of 2 and 1 (the splits' partials summed).
GRAD_CASES = [
    (1, 21, 4, 4, 2, 16, 16, False, True, 64, 64, 1),
    (1, 1, 2, 6, 1, 16, 16, False, True, 64, 64, 1),
    (1, 20, 2, 6, 1, 32, 16, False, True, 64, 16, 512),
    (2, 18, 3, 20, 3, 16, 16, False, False, 16, 64, 1),
    (1, 40, 2, 4, 1, 16, 32, True, True, 64, 64, 1),
    (1, 20, 6, 4, 2, 16, 16, False, True, 64, 64, 8),
]


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ssd_gradients_match_recurrence(case, dtype, monkeypatch):
    """The Triton backward (kernels 4-8 of ops/triton/ssd.py) against the float64 recurrence's autograd."""
    b, seqlen, h, p, g, n, q, fast, extras, cap_p, cap_n, min_bc = case
    monkeypatch.setattr(ssd_module, "MAX_BLOCK_P", cap_p)
    monkeypatch.setattr(ssd_module, "MAX_BLOCK_N", cap_n)
    monkeypatch.setattr(ssd_module, "MIN_BC_PROGRAMS", min_bc)
    x, dt, A, B, C = make(b, seqlen, h, p, g, n, dtype, fast_decay=fast)
    D, h0 = torch.randn(h), torch.randn(b, h, p, n)
    names = ["x", "dt", "A", "B", "C"] + (["D", "h0"] if extras else [])
    full = (x, dt, A, B, C, D, h0)
    inputs = [t.clone().requires_grad_() for t in full[: len(names)]]
    kw = dict(D=inputs[5], initial_state=inputs[6]) if extras else {}
    y, final = ssd(*inputs[:5], **kw, return_final_state=True, chunk_size=q)
    gy, gf = torch.randn_like(y), torch.randn_like(final)
    got = torch.autograd.grad((y, final), inputs, (gy, gf))
    ref_in = [t.detach().double().requires_grad_() for t in full]
    y_ref, final_ref = reference(*ref_in[:5], ref_in[5] if extras else torch.zeros(h), ref_in[6] if extras else None)
    want = torch.autograd.grad((y_ref, final_ref), ref_in[: len(names)], (gy.double(), gf.double()))
    # Max error relative to the largest reference gradient: 2e-5 (measured <= 4e-6), except dA at fast decays,
    # 1e-3 (a sum of per-token terms that cancel; the float32 reference itself is 2.8e-4 off), and in fp16 dx,
    # dB and dC, 2e-3 (x, B, C and y rounded to fp16 feed them; measured <= 5e-4).
    for name, a, w, t in zip(names, got, want, inputs):
        tol = 2e-3 if dtype == torch.float16 and name in ("x", "B", "C") else 2e-5
        tol = 1e-3 if fast and name == "A" else tol
        assert a.dtype == t.dtype and a.shape == t.shape, name
        assert torch.isfinite(a).all(), name
        assert max_rel(a, w) <= tol, (name, max_rel(a, w))


def test_ssd_backward_is_the_triton_kernels():
    """The custom op's backward launches the backward kernels (not the reference's vjp)."""
    launched = []
    real = ssd_module.launch

    def spy(kernel, grid, *args, **kwargs):
        launched.append(kernel)
        return real(kernel, grid, *args, **kwargs)

    x, dt, A, B, C = (t.requires_grad_() for t in make(1, 17, 2, 4, 1, 16, torch.float32))
    y = ssd(x, dt, A, B, C, chunk_size=16)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ssd_module, "launch", spy)
        mp.setattr(torch.func, "vjp", None)  # fails if called
        y.sum().backward()
    kernels = (
        "_chunk_dstate_kernel",
        "_state_pass_bwd_kernel",
        "_chunk_bwd_kernel",
        "_chunk_w_kernel",
        "_chunk_bwd_bc_kernel",
    )
    for k in kernels:
        assert getattr(ssd_module, k) in launched, k


def test_ssd_reference_matches_recurrence():
    """The one SSD reference (ops.ssd_ref), at the kernels' chunk length, with D and an initial state."""
    x, dt, A, B, C = make(2, 37, 4, 4, 2, 16, torch.float32)
    D, h0 = torch.randn(4), torch.randn(2, 4, 4, 16)
    y, final = ssd_scan_ref(x, dt, A, B, C, 16, initial_state=h0, return_final_state=True, D=D)
    y_ref, final_ref = reference(x, dt, A, B, C, D, h0)
    assert max_rel(y, y_ref) <= TOL[torch.float32] and max_rel(final, final_ref) <= TOL[torch.float32]


def test_ssd_compiles_to_one_graph():
    x, dt, A, B, C = make(1, 20, 2, 4, 1, 16, torch.float32)
    inputs = [t.clone().requires_grad_() for t in (x, dt, A, B, C)]

    def f(x, dt, A, B, C):
        y, final = ssd(x, dt, A, B, C, D=torch.ones_like(A), return_final_state=True, chunk_size=16)
        return y.square().sum() + final.sum()

    eager = torch.autograd.grad(f(*inputs), inputs)
    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*inputs), inputs)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b)


def test_ssd_rejects_bad_arguments():
    x, dt, A, B, C = make(1, 8, 3, 4, 2, 16, torch.float32)
    with pytest.raises(ValueError, match="multiple of groups"):
        ssd(x, dt, A, B, C)
    x, dt, A, B, C = make(1, 8, 2, 4, 1, 16, torch.float32)
    with pytest.raises(ValueError, match="chunk_size"):
        ssd(x, dt, A, B, C, chunk_size=24)
    with pytest.raises(ValueError, match="initial_state"):
        ssd(x, dt, A, B, C, initial_state=torch.zeros(1, 2, 4, 8))
    seqlen = MAX_CHUNKS * 16 + 1  # one chunk more than a CUDA grid axis holds (shapes only: expanded zeros)
    x, dt, B = (torch.zeros(()).expand(*shape) for shape in ((1, seqlen, 2, 4), (1, seqlen, 2), (1, seqlen, 1, 16)))
    with pytest.raises(ValueError, match="at most 65535 chunks"):
        ssd(x, dt, A, B, B, chunk_size=16)
