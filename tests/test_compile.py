"""torch.compile: the model traces as one graph (no breaks) and computes what eager computes, with gradients."""

from __future__ import annotations

import timm
import torch

import matmamba_vision  # noqa: F401
from matmamba_vision.ops.ssd_ref import _cumsum_last


def small_model(**kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("matmamba_vision_35m_patch16_224", depth=2, img_size=64, **kw)


def test_no_graph_breaks_in_inference_and_training():
    model = small_model()
    x = torch.randn(2, 3, 64, 64)
    for train in (False, True):
        model.train(train)
        with torch.set_grad_enabled(train):
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
        assert explained.graph_count == 1


def test_compiled_forward_and_gradients_match_eager():
    model = small_model().train()
    x = torch.randn(2, 3, 64, 64)
    model(x).square().mean().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    out_ref = model(x).detach()
    model.zero_grad()
    out = torch.compile(model)(x)
    out.square().mean().backward()
    assert torch.allclose(out, out_ref, rtol=1e-4, atol=1e-5)
    for name, p in model.named_parameters():
        err = (p.grad - ref[name]).norm() / ref[name].norm().clamp_min(1e-30)
        assert err < 1e-4, (name, float(err))


def test_compiled_nested_granularity_matches_eager():
    model = small_model().eval()
    model.set_granularity(model.matryoshka_levels[-1])
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model)(x), model(x), rtol=1e-4, atol=1e-5)


def test_opaque_cumsum_op_and_its_gradient():
    t = torch.randn(3, 5, 17, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(_cumsum_last(t), torch.cumsum(t, -1))
    torch.autograd.gradcheck(_cumsum_last, (t,))
    # schema, autograd registration, fake against real (strides and dtypes), AOT dispatch; a strided input too
    torch.library.opcheck(_cumsum_last, (t,))
    torch.library.opcheck(_cumsum_last, (torch.randn(4, 6, 5).transpose(1, 2).requires_grad_(),))
