"""Matryoshka steps: sum and cycle modes reach every granularity's slice; batch splitting; non-finite loss."""

import pytest
import timm
import torch

import matmamba_vision  # noqa: F401  (registers the models)
from matmamba_vision.training import MatryoshkaStep, NonFiniteLossError, build_criterion, micro_batch_size

GS = [32, 16, 8, 4]


def tiny(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=8, headdim=4)


def make_step(model, mode, granularities=GS, accum=1):
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return MatryoshkaStep(model, model, opt, build_criterion(False, 0.0), granularities, mode, accum_steps=accum)


def exclusive_columns_changed(before, after, granularities):
    """For each g: did out_proj columns used by g but by no smaller trained g change (every layer)?"""
    widths = sorted(granularities)
    changed = {}
    for i, g in enumerate(widths):
        lo = 2 * widths[i - 1] if i else 0
        changed[g] = all(
            not torch.equal(before[k][:, lo : 2 * g], after[k][:, lo : 2 * g])
            for k in before
            if k.endswith("out_proj.weight")
        )
    return changed


@pytest.mark.parametrize("mode", ["sum", "cycle"])
def test_every_granularity_slice_is_trained(mode):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = make_step(model, mode)(x, y)
    assert sorted(losses) == sorted(GS) and all(v > 0 for v in losses.values())
    assert exclusive_columns_changed(before, model.state_dict(), GS) == {g: True for g in GS}


def test_untrained_width_stays_put():
    """Control: training only g=8 leaves the wider columns alone (so the check above can fail)."""
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    make_step(model, "sum", [8])(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    after = model.state_dict()
    for k in before:
        if k.endswith("out_proj.weight"):
            assert not torch.equal(before[k][:, :16], after[k][:, :16])
            assert torch.equal(before[k][:, 16:], after[k][:, 16:])


def test_sum_mode_loss_is_the_mean_over_granularities_and_one_step():
    model, ref = tiny(), tiny()
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 10, (6,))
    expected = {}
    for g in GS:
        with ref.granularity(g):
            expected[g] = torch.nn.functional.cross_entropy(ref(x), y)
    torch.stack(list(expected.values())).mean().backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.5 * p.grad
    losses = make_step(model, "sum")(x, y)
    assert losses == pytest.approx({g: v.item() for g, v in expected.items()}, rel=1e-5)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_cycle_mode_runs_one_granularity_per_micro_batch():
    model, ref = tiny(), tiny()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    losses = make_step(model, "cycle", accum=1)(x, y)
    for g, xs, ys in zip(GS, x.chunk(4), y.chunk(4)):
        with ref.granularity(g):
            assert losses[g] == pytest.approx(torch.nn.functional.cross_entropy(ref(xs), ys).item(), rel=1e-5)


def test_accumulation_equals_one_big_batch():
    a, b = tiny(), tiny()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    make_step(a, "sum", accum=1)(x, y)
    make_step(b, "sum", accum=2)(x, y)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_batch_must_split_over_ranks_accumulation_and_cycle():
    assert micro_batch_size(256, 2, 2, "sum", 4) == 64
    assert micro_batch_size(256, 2, 2, "cycle", 4) == 16
    with pytest.raises(ValueError, match="does not split over 3 ranks"):
        micro_batch_size(256, 3, 1, "sum", 4)
    with pytest.raises(ValueError, match="--grad-accum-steps 3"):
        micro_batch_size(256, 1, 3, "sum", 4)
    with pytest.raises(ValueError, match="cycle mode"):
        micro_batch_size(12, 1, 2, "cycle", 4)
    with pytest.raises(ValueError, match="matryoshka-mode"):
        micro_batch_size(12, 1, 1, "sideways", 4)


def test_non_finite_loss_stops_before_the_update(monkeypatch):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    step = make_step(model, "sum")
    original = model.forward_head
    monkeypatch.setattr(model, "forward_head", lambda x, pre_logits=False: original(x) * float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite"):
        step(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_cycle_mode_update_is_the_mean_over_micro_batches():
    """One SGD step of cycle mode equals a step on the mean of the micro-batches' losses, each at its
    granularity (the losses alone did not pin the gradient's scale)."""
    import torch.nn.functional as F

    model, ref = tiny(), tiny()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    make_step(model, "cycle")(x, y)
    losses = []
    for g, xs, ys in zip(GS, x.chunk(4), y.chunk(4)):
        with ref.granularity(g):
            losses.append(F.cross_entropy(ref(xs), ys))
    torch.stack(losses).mean().backward()
    with torch.no_grad():
        for p in ref.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=k)
