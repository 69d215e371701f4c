"""Gated RMSNorm in Triton against its plain-torch reference (forward and the gradients of y, z and weight),
through the interpreter."""

import pytest
import torch

import matmamba_vision.ops.triton.gated_norm as norm_module
from matmamba_vision.layers import GatedRMSNorm
from matmamba_vision.ops.gated_norm import gated_rms_norm_ref
from matmamba_vision.ops.triton.gated_norm import gated_rms_norm

# fp32: summation order only; fp16: results rounded to fp16 (max error relative to the largest reference value).
TOL = {torch.float32: 1e-5, torch.float16: 3e-3}


def max_rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1e-12)).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "width, max_programs",
    [(24, 1024), (24, 2), (600, 3)],  # 16 rows a tile, one tile per program / two; 4 rows a tile, 4 per program
)
def test_gated_norm_matches_reference(dtype, width, max_programs, monkeypatch):
    monkeypatch.setattr(norm_module, "MAX_BWD_PROGRAMS", max_programs)
    # z a strided view of a (z, dt) buffer and weight a leading slice, as in the mixer; 38 rows.
    zdt = torch.randn(2, 19, width // 8, 9, dtype=dtype, requires_grad=True)
    y = torch.randn(2, 19, width, dtype=dtype, requires_grad=True)
    weight = (1 + 0.1 * torch.randn(width + 6)).to(dtype).requires_grad_()
    out = gated_rms_norm(y, zdt[..., :8].flatten(2), weight[:width])
    assert out.shape == y.shape and out.dtype == dtype
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (y, zdt, weight), grad)
    ref_in = [t.detach().float().requires_grad_() for t in (y, zdt, weight)]
    out_ref = gated_rms_norm_ref(ref_in[0], ref_in[1][..., :8].flatten(2), ref_in[2][:width])
    want = torch.autograd.grad(out_ref, ref_in, grad.float())
    assert max_rel(out, out_ref) <= TOL[dtype]
    for name, g, w in zip(("y", "z", "weight"), got, want):
        assert g.dtype == dtype
        assert max_rel(g, w) <= TOL[dtype], name


def test_gated_norm_is_the_layer_s():
    """The kernel computes what the model's GatedRMSNorm layer computes (the one reference)."""
    layer = GatedRMSNorm(12)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(12))
    y, z = torch.randn(3, 5, 12), torch.randn(3, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(gated_rms_norm(y, z, layer.weight), layer(y, z), rtol=1e-5, atol=1e-5)


def test_gated_norm_rejects_bad_shapes():
    with pytest.raises(ValueError, match="weight"):
        gated_rms_norm(torch.randn(2, 8), torch.randn(2, 8), torch.randn(6))
