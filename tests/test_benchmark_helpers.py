"""The benchmarks' GEMM floor counts every matrix product a call makes, once per call, with its FLOPs."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _common import gemm_floor  # noqa: E402


def test_gemm_floor_counts_each_product_and_its_flops():
    u, w = torch.randn(2, 5, 6), torch.randn(7, 6)
    p, q = torch.randn(3, 4, 8), torch.randn(8, 9)  # broadcast batch: recorded as a bmm with a stride-0 operand
    s = torch.randn(3, 4, 4)

    def fn():
        F.linear(u, w)  # one (10 x 6) @ (6 x 7)
        torch.matmul(p, q)  # one (12 x 8) @ (8 x 9), or 3 batched (4 x 8) @ (8 x 9)
        torch.baddbmm(s, s, s)  # 3 batched (4 x 4) @ (4 x 4)
        torch.relu(s)  # not a product
        return [F.linear(u, w) for _ in range(2)]  # the same shape twice more

    seconds, gflop = gemm_floor(fn, reps=1)
    want = 3 * 2 * 10 * 6 * 7 + 2 * 12 * 8 * 9 + 3 * 2 * 4 * 4 * 4
    assert abs(gflop * 1e9 - want) < 1e-3 and seconds > 0


def test_gemm_floor_counts_fused_attention():
    q, k, v = (torch.randn(2, 3, 16, 8) for _ in range(3))
    _, gflop = gemm_floor(lambda: F.scaled_dot_product_attention(q, k, v), reps=1)
    assert abs(gflop * 1e9 - 2 * (2 * 2 * 3 * 16 * 16 * 8)) < 1e-3  # Q K^T and P V
