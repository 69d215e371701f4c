"""Goal 5: cost of a Matryoshka ``sum`` training step (forward at D, D/2, D/4, D/8 on the same batch, mean of
the four losses, one backward, one AdamW step) vs one full-width step; MatMamba-Vision-35M, 224 px (CPU, fp32).

    python benchmarks/bench_train.py [--rounds 3] [--batch 8]
"""
from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

import matmamba_vision  # noqa: F401
from _common import header, interleaved, ratio_line, setup, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup(args.threads)
    header("Training step: Matryoshka sum over 4 granularities vs full width (35M, 224 px)")
    model = timm.create_model("matmamba_vision_35m_patch16_224").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randn(args.batch, 3, 224, 224), torch.randint(0, 1000, (args.batch,))
    levels = model.matryoshka_levels

    def full_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def sum_step():
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for g in levels:
            with model.granularity(g):
                loss = loss + F.cross_entropy(model(x), y)
        (loss / len(levels)).backward()
        opt.step()

    t = interleaved({"full width": full_step, f"sum over {levels}": sum_step}, args.rounds)
    keys = list(t)
    for k in keys:
        s = stats(t[k])
        print(f"{k:28s} min {s['min']:.2f} s   median {s['median']:.2f} s   ({args.batch / s['min']:.2f} img/s best)")
    print(ratio_line("sum-step cost / full-step cost", t[keys[0]], t[keys[1]], "<= 2.0x (ideal 1.875x)")
          .replace("x (min)", "x (min)"))


if __name__ == "__main__":
    main()
