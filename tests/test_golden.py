"""Official checkpoints, proven: the official code's logits and features, every level and mix'n'match case."""

import json

import pytest
import timm
import torch
from conftest import DATA_DIR, SHARED_GOLDEN
from safetensors.torch import load_file

import matmamba_vision as mv

GOLDEN = {"official_tiny": DATA_DIR, "official_width512": SHARED_GOLDEN}
RTOL = 1e-4


def load_golden(name):
    folder = GOLDEN[name]
    if not (folder / f"{name}.safetensors").is_file():
        pytest.skip(f"{name} golden file not found in {folder}")
    tensors = load_file(str(folder / f"{name}.safetensors"))
    meta = json.loads((folder / f"{name}.json").read_text())
    state = {k[len("state_dict.") :]: v for k, v in tensors.items() if k.startswith("state_dict.")}
    return tensors, meta, state


def model_kwargs(cfg):
    return dict(
        img_size=cfg["image_size"],
        patch_size=cfg["patch_size"],
        num_classes=cfg["num_classes"],
        embed_dim=cfg["d_model"],
        depth=cfg["n_layer"],
        d_state=cfg["d_state"],
        headdim=cfg["headdim"],
        expand=cfg["expand"],
        ngroups=cfg["ngroups"],
        d_conv=cfg["d_conv"],
        norm_eps=cfg["norm_epsilon"],
    )


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def check_cases(model, tensors, meta):
    x = tensors["input"]
    for case, spec in meta["cases"].items():
        with torch.no_grad(), model.granularity(spec["dims_per_layer"]):
            feats = model.forward_head(model.forward_features(x), pre_logits=True)
            logits = model(x)
        assert rel_err(feats, tensors[f"features.{case}"]) <= RTOL, case
        assert rel_err(logits, tensors[f"logits.{case}"]) <= RTOL, case


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_converted_state_dict_reproduces_official_outputs(name):
    tensors, meta, state = load_golden(name)
    model = mv.MatMambaVision(**model_kwargs(meta["config"])).eval()
    model.load_state_dict(mv.convert_official_state_dict(state))
    check_cases(model, tensors, meta)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_timm_pretrained_path_with_local_official_file(name, tmp_path):
    tensors, meta, state = load_golden(name)
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)  # the official layout, as published
    cfg = meta["config"]
    kwargs = model_kwargs(cfg)
    model = timm.create_model(
        "matmamba_vision_35m_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=cfg["num_classes"]),
        **kwargs,
    ).eval()
    check_cases(model, tensors, meta)


def test_extracted_submodels_reproduce_official_outputs():
    tensors, meta, state = load_golden("official_tiny")
    model = mv.MatMambaVision(**model_kwargs(meta["config"])).eval()
    model.load_state_dict(mv.convert_official_state_dict(state))
    for case, spec in meta["cases"].items():
        sub = mv.extract_submodel(model, spec["dims_per_layer"]).eval()
        with torch.no_grad():
            assert rel_err(sub(tensors["input"]), tensors[f"logits.{case}"]) <= RTOL, case


def test_conversion_is_a_permutation_and_idempotent():
    _, _, state = load_golden("official_tiny")
    ours = mv.convert_official_state_dict(state)
    assert mv.convert_official_state_dict(ours).keys() == ours.keys()
    total = lambda sd: sum(v.numel() for v in sd.values())  # noqa: E731
    assert total(ours) == total(state)
    in_proj = state["layers.0.mixer.in_proj.weight"]
    mixed = torch.cat([ours["layers.0.mixer.xbc_proj.weight"], ours["layers.0.mixer.zdt_proj.weight"]])
    assert sorted(map(tuple, mixed.tolist())) == sorted(map(tuple, in_proj.tolist()))


def test_official_weights_load_at_another_image_size(tmp_path):
    tensors, meta, state = load_golden("official_tiny")
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    kwargs = dict(model_kwargs(meta["config"]), img_size=48)
    model = timm.create_model(
        "matmamba_vision_35m_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
        **kwargs,
    ).eval()
    assert model.pos_embed.shape == (1, 6 * 6 + 1, 64)
    assert torch.equal(model.pos_embed[0, -1], state["pos_embed"][0, -1])  # [CLS] row kept, patches resampled
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 48, 48))).all()
