"""Gated RMSNorm of Mamba2 (``norm_before_gate=False``): ``rmsnorm(y * silu(z)) * weight``."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GatedRMSNorm", "gated_rms_norm"]


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Gate ``y`` by ``silu(z)``, then RMS-normalise over the last dim (in float32) and scale by ``weight``."""
    gated = (y * F.silu(z)).float()
    normed = gated * torch.rsqrt(gated.square().mean(-1, keepdim=True) + eps)
    return normed.to(y.dtype) * weight


class GatedRMSNorm(nn.Module):
    """Holds the norm's weight; ``forward`` takes a width-sliced weight for nested widths."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight if weight is None else weight, self.eps)
