"""The roofline forecast (benchmarks/roofline.py): its FLOPs are torch's flop counter's, its extrapolation over
depth is exact, and gpu_fig4 prints it beside the figures it models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("triton")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import roofline  # noqa: E402


def test_flops_are_the_flop_counters():
    """ViT-S/16 with attention as one fused op: the same total as FlopCounterMode over the whole model."""
    fc = roofline.forecast("vit_s16", 224, 2)
    net = timm.create_model("vit_small_patch16_224", device="meta").eval()
    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        net = net.to_empty(device="cuda")
        with FlopCounterMode(display=False) as counter:
            net(torch.empty(2, 3, 224, 224, device="cuda"))
    assert fc.flops() == counter.get_total_flops()
    assert fc.items["torch:scaled_dot_product_attention"].calls == 12


def test_depth_extrapolation_is_exact():
    """Every block after the first adds what the second does: three blocks measured = extrapolated from two."""
    direct = roofline._measure("35m", 64, 1, 2, "bf16", depth=3)
    fc = roofline.forecast("35m", 64, 1, width=2, depth=3)
    assert set(direct) == set(fc.items)
    for key, item in direct.items():
        assert fc.items[key].calls == pytest.approx(item.calls)
        assert fc.items[key].bytes == pytest.approx(item.bytes)
        assert fc.items[key].seconds["H200"] == pytest.approx(item.seconds["H200"])
    assert any(k.startswith("triton:_chunk_scan") for k in direct)


def test_forecast_is_bounded_by_the_faster_memory():
    fc = roofline.forecast("35m", 224, 1)
    assert 0 < fc.seconds("H200") < fc.seconds("H100 SXM")
    with pytest.raises(ValueError, match="model must be one of"):
        roofline.forecast("resnet50", 224)


def test_gpu_fig4_forecasts_only_what_it_models():
    import gpu_fig4

    report = dict(device="NVIDIA H200")
    arch = "matmamba_vision_35m_patch16_224"
    assert gpu_fig4.forecast_img_s(arch, dict(ssd_backend="torch"), 1, 64, 1, report) is None
    fc = gpu_fig4.forecast_img_s(arch, dict(ssd_backend="triton", depth=2), 2, 64, 1, report)
    assert fc == pytest.approx(roofline.forecast("35m", 64, 1, width=2, depth=2).img_s("H200"))
