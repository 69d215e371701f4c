"""Beyond the paper: in-place distillation (--distill) and sampled untrained widths (--sample-granularities)."""

import pytest
import timm
import torch
import torch.nn.functional as F
from train_utils import TINY_MODEL, make_image_folder

import matmamba_vision  # noqa: F401  (registers the models)
from matmamba_vision.training import MatryoshkaStep, build_criterion, main
from matmamba_vision.training.config import parse_args
from matmamba_vision.training.matryoshka import distill_loss, untrained_widths

GS = [32, 16, 8, 4]


def tiny(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=8, headdim=4)


def sgd_step(model, loss, lr=0.5):
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad


def make_step(model, granularities=GS, mode="sum", **kw):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return MatryoshkaStep(model, model, opt, build_criterion(False, 0.0), granularities, mode, **kw)


def assert_same_weights(a, b):
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), k


def test_distill_loss_is_scaled_kl():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    for temp in (1.0, 4.0):
        kl = (F.softmax(t / temp, -1) * (F.log_softmax(t / temp, -1) - F.log_softmax(s / temp, -1))).sum(-1).mean()
        assert distill_loss(s, t, temp).item() == pytest.approx(kl.item() * temp**2, rel=1e-5)
    assert distill_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_step_teaches_narrow_widths_with_detached_full_logits():
    model, ref = tiny(), tiny()
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    w, temp = 0.7, 2.0
    with ref.granularity(32):
        teacher = ref(x)
    losses = {32: F.cross_entropy(teacher, y)}
    for g in GS[1:]:
        with ref.granularity(g):
            out = ref(x)
        losses[g] = (1 - w) * F.cross_entropy(out, y) + w * distill_loss(out, teacher.detach(), temp)
    sgd_step(ref, torch.stack(list(losses.values())).mean())
    got = make_step(model, distill_weight=w, distill_temperature=temp)(x, y)
    assert got == pytest.approx({g: v.item() for g, v in losses.items()}, rel=1e-5)
    assert_same_weights(model, ref)
    # control: without distillation the same step lands elsewhere
    plain = tiny()
    make_step(plain)(x, y)
    assert not torch.allclose(plain.head.weight, model.head.weight)


def test_sampled_widths_join_the_mean():
    model, ref = tiny(), tiny()
    pool = untrained_widths(model, [32, 4])
    assert pool == [6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30]  # step 2 = headdim 4 / expand 2
    assert untrained_widths(model, GS) == [g for g in pool if g not in (8, 16)]
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    torch.manual_seed(123)
    drawn = [pool[i] for i in torch.randperm(len(pool))[:2].tolist()]
    loss = []
    for g in [32, 4, *drawn]:
        with ref.granularity(g):
            loss.append(F.cross_entropy(ref(x), y))
    sgd_step(ref, torch.stack(loss).mean())
    torch.manual_seed(123)
    got = make_step(model, [32, 4], sample_pool=pool, num_sampled=2)(x, y)
    assert sorted(got) == [4, 32]  # only the fixed widths are reported
    assert_same_weights(model, ref)


def test_cycle_mode_variants_match_a_reference():
    """Cycle mode: a narrower micro-batch's teacher is an extra no-grad full-width forward of that micro-batch; the
    step's draws ride on micro-batches 0..N-1; every width's loss weighs 1 / (K + N)."""
    model, ref = tiny(), tiny()
    gs, w = [32, 8], 0.6
    pool = untrained_widths(model, gs)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    torch.manual_seed(7)
    drawn = [pool[i] for i in torch.randperm(len(pool))[:1].tolist()]
    terms = []
    for g, xs, ys, extra in zip(gs, x.chunk(2), y.chunk(2), (drawn, [])):
        with torch.no_grad(), ref.granularity(32):
            teacher = ref(xs)
        for h in [g, *extra]:
            with ref.granularity(h):
                out = ref(xs)
            ce = F.cross_entropy(out, ys)
            terms.append(ce if h == 32 else (1 - w) * ce + w * distill_loss(out, teacher))
    sgd_step(ref, torch.stack(terms).sum() / 3)
    torch.manual_seed(7)
    make_step(model, gs, mode="cycle", distill_weight=w, sample_pool=pool, num_sampled=1)(x, y)
    assert_same_weights(model, ref)


def test_bad_variant_settings_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="--sample-granularities must be in"):
        make_step(model, [32, 16], sample_pool=untrained_widths(model, [32, 16]), num_sampled=8)
    with pytest.raises(ValueError, match="--distill-weight"):
        make_step(model, distill_weight=1.5)
    for flags in (
        ["--distill-weight", "2"],
        ["--distill-temperature", "0"],
        ["--sample-granularities", "-1"],
        ["--distill-temperature", "nan"],
    ):
        with pytest.raises(ValueError, match=flags[0]):
            parse_args(flags)


def test_train_py_with_both_variants(tmp_path):
    """Sum mode here (the default cycle mode is covered by the step-level test above)."""
    data = make_image_folder(tmp_path / "data", per_class=4)
    metrics = main(
        [
            *TINY_MODEL,
            "--data-dir",
            str(data),
            "-b",
            "4",
            "--epochs",
            "1",
            "--output",
            str(tmp_path),
            "--experiment",
            "v",
            "--no-progress",
            "--matryoshka-mode",
            "sum",
            "--distill",
            "--distill-weight",
            "0.8",
            "--distill-temperature",
            "2",
            "--sample-granularities",
            "2",
        ]
    )
    assert sorted(metrics) == [4, 8, 16, 32]
    args = (tmp_path / "v" / "args.yaml").read_text()
    assert "distill: true" in args and "sample_granularities: 2" in args
    with pytest.raises(ValueError, match="--sample-granularities"):
        main(
            [
                *TINY_MODEL,
                "--data-dir",
                str(data),
                "-b",
                "4",
                "--epochs",
                "1",
                "--output",
                str(tmp_path),
                "--experiment",
                "bad",
                "--no-progress",
                "--sample-granularities",
                "99",
            ]
        )
