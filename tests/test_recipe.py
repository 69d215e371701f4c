"""The ImageNet configs against the official run (train_imagenet.py; README.md, "ImageNet: the official run"),
derived through train.py's own optimiser and schedule set-up; and cycle mode against a hand-written loop of the
official kind."""

import copy

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from train_utils import REPO

import matmamba_vision  # noqa: F401  (registers the models)
from matmamba_vision.training import parse_args
from matmamba_vision.training.matryoshka import MatryoshkaStep, micro_batch_size
from matmamba_vision.training.recipe import official_lr, recipe_card, scheduled_lr
from matmamba_vision.training.trainer import _create_model, _create_optimizer, _create_scheduler

IMAGENET_TRAIN = 1_281_167
GPUS = 8


def test_official_lr_formula():
    lr, warm, total = 5e-3, 10_000, 124_800
    assert official_lr(0, lr, warm, total, 2e-4) == pytest.approx(lr / warm)
    assert official_lr(warm - 1, lr, warm, total, 2e-4) == pytest.approx(lr)
    assert official_lr(warm, lr, warm, total, 2e-4) == pytest.approx(lr)
    assert official_lr((warm + total) // 2, lr, warm, total, 2e-4) == pytest.approx((lr + lr * 2e-4) / 2)
    assert official_lr(total, lr, warm, total, 2e-4) == pytest.approx(lr * 2e-4)


# name, images per official micro-step (8 GPUs x per-GPU batch), micro-steps (--num_iterations)
@pytest.mark.parametrize(
    "name, micro_images, micro_steps", [("imagenet_35m", 8192, 124_800), ("imagenet_135m", 4096, 249_600)]
)
def test_config_is_the_official_run(name, micro_images, micro_steps):
    args = parse_args(["-c", str(REPO / "configs" / f"{name}.yaml")])
    levels = 4
    # images per update: one micro-batch per granularity, each the official micro-step's global batch
    assert args.matryoshka_mode == "cycle" and args.batch_size == levels * micro_images
    per_rank = micro_batch_size(args.batch_size, GPUS, args.grad_accum_steps, args.matryoshka_mode, levels)
    assert per_rank * GPUS * args.grad_accum_steps == micro_images

    model = _create_model(args, 1000)
    assert len(model.matryoshka_levels) == levels
    optimizer = _create_optimizer(args, model)
    updates_per_epoch = IMAGENET_TRAIN // args.batch_size
    assert updates_per_epoch == IMAGENET_TRAIN // micro_images // levels  # the official epoch, in updates
    scheduler, epochs = _create_scheduler(args, optimizer, updates_per_epoch)
    updates = epochs * updates_per_epoch
    assert epochs == 800 and updates == micro_steps // levels

    # LR of every update against the official get_lr of the micro-step that takes the update (4u)
    ours = np.array([scheduled_lr(scheduler, u, args.lr, updates_per_epoch) for u in range(updates)])
    official = np.array([official_lr(levels * u, 5e-3, 10_000, micro_steps, 2e-4) for u in range(updates)])
    assert int(ours.argmax()) == int(official.argmax()) == 2_500  # warm-up: 2,500 updates
    assert np.all(np.diff(ours[:2_501]) > 0) and np.all(np.diff(ours[2_500:]) <= 0)
    assert ours[0] == pytest.approx(official[0], rel=1e-9) and ours[2_500] == pytest.approx(5e-3, rel=1e-9)
    assert ours[-1] == pytest.approx(official[-1], rel=0.05)
    assert np.abs(ours - official).max() < 2e-3 * 5e-3
    for u in (1, 1_250, 2_499, 2_501, 10_000, updates // 2):  # near the end: the absolute bound above
        assert ours[u] == pytest.approx(official[u], rel=5e-3), u
    for u in (1, 2_500, updates - 1):  # the trainer's step_update sets exactly these on the optimiser
        scheduler.step_update(num_updates=u)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(ours[u], rel=1e-12)

    # weight decay: every parameter of two or more dimensions, the embeddings and [CLS] included
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert {"pos_embed", "cls_token", "patch_embed.proj.weight", "layers.0.mixer.conv.weight"} <= decayed
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.1}
    assert (args.opt, tuple(args.opt_betas), args.clip_grad) == ("adamw", (0.9, 0.999), 1.0)

    # augmentation: the official RandAugment on both paths, no colour jitter, erasing of 2-30 %
    assert (args.aa, args.color_jitter, args.reprob, args.re_max_area) == ("official", 0.0, 0.25, 0.3)

    card = recipe_card(
        args,
        model,
        optimizer,
        scheduler,
        sorted(model.matryoshka_levels, reverse=True),
        GPUS,
        per_rank,
        updates_per_epoch,
        epochs,
    )
    text = "\n".join(card)
    assert f"{args.batch_size} images = 4 granularities" in text and f"x {micro_images} images each" in text
    assert f"= {updates}; warm-up 2500 updates" in text and "0.005 at update 2500" in text
    assert "incl. pos_embed, cls_token" in text and "no colour jitter" in text and "2-30 % box" in text


@pytest.mark.parametrize("clip", [0.0, 1.0])  # without clipping the loss scale shows in the update itself
def test_cycle_mode_is_the_official_loop(clip):
    """Two updates of train.py's cycle-mode step against the official loop written out: micro-step s runs level
    [1, 2, 4, 8][s % 4] (g = D / level) on its own images, loss / 4, gradients accumulate, clip (1.0 there), one
    optimiser step per four micro-steps (official micro-steps 1-4 and 5-8; its very first update holds micro-step
    0 only)."""
    torch.manual_seed(0)
    ours = timm.create_model(
        "matmamba_vision_tiny_patch4_28", embed_dim=32, depth=2, d_state=8, headdim=4, num_classes=5
    )
    theirs = copy.deepcopy(ours)
    start = {k: v.clone() for k, v in ours.state_dict().items()}
    gs = [32, 16, 8, 4]  # levels 1, 2, 4, 8
    x, y = torch.randn(2, 8, 1, 28, 28), torch.randint(0, 5, (2, 8))
    criterion = nn.CrossEntropyLoss()

    order = []
    real = ours.granularity
    ours.granularity = lambda g: (order.append(g), real(g))[1]
    opt_ours = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    step = MatryoshkaStep(ours, ours, opt_ours, criterion, gs, "cycle", 1, clip_grad=clip)
    opt_theirs = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)

    for u in range(2):
        losses = step(x[u], y[u])
        micro = dict(zip(gs, zip(x[u].chunk(4), y[u].chunk(4))))  # ours gives micro-batch k to gs[k]
        official = {}
        for s in range(4 * u + 1, 4 * u + 5):
            g = 32 // [1, 2, 4, 8][s % 4]
            xb, yb = micro[g]
            with theirs.granularity(g):
                loss = criterion(theirs(xb), yb) / 4
            loss.backward()
            official[g] = 4 * loss.item()
            if s % 4 == 0:
                if clip:
                    torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip)
                opt_theirs.step()
                opt_theirs.zero_grad(set_to_none=True)
        assert losses == pytest.approx(official, rel=1e-5)
    assert order == gs * 2
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(ours.state_dict()["layers.1.mixer.out_proj.weight"], start["layers.1.mixer.out_proj.weight"])
