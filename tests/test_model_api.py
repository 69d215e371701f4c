"""timm's model-test conventions for every registered model, and clear errors on bad input."""

import pytest
import timm
import torch
from timm.models import group_parameters

import matmamba_vision  # noqa: F401

MODELS = timm.list_models("matmamba_vision*")
SMALL = dict(embed_dim=64, depth=3, d_state=16)  # registered-model variants sized for fast API checks


def test_models_registered():
    assert {
        "matmamba_vision_35m_patch16_224",
        "matmamba_vision_135m_patch16_224",
        "matmamba_vision_tiny_patch4_28",
        "matmamba_vision_tiny_patch7_28",
        "matmamba_vision_tiny_patch14_28",
    } <= set(MODELS)
    assert timm.list_models(pretrained=True, filter="matmamba_vision_35m*")


def _input(model, batch=1):
    return torch.randn(batch, *model.pretrained_cfg["input_size"])


@pytest.mark.parametrize("name", MODELS)
def test_forward_default_cfg(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        out = model(_input(model))
    assert out.shape == (1, cfg["num_classes"]) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, **({} if "tiny" in name else SMALL)).train()
    model(_input(model, 2)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg_contract(name):
    model = timm.create_model(name, **SMALL)
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "crop_pct", "interpolation", "first_conv", "classifier", "num_classes"):
        assert key in cfg, key
    modules = dict(model.named_modules())
    assert cfg["first_conv"] in modules and cfg["classifier"] in modules
    assert len(cfg["mean"]) == len(cfg["std"]) == cfg["input_size"][0]
    x = _input(model, 2)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.patch_embed.num_patches + 1, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)

    model.reset_classifier(0)
    assert model.global_pool == "token" and model(x).shape == (2, model.num_features)
    model.reset_classifier(7, "avg")
    assert model(x).shape == (2, 7) and model.get_classifier().out_features == 7
    model.reset_classifier(5)
    assert model.global_pool == "avg"  # kept


@pytest.mark.parametrize("training", [True, False])
def test_reset_classifier_and_set_input_size_keep_mode_device_dtype(training):
    """timm's contract: the rebuilt head and patch embedding take the model's training mode, device and dtype
    (after model.eval(), a new head came back in training mode)."""
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).to(torch.float64).train(training)
    frozen = model.patch_embed.proj.weight.requires_grad_(False)
    for num_classes, pool in ((5, None), (0, None), (3, "avg")):
        model.reset_classifier(num_classes, pool)
        model.set_input_size(img_size=(32, 24), patch_size=(4, 4) if num_classes else 8)
        assert all(m.training == training for m in model.modules())
        assert {(p.device, p.dtype) for p in model.parameters()} == {(torch.device("cpu"), torch.float64)}
    assert model.get_classifier().out_features == 3 and not model.patch_embed.proj.weight.requires_grad
    assert frozen is not model.patch_embed.proj.weight  # a new patch size built a new kernel
    assert model(torch.randn(2, 1, 32, 24, dtype=torch.float64)).shape == (2, 3)


def test_model_builds_on_the_meta_device():
    """timm's config tests build every model under ``torch.device("meta")`` and run its forward there."""
    with torch.device("meta"):
        model = timm.create_model("matmamba_vision_tiny_patch4_28", device="meta", drop_path_rate=0.1).eval()
    out = model.forward_features(torch.randn(1, 1, 28, 28, device="meta"))
    assert out.is_meta and out.shape == (1, 7 * 7 + 1, model.num_features)


def test_torch_fx_traces_the_model():
    """timm's fx feature extraction: the blocks are leaves, the input check a wrapped function."""
    from timm.layers import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor

    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    fx = create_feature_extractor(model, return_nodes=["head"], tracer_kwargs=tracer)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fx(x)["head"], model(x))


def test_unknown_kwarg_raises_type_error():
    with pytest.raises(TypeError):
        timm.create_model("matmamba_vision_tiny_patch4_28", not_a_kwarg=1)


