"""The kernels of ``ops`` against their references, and the backend choice (``ops.dispatch``)."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

import matmamba_vision
import matmamba_vision.ops.ssd_fast as ssd_fast
from matmamba_vision.ops import (
    BACKENDS,
    SSD_BACKENDS,
    Backend,
    causal_conv1d_ref,
    causal_depthwise_conv1d,
    choose_chunk_len,
    gated_rms_norm_linear,
    gated_rms_norm_ref,
    rms_norm_linear,
    select_ssd_backend,
    ssd_recurrence_ref,
    ssd_scan,
    ssd_scan_ref,
)


@pytest.mark.parametrize("seqlen", [1, 2, 9])  # shorter than the kernel, too
def test_conv_matches_conv1d_and_backward(seqlen):
    """The conv and its hand-written backward (shifted multiply-adds) against torch's conv1d and gradcheck."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, seqlen, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(6, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.conv1d(x.transpose(1, 2), w.unsqueeze(1), bias, padding=3, groups=6)
    ref = ref[..., :seqlen].transpose(1, 2)
    assert torch.allclose(causal_depthwise_conv1d(x, w, bias), ref)
    torch.autograd.gradcheck(causal_depthwise_conv1d, (x, w, bias))
    grads = torch.autograd.grad(causal_depthwise_conv1d(x, w, bias).square().sum(), (x, w, bias))
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, w, bias))
    for got, want in zip(grads, ref_grads):
        assert torch.allclose(got, want)
    # only the weight needs a gradient (the other inputs are data): no gradient is computed for them
    xd = x.detach()
    (gw,) = torch.autograd.grad(causal_depthwise_conv1d(xd, w, bias.detach()).sum(), (w,))
    ref_w = torch.nn.functional.conv1d(xd.transpose(1, 2), w.unsqueeze(1), bias.detach(), padding=3, groups=6)
    assert torch.allclose(gw, torch.autograd.grad(ref_w[..., :seqlen].sum(), (w,))[0])


@pytest.mark.parametrize("tokens", [3, 400])  # weight folded into the input / into out_proj
def test_fused_gated_norm_linear(tokens):
    gen = torch.Generator().manual_seed(0)
    y, z = torch.randn(1, tokens, 16, generator=gen), torch.randn(1, tokens, 16, generator=gen)
    w, W = torch.rand(16, generator=gen) + 0.5, torch.randn(8, 16, generator=gen)
    ref = torch.nn.functional.linear(gated_rms_norm_ref(y, z, w), W)
    with torch.no_grad():
        assert torch.allclose(gated_rms_norm_linear(y.clone(), z.clone(), w, W), ref, atol=1e-5, rtol=1e-5)
    leaves = [t.clone().requires_grad_() for t in (y, z, w, W)]
    out = gated_rms_norm_linear(*leaves)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad(out.square().sum(), leaves)
    leaves2 = [t.clone().requires_grad_() for t in (y, z, w, W)]
    want = torch.autograd.grad(F.linear(gated_rms_norm_ref(*leaves2[:3]), leaves2[3]).square().sum(), leaves2)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_rms_norm_linear_with_folded_weight_and_out():
    gen = torch.Generator().manual_seed(0)
    y, z = torch.randn(2, 5, 16, generator=gen), torch.randn(2, 5, 16, generator=gen)
    w, W = torch.rand(16, generator=gen) + 0.5, torch.randn(8, 16, generator=gen)
    ref = F.linear(gated_rms_norm_ref(y, z, w), W)
    out = torch.empty(2, 5, 8)
    with torch.no_grad():
        got = rms_norm_linear(y * F.silu(z), None, W * w, out=out)
    assert got is out and torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("backend", ["torch", "reference"])
def test_conv_silu_routes_match_the_reference(backend, grad):
    """Each backend's conv + SiLU (oneDNN's fused kernel for CPU float32 inference; the conv with its own
    backward under autograd) against ``F.conv1d``."""
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 11, 6, generator=gen), torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    leaves = [t.clone().requires_grad_(grad) for t in (x, w, b)]
    with torch.set_grad_enabled(grad):
        got = BACKENDS[backend].conv1d_silu(*leaves)
    assert torch.allclose(got, causal_conv1d_ref(x, w, b), atol=1e-6)
    if grad:
        ref_leaves = [t.clone().requires_grad_() for t in (x, w, b)]
        want = torch.autograd.grad(causal_conv1d_ref(*ref_leaves).square().sum(), ref_leaves)
        for a, r in zip(torch.autograd.grad(got.square().sum(), leaves), want):
            assert torch.allclose(a, r, atol=1e-5)


