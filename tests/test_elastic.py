"""Nested granularities: choosing widths, extracting submodels, counting parameters and FLOPs."""

import pytest
import timm
import torch

import matmamba_vision as mv
from matmamba_vision.weights import save_model_dir

SMALL = dict(embed_dim=64, depth=3, d_state=16, headdim=8)  # valid granularities: multiples of 4 up to 64


@pytest.fixture
def model():
    return timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()


@pytest.fixture
def images():
    return torch.randn(3, 1, 28, 28)


@pytest.mark.parametrize("spec", [None, 64, 32, 16, 8, 4, [64, 8, 32], [4, 64, 12], (60, 20, 36)])
def test_extracted_submodel_equals_nested(model, images, spec):
    with torch.no_grad(), model.granularity(spec):
        nested = model(images)
    sub = mv.extract_submodel(model, list(spec) if isinstance(spec, tuple) else spec)
    with torch.no_grad():
        torch.testing.assert_close(sub(images), nested, rtol=1e-5, atol=1e-6)
    assert sum(p.numel() for p in sub.parameters()) == mv.count_params(model, spec)
    assert model.granularities == [None] * 3  # the context restored full width


def test_submodel_gradients_equal_nested_slices(model, images):
    spec = [32, 8, 64]
    sub = mv.extract_submodel(model, spec).train()
    model.train()
    torch.manual_seed(0)
    sub(images).square().sum().backward()
    torch.manual_seed(0)
    with model.granularity(spec):
        model(images).square().sum().backward()
    for i in range(len(spec)):
        ours = model.layers[i].mixer
        for name, param in sub.layers[i].mixer.named_parameters():
            full = dict(ours.named_parameters())[name].grad
            view = {"out_proj.weight": lambda t: t[:, : param.shape[1]]}.get(name, lambda t: t[: param.shape[0]])  # noqa: B023
            torch.testing.assert_close(view(full), param.grad, rtol=1e-4, atol=1e-6, msg=f"layer {i} {name}")
            if name != "out_proj.weight" and full.shape[0] > param.shape[0]:
                assert not full[param.shape[0] :].any(), f"inactive rows of {name} got gradient"


def test_nested_forward_slices_views_not_copies(model):
    mixer = model.layers[0].mixer
    for name, view in mixer.sliced_parameters(8).items():
        full = dict(mixer.named_parameters())[name]
        assert (
            view.data_ptr() == full.data_ptr()
            and view.untyped_storage().data_ptr() == full.untyped_storage().data_ptr()
        )
    assert mixer.sliced_parameters(8)["xbc_proj.weight"].is_contiguous()
    assert mixer.sliced_parameters(8)["zdt_proj.weight"].is_contiguous()


def test_granularity_context_restores_on_error(model):
    model.set_granularity([64, 32, 16])
    with pytest.raises(RuntimeError):
        with model.granularity(8):
            assert model.granularities == [8, 8, 8]
            raise RuntimeError("boom")
    assert model.granularities == [64, 32, 16]
    model.set_granularity(None)
    assert model.granularities == [None, None, None]


@pytest.mark.parametrize(
    "bad, match",
    [
        (0, "multiple of 4 in \\[4, 64\\]"),
        (-8, "multiple of 4"),
        (6, "multiple of 4"),
        (128, "multiple of 4"),
        (32.0, "None, an int, or a list"),
        (True, "None, an int, or a list"),
        ("32", "None, an int, or a list"),
        ([64, 32], "one entry per block \\(3\\)"),
        ([64, 32, 30], "layer 2"),
    ],
)
def test_bad_granularity_raises_value_error(model, bad, match):
    with pytest.raises(ValueError, match=match):
        model.set_granularity(bad)
    with pytest.raises(ValueError, match=match):
        mv.extract_submodel(model, bad)
    assert model.granularities == [None] * 3


def test_submodel_is_elastic_within_its_own_widths(model, images):
    sub = mv.extract_submodel(model, [32, 16, 64])
    assert sub.model_args["mixer_dims"] == [32, 16, 64]
    assert sub.matryoshka_levels == [16, 8]  # the levels every layer still holds
    with torch.no_grad(), model.granularity(8):
        nested = model(images)
    with torch.no_grad(), sub.granularity(8):
        torch.testing.assert_close(sub(images), nested, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="layer 1"):
        sub.set_granularity(32)