def test_timm_kwarg_names_are_accepted():
    model = timm.create_model(
        "matmamba_vision_tiny_patch4_28",
        num_classes=3,
        img_size=32,
        patch_size=8,
        in_chans=3,
        embed_dim=32,
        depth=2,
        global_pool="avg",
        drop_rate=0.1,
        drop_path_rate=0.1,
        proj_drop_rate=0.1,
        d_state=8,
        expand=2,
        headdim=8,
        d_conv=3,
        chunk_size=16,
        ngroups=2,
        ssd_backend="torch",
    )
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_group_matcher_splits_parameters():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    groups = group_parameters(model, model.group_matcher())
    flat = [n for g in groups.values() for n in g]
    assert len(groups) == 1 + SMALL["depth"] + 1  # stem, each block, final norm (+ head with it)
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())


def test_no_weight_decay_names_real_parameters():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    names = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert nwd and nwd <= set(names)
    assert {n.rsplit(".", 1)[-1] for n in nwd} == {"A_log", "D", "dt_bias"}


def test_forward_intermediates():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()
    x = _input(model, 2)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=[0, 2])
        assert torch.allclose(final, model.forward_features(x), atol=1e-6)
        assert [t.shape for t in inter] == [(2, 64, 7, 7)] * 2
        nlc = model.forward_intermediates(x, indices=2, output_fmt="NLC", intermediates_only=True)
        assert [t.shape for t in nlc] == [(2, 49, 64)] * 2
        early_final, early = model.forward_intermediates(x, indices=[1], stop_early=True)
        assert torch.allclose(early_final, final, atol=1e-6)
        normed = model.forward_intermediates(x, indices=[2], norm=True, output_fmt="NLC", intermediates_only=True)
        assert torch.allclose(normed[0], final[:, :-1], atol=1e-5)  # last block, normed = final tokens
        with_cls = model.forward_intermediates(x, indices=[2], return_prefix_tokens=True, intermediates_only=True)
        assert with_cls[0][1].shape == (2, 1, 64)
    with pytest.raises(ValueError, match="output_fmt"):
        model.forward_intermediates(x, output_fmt="NHWC")


def test_features_only():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", features_only=True, out_indices=(0, 2), **SMALL)
    feats = model(torch.randn(2, 1, 28, 28))
    assert [f.shape for f in feats] == [(2, 64, 7, 7)] * 2
    assert model.feature_info.channels() == [64, 64] and model.feature_info.reduction() == [4, 4]


def test_grad_checkpointing_recomputes_and_matches():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).train()
    x = _input(model, 2)
    calls = []
    model.layers[0].mixer.register_forward_pre_hook(lambda *a: calls.append(1))  # recompute may stop early

    def grads():
        model.zero_grad()
        torch.manual_seed(1)
        model(x).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    assert len(calls) == 1
    model.set_grad_checkpointing(True)
    calls.clear()
    ckpt = grads()
    assert len(calls) == 2  # forward, then the recomputation in backward
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "cycle"])
def test_grad_checkpointing_in_a_matryoshka_step(mode):
    """A Matryoshka step runs each granularity's backward after leaving its context; the recomputation must
    still run at that granularity (it once recomputed at full width and failed). Same update as without."""
    from matmamba_vision.training.matryoshka import MatryoshkaStep

    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))

    def step(checkpointing):
        torch.manual_seed(0)
        model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).train()
        model.set_grad_checkpointing(checkpointing)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = MatryoshkaStep(model, model, opt, torch.nn.CrossEntropyLoss(), [64, 32, 16, 8], mode)(x, y)
        return losses, model.state_dict()

    (want_losses, want), (got_losses, got) = step(False), step(True)
    assert got_losses == pytest.approx(want_losses, rel=1e-6)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_dynamic_img_size_and_creation_img_size():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", dynamic_img_size=True, **SMALL).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 36, 20)).shape == (1, 10)
    big = timm.create_model("matmamba_vision_tiny_patch4_28", img_size=56, **SMALL)
    assert big.pos_embed.shape == (1, 14 * 14 + 1, 64)


def test_avg_pool_differs_from_token_pool():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()
    x = _input(model, 2)
    feats = model.forward_features(x)
    token = model.forward_head(feats, pre_logits=True)
    model.reset_classifier(10, "avg")
    assert torch.allclose(model.forward_head(feats, pre_logits=True), feats[:, :-1].mean(1))
    assert torch.equal(token, feats[:, -1])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.randn(1, 28, 28), "expected images of shape"),
        (torch.randn(1, 1, 1, 28, 28), "expected images of shape"),
        (torch.randn(1, 3, 28, 28), "input channels"),
        (torch.randn(1, 1, 32, 32), "create the model with img_size"),
    ],
)
def test_bad_input_tensor(bad, match):
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    with pytest.raises(ValueError, match=match):
        model(bad)


