"""Issue 17: the `make demo` recipe before and after, one Matryoshka training step of each, interleaved.

    PYTHONPATH=. python benchmarks/bench_demo.py [--rounds 5] [--threads 2]

"before" is the recipe up to issue 17 (sum mode, batch 128, 8 epochs, the model below); "after" is train.py's
embedded default now (``parse_args([])``). Each step is train.py's own ``MatryoshkaStep`` (AdamW, label smoothing 0.1,
clipping 1.0) on random 28 x 28 images. Printed: seconds per step, milliseconds per image, and the training
time of a whole run (steps per epoch x epochs x step time) with the ratio before / after, from the min and
from the median; validation and data loading are left out (the full `make demo` wall time is measured apart).
"""
from __future__ import annotations


import timm
import torch
import yaml

import matmamba_vision  # noqa: F401
from matmamba_vision.training import MatryoshkaStep, build_criterion
from matmamba_vision.training.config import parse_args
from _common import arg_parser, header, interleaved, setup, stats

TRAIN_IMAGES = 60_000  # Fashion-MNIST's training split
BEFORE = dict(mode="sum", batch_size=128, epochs=8, lr=2e-3,
              model_kwargs="{patch_size: 7, embed_dim: 128, depth: 4, d_state: 16, headdim: 16}")


def make_step(model_name: str, model_kwargs: str, mode: str, batch: int, lr: float):
    model = timm.create_model(model_name, num_classes=10, in_chans=1, **yaml.safe_load(model_kwargs)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    step = MatryoshkaStep(model, model, opt, build_criterion(False, 0.1), model.matryoshka_levels, mode,
                          clip_grad=1.0)
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    return (lambda: step(x, y)), sum(p.numel() for p in model.parameters())


def main() -> None:
    args = arg_parser(__doc__, rounds=5).parse_args()
    setup(args.threads)
    header("make demo's training step: recipe before issue 17 vs now (4 granularities)")
    now = parse_args([])
    recipes = {"before": dict(BEFORE, model=now.model),
               "after": dict(mode=now.matryoshka_mode, batch_size=now.batch_size, epochs=now.epochs, lr=now.lr, model=now.model,
                             model_kwargs=now.model_kwargs)}
    fns, runs = {}, {}
    for name, r in recipes.items():
        fns[name], params = make_step(r["model"], r["model_kwargs"], r["mode"], r["batch_size"], r["lr"])
        steps = TRAIN_IMAGES // r["batch_size"] * r["epochs"]  # the loader drops the partial batch
        runs[name] = steps
        print(f"# {name}: {r['mode']} mode, batch {r['batch_size']}, {r['epochs']} epochs = {steps} steps, {params / 1e6:.2f}M params, "
              f"{r['model_kwargs']}")
    t = interleaved(fns, args.rounds)
    total = {}
    for name in fns:
        s = stats(t[name])
        b = recipes[name]["batch_size"]
        total[name] = {k: v * runs[name] for k, v in s.items()}
        print(f"{name:7s} step min {s['min']:.3f} s  median {s['median']:.3f} s  ({1000 * s['min'] / b:.2f} ms/img)   "
              f"whole run's steps: {total[name]['min'] / 60:.1f} min (min) / {total[name]['median'] / 60:.1f} min "
              f"(median)")
    print(f"training time before / after: {total['before']['min'] / total['after']['min']:.2f}x (min) / "
          f"{total['before']['median'] / total['after']['median']:.2f}x (median)   goal >= 3x")


if __name__ == "__main__":
    main()