def _ssd_inputs(L=150, h=4, p=3, n=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, L, h, p, generator=gen)
    B, C = torch.randn(2, L, 1, n, generator=gen), torch.randn(2, L, 1, n, generator=gen)
    return x, torch.rand(2, L, h, generator=gen) * 0.1, -(torch.rand(h, generator=gen) * 8 + 1), B, C


def test_ssd_ref_matches_the_recurrence_with_states():
    x, dt, A, B, C = _ssd_inputs()
    h0 = torch.randn(2, 4, 3, 8)
    y, s = ssd_scan_ref(x, dt, A, B, C, 64, initial_state=h0, return_final_state=True)
    y_ref, s_ref = ssd_recurrence_ref(x, dt, A, B, C, h0, return_final_state=True)
    assert torch.allclose(y.double(), y_ref, atol=1e-4) and torch.allclose(s.double(), s_ref, atol=1e-4)
    D = torch.randn(4)  # the skip the Triton kernel fuses: y + D x
    y_d = ssd_scan_ref(x, dt, A, B, C, 64, initial_state=h0, D=D)
    assert torch.allclose(y_d.double(), y_ref + x.double() * D.double()[:, None], atol=1e-4)
    with pytest.raises(ValueError, match="D must have shape"):
        ssd_scan_ref(x, dt, A, B, C, D=torch.ones(3))


def test_reference_backend_takes_no_data_dependent_route(monkeypatch):
    """'reference' runs the exact chunked form with the fast path's chunk length; 'auto' on the CPU the fast path."""

    def no_fast_path(*args, **kwargs):
        raise AssertionError("fast path taken")

    x, dt, A, B, C = _ssd_inputs(L=300)
    want = ssd_scan_ref(x, dt, A, B, C, choose_chunk_len(300, 8))
    fast = ssd_scan(x, dt, A, B, C, backend="auto")
    monkeypatch.setattr(ssd_fast, "_ssd_auto", no_fast_path)
    assert torch.equal(ssd_scan(x, dt, A, B, C, backend="reference"), want)
    assert torch.allclose(fast, want, atol=1e-5)
    with pytest.raises(AssertionError, match="fast path"):
        ssd_scan(x, dt, A, B, C, backend="auto")
    assert select_ssd_backend("auto", x) is BACKENDS["torch"]


def test_a_backend_is_one_registry_entry(monkeypatch):
    """A backend added to BACKENDS is accepted by name and runs its own kernels (the rest are torch's)."""
    calls, torch_ssd = [], BACKENDS["torch"].ssd

    def ssd(*args):
        calls.append("ssd")
        return torch_ssd(*args)

    monkeypatch.setitem(BACKENDS, "spy", Backend(ssd=ssd))
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", depth=1, ssd_backend="spy").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 28, 28))
    assert calls == ["ssd"] and torch.isfinite(out).all()
    assert SSD_BACKENDS[:2] == ("auto", "torch") and "reference" in SSD_BACKENDS


@pytest.mark.parametrize("grad", [False, True])
def test_a_backends_gated_norm_replaces_the_fused_tail(monkeypatch, grad):
    """A backend with its own gated norm gets (y + D x, z, weight, eps) and its result goes through out_proj:
    the same outputs as the torch tail, in one pass and in pieces (norm weight folded into out_proj)."""
    calls = []

    def norm(*args):
        calls.append(args[0].shape)
        return gated_rms_norm_ref(*args)

    monkeypatch.setitem(BACKENDS, "spy", Backend(gated_rms_norm=norm))
    monkeypatch.setattr(matmamba_vision.layers.MatMamba2Mixer, "PIECE_LEN", 16)  # 50 tokens: pieces
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", depth=1, ssd_backend="torch").train(grad)
    x = torch.randn(2, 1, 28, 28)
    with torch.set_grad_enabled(grad):
        want = model(x)
        with matmamba_vision.use_backend(model, "spy"):
            got = model(x)
    assert calls and torch.allclose(got, want, atol=1e-5)


def test_use_backend_sets_and_restores_every_mixer():
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", depth=2, ssd_backend="torch").eval()
    mixers = [blk.mixer for blk in model.layers]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        fast = model(x)
        with matmamba_vision.use_backend(model, "reference"):
            assert [m.ssd_backend for m in mixers] == ["reference"] * 2
            ref = model(x)
        with pytest.raises(KeyError), matmamba_vision.use_backend(model, "reference"):
            raise KeyError("restored on errors too")
    assert [m.ssd_backend for m in mixers] == ["torch"] * 2
    assert torch.allclose(ref, fast, atol=1e-5)
    matmamba_vision.count_flops(model)
    assert [m.ssd_backend for m in mixers] == ["torch"] * 2
    with pytest.raises(ValueError, match="ssd_backend must be one of"):
        with matmamba_vision.use_backend(model, "fastest"):
            pass
    with pytest.raises(ValueError, match="ssd_backend must be one of"):
        mixers[0].set_backend("fastest")
