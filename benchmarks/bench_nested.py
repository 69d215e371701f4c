"""Goal 3: nested widths are really cheaper. 35M at full width vs ``set_granularity(D/8)`` vs the model from
``extract_submodel(model, D/8)``; 224 px, batch 8 (CPU, fp32).

    python benchmarks/bench_nested.py [--rounds 7]
"""

from __future__ import annotations

import timm
import torch
from _common import arg_parser, header, interleaved, ratio_line, setup, stats

import matmamba_vision


def main() -> None:
    ap = arg_parser(__doc__, rounds=7, batch=8)
    args = ap.parse_args()
    setup(args.threads)
    header("Nested vs full width: MatMamba-Vision-35M, 224 px")
    full = timm.create_model("matmamba_vision_35m_patch16_224").eval()
    g = full.embed_dim // 8
    nested = timm.create_model("matmamba_vision_35m_patch16_224").eval()
    nested.load_state_dict(full.state_dict())
    nested.set_granularity(g)
    small = matmamba_vision.extract_submodel(full, g).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.inference_mode():
        err = ((nested(x) - small(x)).norm() / small(x).norm()).item()
        fns = {
            "full (g=512)": lambda: full(x),
            f"nested g={g}": lambda: nested(x),
            f"extracted g={g}": lambda: small(x),
        }
        t = interleaved(fns, args.rounds)
    print(f"nested vs extracted logits: relative difference {err:.1e}")
    print(f"{'variant':18s} {'img/s (best)':>12s} {'img/s (median)':>14s}")
    for k, ts in t.items():
        s = stats(ts)
        print(f"{k:18s} {args.batch / s['min']:12.2f} {args.batch / s['median']:14.2f}")
    keys = list(t)
    print(ratio_line(f"nested g={g} speed-up over full", t[keys[1]], t[keys[0]], ">= 4x"))
    print(ratio_line("extracted speed vs nested", t[keys[2]], t[keys[1]], ">= 1.0x"))


if __name__ == "__main__":
    main()
