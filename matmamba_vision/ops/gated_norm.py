"""Gated RMSNorm of Mamba2 (``norm_before_gate=False``): ``rmsnorm(y * silu(z)) * weight``, and the same
followed by the mixer's output projection in fewer passes over the wide input."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import statically_known_true

__all__ = ["gated_rms_norm_ref", "gated_rms_norm_linear", "rms_norm_linear"]


def gated_rms_norm_ref(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``rmsnorm(y * silu(z)) * weight`` over the last dim, in ``y.dtype``: the reference of every route (the
    torch tail below, the Triton kernel :mod:`.triton.gated_norm`).

    Gate, statistics and weight all in float32 (float64 for a float64 model), one rounding at the end: as
    mamba_ssm's ``rms_norm_ref`` (``upcast=True``) and its Triton kernel, which the official model runs.
    """
    dtype = torch.promote_types(y.dtype, torch.float32)
    g = y.to(dtype) * F.silu(z.to(dtype))
    return (g * torch.rsqrt(g.square().mean(-1, keepdim=True) + eps) * weight.to(dtype)).to(y.dtype)


def gated_rms_norm_linear(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, out_weight: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """``F.linear(gated_rms_norm_ref(y, z, weight, eps), out_weight)`` in fewer passes over the wide input.

    The per-token RMS scale commutes with the linear map, so it is applied to the (narrower) output;
    ``weight`` is folded into ``out_weight`` when that is the smaller tensor. Statistics in float32.
    """
    gated = F.silu(z)
    gated = gated.mul_(y) if not torch.is_grad_enabled() else gated * y
    return rms_norm_linear(gated, weight, out_weight, eps)


def rms_norm_linear(
    gated: torch.Tensor,
    weight: Optional[torch.Tensor],
    out_weight: torch.Tensor,
    eps: float = 1e-5,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``F.linear(rmsnorm(gated) * weight, out_weight)``, the tail of :func:`gated_rms_norm_linear` for callers
    that formed the gated product themselves (e.g. with SiLU applied to a wider contiguous buffer).

    ``weight=None``: already folded into ``out_weight`` (callers that reuse one folded matrix many times).
    ``out`` (autograd off): written with the result, which is returned.
    """
    width = gated.shape[-1]
    stats_dtype = torch.promote_types(gated.dtype, torch.float32)  # float32, or float64 for a float64 model
    ms = torch.linalg.vector_norm(gated, dim=-1, keepdim=True, dtype=stats_dtype).square() / width
    scale = torch.rsqrt(ms + eps)
    if weight is None:
        lin = F.linear(gated, out_weight)
    elif statically_known_true(gated.numel() < out_weight.numel()):
        lin = F.linear(gated * weight.to(gated.dtype), out_weight)
    else:  # also where the size is symbolic (torch.export with a dynamic batch): no guard on the batch
        lin = F.linear(gated, out_weight * weight.to(out_weight.dtype))
    if out is not None:
        return torch.mul(lin, scale.to(lin.dtype), out=out)
    return lin.mul_(scale.to(lin.dtype)) if not torch.is_grad_enabled() else lin * scale.to(lin.dtype)
