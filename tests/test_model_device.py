"""timm's factory contract: ``device=`` / ``dtype=`` reach every parameter, for every registered model; a meta
build materialises with ``to_empty`` + ``init_weights``; resizing, new heads and submodels keep both."""

import pytest
import timm
import torch

import matmamba_vision
from matmamba_vision import MatMambaVision

MODELS = timm.list_models("matmamba_vision*")


def _placement(module: torch.nn.Module) -> set:
    return {(t.device.type, t.dtype) for t in list(module.parameters()) + list(module.buffers())}


@pytest.mark.parametrize("name", MODELS)
def test_meta_bf16_build_and_everything_derived_from_it(name):
    want = {("meta", torch.bfloat16)}
    model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    assert _placement(model) == want
    model.reset_classifier(7)
    assert model.head.weight.shape[0] == 7 and _placement(model) == want
    size, patch = model.patch_embed.img_size[0], model.patch_embed.patch_size[0]
    model.set_input_size(img_size=2 * size)
    assert model.pos_embed.shape[1] == (2 * size // patch) ** 2 + 1 and _placement(model) == want
    model.set_input_size(patch_size=2 * patch)
    assert model.patch_embed.proj.weight.shape[-1] == 2 * patch and _placement(model) == want
    sub = matmamba_vision.extract_submodel(model, model.embed_dim // 2)
    assert _placement(sub) == want
    assert sub.layers[0].mixer.max_granularity == model.embed_dim // 2


def test_issue_example_cpu_float32_and_float64_forward():
    model = timm.create_model("matmamba_vision_35m_patch16_224", device="cpu", dtype=torch.float32, depth=1)
    assert _placement(model) == {("cpu", torch.float32)}
    model = timm.create_model(
        "matmamba_vision_tiny_patch4_28", dtype=torch.float64, embed_dim=32, depth=2, d_state=16
    ).eval()
    assert _placement(model) == {("cpu", torch.float64)}
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
        assert out.dtype == torch.float64
        sub = matmamba_vision.extract_submodel(model, 16)
        assert _placement(sub) == {("cpu", torch.float64)}
        with model.granularity(16):
            assert torch.equal(sub(x), model(x))
    model.reset_classifier(3)
    assert model.head.weight.dtype == torch.float64


def test_meta_build_materialised_equals_a_seeded_cpu_build():
    kwargs = dict(embed_dim=32, depth=2, d_state=16)
    torch.manual_seed(3)
    ref = timm.create_model("matmamba_vision_tiny_patch4_28", **kwargs)
    torch.manual_seed(3)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", device="meta", **kwargs)
    model.to_empty(device="cpu")
    model.init_weights()
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the init itself (the official one, see init_weights), checked on the materialised model
    mixer = model.layers[0].mixer
    assert torch.equal(mixer.D, torch.ones_like(mixer.D)) and not model.cls_token.any()
    assert ((mixer.A_log >= 0) & (mixer.A_log <= torch.log(torch.tensor(16.0)))).all()
    dt = torch.nn.functional.softplus(mixer.dt_bias)
    assert ((dt >= 1e-4 * 0.999) & (dt <= 0.1 * 1.001)).all()
    assert not model.head.bias.any()


def test_unknown_kwarg_still_a_type_error():
    with pytest.raises(TypeError):
        MatMambaVision(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=1, devices="cpu")


def test_forward_many_takes_what_set_granularity_takes():
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=16).eval()
    x = torch.randn(3, 1, 28, 28)
    configs = [None, 16, [32, 8], (16, 16)]
    outs = dict(model.forward_many(x, configs, pre_logits=True))
    assert sorted(outs) == [0, 1, 2, 3]
    with torch.no_grad():
        for i, g in enumerate(configs):
            with model.granularity(list(g) if isinstance(g, tuple) else g):
                assert torch.equal(outs[i], model.forward_head(model.forward_features(x), pre_logits=True)), g
    with pytest.raises(ValueError, match=r"granularities\[1\]: .*one entry per block"):
        list(model.forward_many(x, [16, [16]]))
    # the outputs are inference tensors: no graph kept
    assert not any(t.requires_grad for t in outs.values())


def test_elastic_api_on_a_features_only_model():
    torch.manual_seed(0)
    kwargs = dict(embed_dim=32, depth=3, d_state=16)
    feat = timm.create_model("matmamba_vision_tiny_patch4_28", features_only=True, out_indices=(0, 1), **kwargs).eval()
    torch.manual_seed(0)
    full = timm.create_model("matmamba_vision_tiny_patch4_28", **kwargs).eval()
    assert feat.matryoshka_levels == full.matryoshka_levels == [32, 16, 8]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        with feat.granularity(16) as same:
            assert same is feat and feat.granularities == [16, 16]  # the unused third block was pruned
            small = feat(x)
        assert feat.granularities == [None, None]
        feat.set_granularity([8, 16])
        with full.granularity([8, 16, 32]):
            want = full.forward_intermediates(x, indices=(0, 1), intermediates_only=True)
        assert all(torch.equal(a, b) for a, b in zip(feat(x), want))
        feat.set_granularity(None)
        outs = dict(feat.forward_many(x, [16, None]))
        assert all(torch.equal(a, b) for a, b in zip(outs[0], small))
        assert not all(torch.equal(a, b) for a, b in zip(outs[1], small))
    with pytest.raises(ValueError, match=r"granularities\[0\]"):
        list(feat.forward_many(x, [7]))
    assert feat.resolve_granularity(8) == [8, 8]
    feat.model.init_weights()  # the pruned trunk (no final norm, no head) re-initialises too
    assert torch.equal(feat.model.layers[0].mixer.D, torch.ones(4))


def test_demo_model_registered_and_earlier_demo_checkpoints_load(tmp_path):
    from matmamba_vision.training.config import DEFAULT_MODEL, parse_args
    from matmamba_vision.weights import build_model, read_checkpoint, save_weights

    assert parse_args([]).model == DEFAULT_MODEL == "matmamba_vision_tiny_patch14_28"
    assert parse_args([]).model_kwargs == {}
    demo = timm.create_model(DEFAULT_MODEL, device="meta")
    patch7 = timm.create_model("matmamba_vision_tiny_patch7_28", device="meta")
    assert demo.model_args == dict(patch7.model_args, patch_size=14)  # issue 17: the same trunk on 4 tokens
    old_kwargs = dict(patch_size=7, embed_dim=128, depth=4, d_state=16, headdim=16)
    earlier = timm.create_model("matmamba_vision_tiny_patch4_28", device="meta", **old_kwargs)
    assert patch7.model_args == earlier.model_args  # the shape the demo trained before it had a name
    # an earlier demo's checkpoint (named after the patch-4 model, its shape in model_kwargs) loads both ways
    torch.manual_seed(0)
    src = timm.create_model("matmamba_vision_tiny_patch4_28", **old_kwargs)
    path = tmp_path / "model_best.safetensors"
    save_weights(src.state_dict(), path, metadata=dict(model="matmamba_vision_tiny_patch4_28", model_kwargs=old_kwargs))
    meta = read_checkpoint(path).metadata
    rebuilt = build_model(meta["model"], checkpoint=path, **meta["model_kwargs"])
    named = timm.create_model(
        "matmamba_vision_tiny_patch7_28", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))
    )
    for k, v in src.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v) and torch.equal(named.state_dict()[k], v)
