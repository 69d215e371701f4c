"""Issue 17: the `make demo` recipe before and after, one Matryoshka training step of each, interleaved.

    PYTHONPATH=. python benchmarks/bench_demo.py [--rounds 5] [--threads 2] [--baselines]

"before" is the recipe up to issue 17 (sum mode, batch 128, lr 2e-3, 8 epochs, the patch-7 model); "after" is train.py's
embedded default now (``parse_args([])``), or that plus the train.py flags given in ``--after``. Each step is
train.py's own ``MatryoshkaStep`` (AdamW, label smoothing 0.1, clipping 1.0) on random 28 x 28 images.
Printed: seconds per step, milliseconds per image, and the training time of a whole run (steps per epoch x
epochs x step time) with the ratio before / after, from the min and from the median; validation and data
loading are left out (the full `make demo` wall time is measured apart).
"""

from __future__ import annotations

import shlex
from typing import Optional

import timm
import torch
from _common import arg_parser, header, interleaved, setup, stats

import matmamba_vision  # noqa: F401
from matmamba_vision.training import MatryoshkaStep, build_criterion
from matmamba_vision.training.config import parse_args

TRAIN_IMAGES = 60_000  # Fashion-MNIST's training split
BEFORE = dict(mode="sum", batch_size=128, epochs=8, lr=2e-3, model="matmamba_vision_tiny_patch7_28", model_kwargs={})


def make_step(model_name: str, model_kwargs: dict, mode: str, batch: int, lr: float, width: Optional[int] = None):
    """One training step of the recipe; ``width``: a reproduce.py baseline (mixers ``width`` wide, trained alone)."""
    kwargs = dict(model_kwargs)
    if width is not None:
        kwargs["mixer_dims"] = [width] * timm.create_model(model_name, device="meta", **kwargs).model_args["depth"]
    model = timm.create_model(model_name, num_classes=10, in_chans=1, **kwargs).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    levels = [width] if width is not None else model.matryoshka_levels
    step = MatryoshkaStep(model, model, opt, build_criterion(False, 0.1), levels, mode, clip_grad=1.0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    return (lambda: step(x, y)), sum(p.numel() for p in model.parameters())


def main() -> None:
    ap = arg_parser(__doc__, rounds=5)
    ap.add_argument(
        "--after",
        default="",
        help="train.py flags of the 'after' recipe (default: none, i.e. train.py's "
        "embedded default), e.g. '--matryoshka-mode cycle -b 512 --lr 4e-3'",
    )
    ap.add_argument(
        "--baselines",
        action="store_true",
        help="also time reproduce.py's baselines (one per trained width, the new recipe)",
    )
    args = ap.parse_args()
    setup(args.threads)
    header("make demo's training step: recipe before issue 17 vs now (4 granularities)")
    now = parse_args(shlex.split(args.after))
    recipes = {
        "before": BEFORE,
        "after": dict(
            mode=now.matryoshka_mode,
            batch_size=now.batch_size,
            epochs=now.epochs,
            lr=now.lr,
            model=now.model,
            model_kwargs=dict(now.model_kwargs),
        ),
    }
    fns, runs = {}, {}
    for name, r in recipes.items():
        fns[name], params = make_step(r["model"], r["model_kwargs"], r["mode"], r["batch_size"], r["lr"])
        steps = TRAIN_IMAGES // r["batch_size"] * r["epochs"]  # the loader drops the partial batch
        runs[name] = steps
        print(
            f"# {name}: {r['mode']} mode, batch {r['batch_size']}, {r['epochs']} epochs = {steps} steps, "
            f"{params / 1e6:.2f}M params, {r['model']} {r['model_kwargs'] or ''}"
        )
    after = recipes["after"]
    widths = timm.create_model(after["model"], device="meta", **after["model_kwargs"]).matryoshka_levels
    for g in widths if args.baselines else ():
        fns[f"base g{g}"], _ = make_step(
            after["model"], after["model_kwargs"], after["mode"], after["batch_size"], after["lr"], width=g
        )
    t = interleaved(fns, args.rounds)
    total = {}
    for name in recipes:
        s = stats(t[name])
        b = recipes[name]["batch_size"]
        total[name] = {k: v * runs[name] for k, v in s.items()}
        print(
            f"{name:7s} step min {s['min']:.3f} s  median {s['median']:.3f} s  ({1000 * s['min'] / b:.2f} ms/img)   "
            f"whole run's steps: {total[name]['min'] / 60:.1f} min (min) / {total[name]['median'] / 60:.1f} min "
            f"(median)"
        )
    print(
        f"training time before / after: {total['before']['min'] / total['after']['min']:.2f}x (min) / "
        f"{total['before']['median'] / total['after']['median']:.2f}x (median)   goal >= 3x"
    )
    if args.baselines:
        base = {k: sum(stats(t[f"base g{g}"])[k] for g in widths) for k in ("min", "median")}
        nested = {k: stats(t["after"])[k] for k in ("min", "median")}
        print(
            f"reproduce.py's baselines {widths} per step: {base['min']:.3f} s (min) / {base['median']:.3f} s "
            f"(median) = {base['min'] / nested['min']:.2f}x / {base['median'] / nested['median']:.2f}x the nested "
            f"model's step, so its seed-0 trainings cost {1 + base['min'] / nested['min']:.2f}x / "
            f"{1 + base['median'] / nested['median']:.2f}x the demo's training"
        )


if __name__ == "__main__":
    main()