def test_dynamic_size_must_fit_patches():
    model = timm.create_model("matmamba_vision_tiny_patch4_28", dynamic_img_size=True, **SMALL)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        model(torch.randn(1, 1, 30, 28))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ssd_backend="cuda"), "ssd_backend must be one of"),
        (dict(global_pool="max"), "global_pool must be one of"),
        (dict(headdim=5), "headdim"),
        (dict(ngroups=3), "ngroups"),
        (dict(mixer_dims=[64]), "mixer_dims needs one entry per block"),
        (dict(mixer_dims=[64, 0, 64]), r"mixer_dims entries must be in \[1, embed_dim=64\]"),  # 0 once meant full
        (dict(mixer_dims=[64, 128, 64]), r"mixer_dims entries must be in \[1, embed_dim=64\]"),
        (dict(mixer_dims=[64, 32.5, 64]), "mixer_dims entries must be integers"),
        (dict(expand=0), "expand must be a positive integer, got 0"),  # once built, and gave NaN everywhere
        (dict(depth=0), "depth must be an integer >= 1"),
        (dict(ngroups=0), "ngroups must be a positive integer"),
        (dict(d_conv=0), "d_conv must be a positive integer"),
        (dict(d_state=-1), "d_state must be a positive integer"),
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(num_classes=-1), "num_classes must be an integer >= 0"),
        (dict(img_size=30), "img_size 30 must be a positive multiple of patch_size 4"),
        # a dynamic model's nominal size too: it was built, then refused its own default input
        (dict(img_size=30, dynamic_img_size=True), "img_size 30 must be a positive multiple of patch_size 4"),
    ],
)
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("matmamba_vision_tiny_patch4_28", **dict(SMALL, **kwargs))


def _small_long_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("matmamba_vision_35m_patch16_224", img_size=128, depth=2, embed_dim=128).eval()


def _assert_pieces_equal_one_pass(model: torch.nn.Module, monkeypatch) -> None:
    from matmamba_vision.layers.mixer import MatMamba2Mixer

    x = torch.randn(2, 3, 128, 128)  # 65 tokens
    with torch.no_grad():
        monkeypatch.setattr(MatMamba2Mixer, "PIECE_LEN", 10**6)
        whole = model(x)
        monkeypatch.setattr(MatMamba2Mixer, "PIECE_LEN", 16)  # pieces of 16, 16, 16, 17
        pieces = model(x)
    assert ((pieces - whole).norm() / whole.norm()).item() < 1e-5


@pytest.mark.parametrize("granularity", [None, 32])
def test_long_sequence_inference_in_pieces_matches_one_pass(monkeypatch, granularity):
    """CPU inference over long sequences runs each mixer in pieces carrying conv inputs and SSD state: the
    output must equal one pass over the whole sequence (the conv tail and the state both matter here)."""
    model = _small_long_model()
    model.set_granularity(granularity)
    _assert_pieces_equal_one_pass(model, monkeypatch)


@pytest.mark.parametrize("granularity", [None, 32])
def test_streaming_forward_piece_matches_one_pass(granularity):
    """``forward_piece`` carries the conv's last inputs and the SSD state, also across pieces shorter than the
    conv's window (1 and 2 tokens here, which must combine the previous tail with the new inputs)."""
    from matmamba_vision.layers.mixer import MatMamba2Mixer

    torch.manual_seed(0)
    mixer = MatMamba2Mixer(64, d_state=16, headdim=8).eval()
    mixer.active_granularity = granularity
    u = torch.randn(2, 40, 64)
    with torch.no_grad():
        whole = mixer(u)
        state, parts, start = None, [], 0
        for n in (1, 2, 1, 0, 5, 16, 3, 0, 12):  # 0: an empty piece passes the state through
            y, state = mixer.forward_piece(u[:, start : start + n], state)
            parts.append(y)
            start += n
    assert ((torch.cat(parts, 1) - whole).norm() / whole.norm()).item() < 1e-5


def test_pieces_use_every_trained_parameter(monkeypatch):
    """Fresh models have norm weights of 1, D of 1 and small conv biases: parameters the pieces path folds or
    carries must be non-trivial for the comparison to see them (dropping the norm weight once went unseen)."""
    model = _small_long_model()
    with torch.no_grad():
        for blk in model.layers:
            for p in (blk.mixer.norm.weight, blk.mixer.D, blk.mixer.conv.bias, blk.mixer.dt_bias):
                p.uniform_(0.5, 1.5)
    _assert_pieces_equal_one_pass(model, monkeypatch)


