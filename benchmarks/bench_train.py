"""Goal 5: cost of a Matryoshka ``sum`` training step (forward at D, D/2, D/4, D/8 on the same batch, mean of
the four losses, one backward, one AdamW step) vs one full-width step; MatMamba-Vision-35M, 224 px (CPU, fp32).

    python benchmarks/bench_train.py [--rounds 3] [--batch 8] [--per-granularity]

``--per-granularity`` also times one forward+backward at each granularity (no optimiser step) and prints it as
a fraction of the full-width one, next to its fraction of the arithmetic (every matrix product and convolution
of the forward and backward, counted by ``torch.utils.flop_counter``). The arithmetic column's sum is the
sum step's floor for this architecture: the B and C rows of the input projection, the ``C B^T`` products,
the patch embedding and the head do not shrink with the width.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from _common import arg_parser, header, interleaved, ratio_line, setup, stats
from torch.utils.flop_counter import FlopCounterMode

import matmamba_vision  # noqa: F401
from matmamba_vision import use_backend


def main() -> None:
    ap = arg_parser(__doc__, rounds=3, batch=8)
    ap.add_argument("--per-granularity", action="store_true", help="also time fwd+bwd per granularity")
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
    print(ratio_line("sum-step cost / full-step cost", t[keys[0]], t[keys[1]], "<= 2.0x (ideal 1.875x)"))
    if args.per_granularity:
        per_granularity(model, x, y, levels, args.rounds)


def train_flops(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, g: int) -> int:
    """FLOPs of one forward+backward at granularity ``g`` (torch's flop counter: matrix products and convs), under
    the ``'reference'`` backend (the exact SSD: one figure per width, whatever the weights). The depthwise conv's
    backward is this project's shifted multiply-adds, elementwise work the counter does not see (about 2x the
    conv's forward, about 0.2% of the total); torch's counter would count a grouped conv's backward as a dense
    one, too much by the channel count."""
    with FlopCounterMode(display=False) as counter, model.granularity(g), use_backend(model, "reference"):
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def per_granularity(model, x, y, levels, rounds: int) -> None:
    def fwd_bwd(g):
        def run():
            with model.granularity(g):
                F.cross_entropy(model(x), y).backward()

        return run

    t = interleaved({g: fwd_bwd(g) for g in levels}, rounds)
    flops = {g: train_flops(model, x, y, g) for g in levels}
    full_t = min(t[levels[0]])
    print(f"{'granularity':>11s} {'fwd+bwd s (min)':>16s} {'of full':>8s} {'GFLOP':>8s} {'FLOPs of full':>14s}")
    time_sum = flop_sum = 0.0
    for g in levels:
        frac_t, frac_f = min(t[g]) / full_t, flops[g] / flops[levels[0]]
        time_sum, flop_sum = time_sum + frac_t, flop_sum + frac_f
        print(f"{g:11d} {min(t[g]):16.3f} {frac_t:8.3f} {flops[g] / 1e9:8.1f} {frac_f:14.3f}")
    print(f"{'sum':>11s} {'':16s} {time_sum:8.3f} {'':8s} {flop_sum:14.3f}   (the sum step's arithmetic floor)")


if __name__ == "__main__":
    main()
