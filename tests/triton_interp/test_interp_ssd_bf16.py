"""bf16 inputs through the interpreter: the dots that take 16-bit operands on a GPU (ops/triton/ssd.py,
``_ops16``) multiply float32 operands here, as the interpreter holds bf16 as uint16 and would multiply integers."""

import torch
import torch.nn.functional as F

from matmamba_vision.ops import ssd_recurrence_ref
from matmamba_vision.ops.triton.ssd import ssd


def test_ssd_forward_bf16_matches_recurrence():
    torch.manual_seed(0)
    x = torch.randn(1, 37, 4, 4).bfloat16()
    dt, A = F.softplus(torch.randn(1, 37, 4) - 1), -torch.rand(4) - 1
    B, C = torch.randn(1, 37, 2, 16).bfloat16(), torch.randn(1, 37, 2, 16).bfloat16()
    y = ssd(x, dt, A, B, C, chunk_size=16)
    y_ref = ssd_recurrence_ref(x, dt, A, B, C)
    assert y.dtype == torch.bfloat16
    # y cast to bf16, which the interpreter truncates: under 2^-8 of a value (measured: 3.6e-3 of the max)
    assert ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item() <= 1e-2