def test_pieces_keep_what_dropout_returns(monkeypatch):
    """Each piece writes its rows of the output in place; where the mixer's dropout returns a new tensor (train
    mode under no_grad) that tensor must be the one kept. A deterministic stand-in (x / 2) checks it."""

    class Halve(torch.nn.Module):
        def forward(self, t):
            return t / 2

    model = _small_long_model()
    for blk in model.layers:
        blk.mixer.proj_drop = Halve()
    _assert_pieces_equal_one_pass(model, monkeypatch)


def test_pieces_under_autocast_keep_the_residual_stream_in_float32(monkeypatch):
    """Under CPU autocast the mixers return bfloat16 while the residual stream stays float32 (``hidden +
    residual`` promotes); the pieces path must sum into a float32 stream too, as the single pass does."""
    from matmamba_vision.layers.mixer import MatMamba2Mixer

    model, x = _small_long_model(), torch.randn(2, 3, 128, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(MatMamba2Mixer, "PIECE_LEN", 10**6)
        whole = model.forward_features(x)
        monkeypatch.setattr(MatMamba2Mixer, "PIECE_LEN", 16)
        pieces = model.forward_features(x)
    assert whole.dtype == pieces.dtype == torch.float32
    assert ((pieces - whole).norm() / whole.norm()).item() < 2e-2  # bfloat16 mixers, summed in float32


def test_float64_model_runs_in_float64():
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28").eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        want = model(x).double()
        got = model.double()(x.double())
    assert got.dtype == torch.float64 and ((got - want).norm() / want.norm()).item() < 1e-5


def test_build_model_takes_timm_pretrained_tags():
    from matmamba_vision.weights import build_model

    assert isinstance(build_model("matmamba_vision_tiny_patch4_28.fmnist"), torch.nn.Module)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("matmamba_vision_nope.fmnist")


def test_position_embedding_from_a_non_square_grid_is_refused():
    from matmamba_vision.models.matmamba_vision import checkpoint_filter_fn

    src = timm.create_model("matmamba_vision_tiny_patch4_28", img_size=(16, 32))  # a 4 x 8 grid
    dst = timm.create_model("matmamba_vision_tiny_patch4_28")
    with pytest.raises(ValueError, match="32 patch positions and no recorded grid"):
        checkpoint_filter_fn(src.state_dict(), dst)


@pytest.mark.parametrize("src_size", [(16, 64), (32, 32)])  # a 4 x 16 grid (64 positions, a square count), 8 x 8
def test_saved_model_reloads_at_another_size_from_its_recorded_grid(tmp_path, src_size):
    """local-dir reload at img_size 48: the position grid comes from the saved model args (a 4 x 16 grid was
    taken as 8 x 8, silently) and matches the source model run at 48 px with dynamic sizes."""
    from matmamba_vision.weights import save_model_dir

    torch.manual_seed(0)
    src = timm.create_model("matmamba_vision_tiny_patch4_28", img_size=src_size, dynamic_img_size=True, **SMALL).eval()
    save_model_dir(src, tmp_path / "m")
    dst = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True, img_size=48).eval()
    x = torch.randn(2, 1, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=1e-5, atol=1e-6)


def test_pretrained_weights_load_into_another_patch_size(tmp_path):
    """The patch kernel is resampled as timm's ViT does (it was a size-mismatch error)."""
    from matmamba_vision.weights import save_weights

    src = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    save_weights(src.state_dict(), tmp_path / "w.safetensors")
    dst = timm.create_model(
        "matmamba_vision_tiny_patch4_28",
        pretrained=True,
        patch_size=7,
        **SMALL,
        pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors")),
    )
    assert dst.patch_embed.proj.weight.shape[-2:] == (7, 7) and dst.pos_embed.shape == (1, 17, 64)
    with torch.no_grad():
        assert torch.isfinite(dst(torch.randn(1, 1, 28, 28))).all()


