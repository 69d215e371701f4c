"""The gated RMSNorm module of Mamba2 (``norm_before_gate=False``); its functions live in :mod:`..ops.gated_norm`."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ..ops.gated_norm import gated_rms_norm_ref

__all__ = ["GatedRMSNorm"]


class GatedRMSNorm(nn.Module):
    """Holds the norm's weight; ``forward`` takes a width-sliced weight for nested widths."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, y: torch.Tensor, z: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        return gated_rms_norm_ref(y, z, self.weight if weight is None else weight, self.eps)
