"""Goal 4: the project's SSD scan vs the well-known "minimal" chunked einsum SSD, forward and forward+backward,
64 heads, headdim 16, d_state 128 (one group, B and C broadcast to the heads for the reference), CPU fp32.

The reference is written here from its published description (Mamba-2 paper / blog, "SSD minimal"): segment
sums give the (chunk x chunk) decay matrices; four einsums give the intra-chunk output, each chunk's end state,
the states passed between chunks (a segsum over chunk ends) and the inter-chunk output. It needs the length to
be a multiple of its block length, so it runs on zero-padded inputs (dt = 0 on padding) where it must; it is
timed at two block lengths and compared at its faster one.

    python benchmarks/bench_ssd.py [--rounds 5]
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from _common import arg_parser, header, interleaved, ratio_line, setup, stats

from matmamba_vision.ops import ssd_scan


def segsum(x: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[..., i, j] = x[j+1] + ... + x[i] for j <= i, -inf above the diagonal."""
    t = x.shape[-1]
    x = x.unsqueeze(-1).expand(*x.shape, t)  # [..., i, j] = x_i
    x = x.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(-1), 0.0)
    out = torch.cumsum(x, dim=-2)
    return out.masked_fill(~torch.ones(t, t, dtype=torch.bool, device=x.device).tril(), float("-inf"))


def ssd_minimal(X: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, block: int) -> torch.Tensor:
    """X (b, l, h, p) = dt x; A (b, l, h) = dt A; B, C (b, l, h, n); l a multiple of ``block``."""
    b, l, h, p = X.shape
    c = l // block
    X, B, C = (t.reshape(b, c, block, h, -1) for t in (X, B, C))
    A = A.reshape(b, c, block, h).permute(0, 3, 1, 2)  # (b, h, c, l)
    A_cum = torch.cumsum(A, dim=-1)
    L = torch.exp(segsum(A))  # (b, h, c, l, s)
    Y_diag = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", C, B, L, X)
    decay_states = torch.exp(A_cum[..., -1:] - A_cum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", B, decay_states, X)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunk = torch.exp(segsum(F.pad(A_cum[..., -1], (1, 0))))  # (b, h, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)[:, :-1]
    Y_off = torch.einsum("bclhn,bchpn,bhcl->bclhp", C, states, torch.exp(A_cum))
    return (Y_diag + Y_off).reshape(b, l, h, p)


def reference(x, dt, A, B, C, block: int) -> torch.Tensor:
    """Same inputs and output as ``ssd_scan``, through ``ssd_minimal`` (padding to a whole block)."""
    l, h = x.shape[1], x.shape[2]
    pad = -l % block
    if pad:
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    Bh, Ch = (t.expand(-1, -1, h, -1) for t in (B, C))
    y = ssd_minimal(x * dt.unsqueeze(-1), dt * A, Bh, Ch, block)
    return y[:, :l]


def torch_scan(*ins: torch.Tensor) -> torch.Tensor:
    """The project's scan on the torch backend (its CPU fast path)."""
    return ssd_scan(*ins, backend="torch")


def make(b: int, l: int, h: int = 64, p: int = 16, n: int = 128, grad: bool = False) -> Tuple[torch.Tensor, ...]:
    x = torch.randn(b, l, h, p)
    dt = F.softplus(torch.randn(b, l, h) + torch.log(torch.expm1(torch.full((h,), 0.01))))  # ~ the model's init
    A = -torch.empty(h).uniform_(1, 16)
    B, C = torch.randn(b, l, 1, n), torch.randn(b, l, 1, n)
    return tuple(t.requires_grad_(grad) for t in (x, dt, A, B, C))


def main() -> None:
    ap = arg_parser(__doc__, rounds=5)
    args = ap.parse_args()
    setup(args.threads)
    header("SSD scan: ssd_scan (torch backend) vs the minimal chunked einsum SSD (64 heads, headdim 16, d_state 128)")
    cases: List[Tuple[int, int, Tuple[int, int]]] = [(8, 197, (197, 64)), (1, 4096, (64, 256))]
    for b, l, blocks in cases:
        for mode in ("forward", "forward+backward"):
            grad = mode != "forward"
            ins = make(b, l, grad=grad)
            w = torch.randn(b, l, 64, 16)

            def run(fn):
                if grad:

                    def step():
                        (fn(*ins) * w).sum().backward()

                    return step

                def fwd():
                    with torch.no_grad():
                        fn(*ins)

                return fwd

            fns = {"ssd_scan (torch)": run(torch_scan)}
            for blk in blocks:
                fns[f"minimal block {blk}"] = run(lambda *a, blk=blk: reference(*a, blk))
            with torch.no_grad():
                ref = reference(*ins, blocks[0])
                err = ((torch_scan(*ins) - ref).norm() / ref.norm()).item()
            t = interleaved(fns, args.rounds)
            best_ref = min((k for k in fns if k.startswith("minimal")), key=lambda k: min(t[k]))
            print(f"\nbatch {b}, L {l}, {mode} (outputs agree to {err:.1e} relative)")
            for k, ts in t.items():
                s = stats(ts)
                print(f"  {k:22s} min {s['min'] * 1e3:9.1f} ms   median {s['median'] * 1e3:9.1f} ms")
            print("  " + ratio_line(f"speed-up over {best_ref}", t["ssd_scan (torch)"], t[best_ref], ">= 2x"))


if __name__ == "__main__":
    main()