def test_timm_data_config_and_export_follow_the_model_size(tmp_path):
    """timm took the model as flexible-size and reported the registered 28 px for a 32 px model (and its export
    and submodels), which the model then refused. timm >= 1.0.31 reads the model's input traits
    (resolve_input_data_config); its older resolve_data_config reads the config, which the export now carries."""
    from timm import data as timm_data

    from matmamba_vision import extract_submodel
    from matmamba_vision.weights import save_model_dir

    model = timm.create_model("matmamba_vision_tiny_patch4_28", img_size=32, **SMALL).eval()
    sub = extract_submodel(model, 16)
    save_model_dir(sub, tmp_path / "sub")
    back = timm.create_model(f"local-dir:{tmp_path / 'sub'}", pretrained=True).eval()
    assert timm_data.resolve_data_config({}, model=back)["input_size"] == (1, 32, 32)
    if not hasattr(timm_data, "resolve_input_data_config"):
        pytest.skip("this timm has no model input traits")
    for m in (model, sub, back):
        size = timm_data.resolve_input_data_config(m)["input_size"]
        assert size == (1, 32, 32), size
        with torch.no_grad():
            m(torch.randn(1, *size))


def test_granularity_accepts_numpy_integers():
    import numpy as np

    model = timm.create_model("matmamba_vision_tiny_patch4_28")
    for g in (np.int64(64), np.int32(32)):
        assert model.resolve_granularity(g) == [int(g)] * len(model.layers)
    with pytest.raises(ValueError, match="granularity must be None, an int"):
        model.resolve_granularity(64.0)


def test_submodel_of_a_model_without_its_final_norm():
    from matmamba_vision import extract_submodel

    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()
    model.prune_intermediate_layers(indices=[1], prune_norm=True)
    model.set_grad_checkpointing()
    sub = extract_submodel(model, 32).eval()  # was a load_state_dict error: missing norm_f.weight, norm_f.bias
    assert sub.grad_checkpointing
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), model.granularity(32):
        assert torch.equal(sub.forward_features(x), model.forward_features(x))


def test_pruned_model_still_extracts_submodels():
    from matmamba_vision import extract_submodel

    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28").eval()
    model.prune_intermediate_layers(indices=[1])
    assert model.model_args["depth"] == 2 and len(model.model_args["mixer_dims"]) == 2
    x = torch.randn(2, 1, 28, 28)
    sub = extract_submodel(model, 32).eval()
    with torch.no_grad():
        with model.granularity(32):
            want = model.forward_features(x)
        got = sub.forward_features(x)
    assert torch.equal(got, want)


def test_set_input_size_matches_a_model_built_at_that_size():
    from matmamba_vision.data import model_data_config
    from matmamba_vision.models.matmamba_vision import checkpoint_filter_fn

    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()
    built = timm.create_model("matmamba_vision_tiny_patch4_28", img_size=(56, 40), **SMALL).eval()
    built.load_state_dict(checkpoint_filter_fn(model.state_dict(), built))  # resampled as pretrained=True does
    cls_pos = model.pos_embed[:, -1].clone()
    model.set_input_size((56, 40))
    assert model.pos_embed.shape == (1, 14 * 10 + 1, 64) and torch.equal(model.pos_embed[:, -1], cls_pos)
    assert model.model_args["img_size"] == (56, 40)
    assert model_data_config(model)["input_size"] == (1, 56, 40)
    x = torch.randn(2, 1, 56, 40)
    with torch.no_grad():
        assert torch.equal(model(x), built(x))
    with pytest.raises(ValueError, match="create the model with img_size"):
        model(torch.randn(2, 1, 28, 28))


def test_set_input_size_new_patch_size_rebuilds_from_model_args():
    torch.manual_seed(0)
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL).eval()
    model.set_input_size(patch_size=7)
    assert model.patch_embed.proj.weight.shape[-2:] == (7, 7) and model.pos_embed.shape == (1, 4 * 4 + 1, 64)
    assert model.feature_info[0]["reduction"] == 7
    rebuilt = type(model)(**model.model_args).eval()  # what save_model_dir and extract_submodel rely on
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=30), r"img_size \(30, 30\) must be a positive multiple of patch_size \(4, 4\)"),
        (dict(patch_size=0), "patch_size must be a positive integer"),
        (dict(patch_size=5), r"img_size \(28, 28\) must be a positive multiple of patch_size \(5, 5\)"),
    ],
)
def test_set_input_size_refuses_sizes_that_do_not_fit(kwargs, match):
    model = timm.create_model("matmamba_vision_tiny_patch4_28", **SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        model.set_input_size(**kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # left as it was
