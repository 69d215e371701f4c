"""--pretrained without a network (simulated: HF_HUB_OFFLINE and an empty cache; nothing here touches the
network): one ValueError line at once, or the weights from the local Hugging Face cache."""

import time
from pathlib import Path

import pytest
import timm
import torch
from huggingface_hub import constants
from safetensors.torch import save_file

from matmamba_vision.weights import build_model

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(embed_dim=32, depth=1, d_state=16)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_offline_without_cache_is_one_line_at_once(offline, monkeypatch):
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("no model is built, no download tried"))
    start = time.perf_counter()
    with pytest.raises(ValueError) as err:
        build_model("matmamba_vision_35m_patch16_224", pretrained=True)
    assert time.perf_counter() - start < 1.0
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg and "scaledfoundations/MatMamba-Vision-35M" in msg
    assert "--checkpoint" in msg and "--initial-checkpoint" in msg


def test_offline_uses_the_cached_file(offline):
    torch.manual_seed(1)
    src = timm.create_model("matmamba_vision_35m_patch16_224", **SMALL)
    snap = offline / "models--someone--tiny" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (offline / "models--someone--tiny" / "refs").mkdir()
    (offline / "models--someone--tiny" / "refs" / "main").write_text("abc123")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(snap / "weights.safetensors"))
    overlay = dict(hf_hub_id="someone/tiny", hf_hub_filename="weights.safetensors")
    model = build_model("matmamba_vision_35m_patch16_224", pretrained=True, pretrained_cfg_overlay=overlay, **SMALL)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))


@pytest.mark.parametrize("script", ["train", "validate"])
def test_scripts_offline(offline, tmp_path, script):
    if script == "train":
        from matmamba_vision.training import main

        argv = [
            "--model",
            "matmamba_vision_35m_patch16_224",
            "--pretrained",
            "--output",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    else:
        import importlib.util

        spec = importlib.util.spec_from_file_location("_offline_validate", ROOT / "validate.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        main = mod.main
        argv = ["--model", "matmamba_vision_35m_patch16_224", "--pretrained", "--output", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set.*instead of --pretrained"):
        main(argv)