def test_submodel_saves_and_loads_through_timm(model, images, tmp_path):
    sub = mv.extract_submodel(model, [16, 64, 8])
    save_model_dir(sub, tmp_path / "sub")
    again = timm.create_model(f"local-dir:{tmp_path / 'sub'}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(again(images), sub(images))
    assert again.model_args["mixer_dims"] == [16, 64, 8]


def test_count_params(model):
    full = sum(p.numel() for p in model.parameters())
    assert mv.count_params(model) == full
    emb = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("patch_embed", "pos_embed", "cls_token")))
    assert mv.count_params(model, exclude_embedding=True) == full - emb
    sizes = [mv.count_params(model, g) for g in (64, 32, 16, 8)]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == 4


def test_count_params_matches_formula():
    m = timm.create_model("matmamba_vision_35m_patch16_224")
    D, N, P, depth = 512, 128, 16, 20
    for g in m.matryoshka_levels:
        di, h = 2 * g, 2 * g // P
        mixer = D * (2 * di + 2 * N + h) + (di + 2 * N) * 5 + 3 * h + di + di * D
        block = mixer + 2 * D
        expect = depth * block + 2 * D + D * 1000 + 1000
        assert mv.count_params(m, g, exclude_embedding=True) == expect


def test_count_flops(model):
    flops = [mv.count_flops(model, g) for g in (64, 32, 16, 8)]
    assert flops == sorted(flops, reverse=True) and len(set(flops)) == 4
    # the projections dominate: at least 2 * tokens * D * (in + out widths) per block
    tokens, D = 50, 64
    proj = 2 * tokens * D * (2 * 128 + 2 * 16 + 16 + 128) * 3
    assert proj < flops[0] < 3 * proj
    assert mv.count_flops(model, [64, 8, 8]) < flops[0]
    assert model.training is False and model.granularities == [None] * 3


def _expected_flops(model, dims, tokens):
    """Every product and conv of one forward, by hand: patch embedding, per block the projections, the depthwise
    conv (its padded output, as the counter counts conv2d), the exact single-chunk SSD (C B^T per group and the
    (L x L) decayed scores times x per head), out_proj; the head."""
    D = model.embed_dim
    pe = model.patch_embed.proj
    total = 2 * (tokens - 1) * D * pe.in_channels * pe.kernel_size[0] * pe.kernel_size[1] + 2 * D * model.num_classes
    for blk, g in zip(model.layers, dims):
        mx = blk.mixer
        di = mx.expand * g
        h, p, k = di // mx.headdim, mx.headdim, mx.conv.weight.shape[1]
        channels = mx.n_bc + di
        total += 2 * tokens * D * (channels + h * (p + 1) + di)  # xbc_proj, zdt_proj, out_proj
        total += 2 * (tokens + k - 1) * k * channels  # depthwise conv
        total += 2 * mx.ngroups * tokens * tokens * mx.d_state + 2 * h * tokens * tokens * p  # SSD
    return total


@pytest.mark.parametrize("dims", [[64, 64, 64], [64, 8, 32], [32, 8, 64], [4, 4, 4]])
def test_count_flops_counts_every_product_whatever_the_data(model, dims):
    """One figure per configuration: the SSD's data-dependent row blocks (their split follows the decay rates)
    and oneDNN's fused conv (invisible to the counter) made the same widths in another order count differently."""
    expected = _expected_flops(model, dims, tokens=50)
    assert mv.count_flops(model, dims) == expected
    with torch.no_grad():
        for blk in model.layers:  # decays fast enough that the fast path would split the rows into blocks
            blk.mixer.A_log.fill_(8.0)
            blk.mixer.dt_bias.fill_(3.0)
    assert mv.count_flops(model, dims) == expected


def test_count_flops_other_image_size():
    m = timm.create_model("matmamba_vision_tiny_patch4_28", dynamic_img_size=True, **SMALL)
    assert mv.count_flops(m, img_size=56) > 3.5 * mv.count_flops(m, img_size=28)


def test_model_dir_of_a_class_built_model(tmp_path):
    """A model built from the class (no pretrained_cfg) saves a complete folder that rebuilds it."""
    from matmamba_vision.models import MatMambaVision

    torch.manual_seed(0)
    model = MatMambaVision(
        img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=2, d_state=16
    ).eval()
    save_model_dir(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    again = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.pretrained_cfg["input_size"] == (1, 28, 28)


def test_extracted_model_keeps_train_or_eval_mode():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=8, headdim=4)
    assert not mv.extract_submodel(model.eval(), 16).training
    assert mv.extract_submodel(model.train(), 16).training
