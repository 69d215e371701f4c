"""The SSD scan by mamba_ssm's Triton kernel (optional: mamba_ssm is imported on first use only)."""

from __future__ import annotations

import functools
from typing import Callable, Optional

import torch

__all__ = ["mamba_ssm_available", "mamba_ssm_runs_on", "ssd_scan_mamba_ssm", "MAMBA_SSM_NEEDS"]

MAMBA_SSM_NEEDS = "CUDA tensors and an importable mamba_ssm with its CUDA build"


@functools.lru_cache(maxsize=None)
def _mamba_ssm_kernel() -> Optional[Callable]:
    """mamba_ssm's Triton SSD kernel, or None where the package or its CUDA build is missing."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return None
    return mamba_chunk_scan_combined


def mamba_ssm_available() -> bool:
    """True where mamba_ssm's Triton kernels import and a CUDA device exists."""
    return torch.cuda.is_available() and _mamba_ssm_kernel() is not None


def mamba_ssm_runs_on(x: torch.Tensor) -> bool:
    """Whether the kernel can scan ``x``: a CUDA tensor, and the kernel imports (checked in that order, so
    CPU calls never import mamba_ssm)."""
    return x.is_cuda and _mamba_ssm_kernel() is not None


def ssd_scan_mamba_ssm(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
):
    """``mamba_chunk_scan_combined`` with the arguments and result of :func:`.ssd_ref.ssd_scan_ref` (``y`` in
    ``x.dtype``, the final state in float32); needs :func:`mamba_ssm_runs_on` ``(x)``."""
    out = _mamba_ssm_kernel()(
        x.contiguous(),
        dt.contiguous(),
        A.float(),
        B.contiguous(),
        C.contiguous(),
        chunk_size,
        initial_states=initial_state,
        return_final_states=return_final_state,
    )
    if return_final_state:
        return out[0].to(x.dtype), out[1].float()
    return out.to(x.dtype)
