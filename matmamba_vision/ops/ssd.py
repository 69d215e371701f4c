"""The SSD scan of Mamba2 (state-space duality), in pure PyTorch, and the choice of backend.

The recurrence, per head ``h`` (heads of one group share ``B`` and ``C``)::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * outer(x_t, B_t)
    y_t     = state_t @ C_t

is evaluated chunk by chunk: inside a chunk as a masked (causal, decayed) attention-like product,
across chunks by passing one ``(headdim, d_state)`` state per head. The result does not depend on the
chunk size except through rounding, so each backend picks the size that suits it.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import torch
import torch.nn.functional as F

__all__ = ["SSD_BACKENDS", "ssd_scan", "ssd_scan_torch", "check_ssd_backend", "mamba_ssm_available"]

SSD_BACKENDS = ("auto", "torch", "mamba_ssm")


def ssd_scan_torch(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
) -> torch.Tensor:
    """Chunked SSD scan, computed in float32 and returned in ``x.dtype``.

    Args:
        x: (batch, seqlen, heads, headdim) inputs.
        dt: (batch, seqlen, heads) positive step sizes (softplus already applied).
        A: (heads,) negative decay rates.
        B, C: (batch, seqlen, groups, d_state); ``heads`` must be a multiple of ``groups``.
        chunk_size: tokens per chunk; any sequence length is accepted.
    """
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    out_dtype = x.dtype
    x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
    q = max(1, min(chunk_size, seqlen))
    nc = -(-seqlen // q)
    pad = nc * q - seqlen
    if pad:  # dt = 0 on padding: no decay and no input, so earlier outputs are untouched
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
    hg = h // g

    xd = (x * dt.unsqueeze(-1)).view(b, nc, q, h, p)  # dt_j * x_j
    B = B.view(b, nc, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    C = C.view(b, nc, q, g, n).transpose(2, 3)
    a_cum = torch.cumsum((dt * A).view(b, nc, q, h).transpose(2, 3), dim=-1)  # (b, c, h, q)

    # Intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_i - a_j) dt_j x_j. C.B is shared by a group's heads.
    cb = torch.matmul(C, B.transpose(-1, -2)).tril_()  # (b, c, g, q, q)
    seg = a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)  # (b, c, h, q, q); <= 0 on and below the diagonal
    if torch.is_grad_enabled():
        decay = seg.clamp(max=0.0).exp()
    else:
        decay = seg.clamp_(max=0.0).exp_()
    scores = (decay.view(b, nc, g, hg, q, q) * cb.unsqueeze(3)).view(b, nc, h, q, q)
    xd_h = xd.permute(0, 1, 3, 2, 4)  # (b, c, h, q, p)
    y = torch.matmul(scores, xd_h)  # (b, c, h, q, p)

    if nc > 1:
        # Each chunk's own end state, from its inputs decayed to the chunk's end.
        to_end = torch.exp(a_cum[..., -1:] - a_cum)  # (b, c, h, q)
        xs = (xd_h * to_end.unsqueeze(-1)).view(b, nc, g, hg, q, p)
        xs = xs.transpose(-1, -2).reshape(b, nc, g, hg * p, q)
        chunk_states = torch.matmul(xs, B)  # (b, c, g, hg*p, n)
        # Pass states across chunks: s_c = exp(a_c,end) s_{c-1} + own_c; chunk c reads s_{c-1}.
        chunk_decay = torch.exp(a_cum[..., -1]).view(b, nc, g, hg, 1, 1)
        chunk_states = chunk_states.view(b, nc, g, hg, p, n)
        carried = [chunk_states[:, 0]]
        for c in range(1, nc - 1):
            carried.append(carried[-1] * chunk_decay[:, c] + chunk_states[:, c])
        prev = torch.stack(carried, dim=1)  # states entering chunks 1..nc-1: (b, nc-1, g, hg, p, n)
        prev = prev.view(b, nc - 1, g, hg * p, n)
        y_off = torch.matmul(C[:, 1:], prev.transpose(-1, -2))  # (b, nc-1, g, q, hg*p)
        y_off = y_off.view(b, nc - 1, g, q, hg, p).permute(0, 1, 2, 4, 3, 5).reshape(b, nc - 1, h, q, p)
        y_off = y_off * torch.exp(a_cum[:, 1:]).unsqueeze(-1)
        y = torch.cat([y[:, :1], y[:, 1:] + y_off], dim=1)

    y = y.permute(0, 1, 3, 2, 4).reshape(b, nc * q, h, p)
    if pad:
        y = y[:, :seqlen]
    return y.to(out_dtype)


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


def check_ssd_backend(name: str) -> str:
    """Validate a backend name; return it."""
    if name not in SSD_BACKENDS:
        raise ValueError(f"ssd_backend must be one of {SSD_BACKENDS}, got {name!r}")
    return name


def ssd_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    backend: str = "auto",
) -> torch.Tensor:
    """SSD scan with the chosen backend (shapes as in :func:`ssd_scan_torch`).

    ``auto`` takes mamba_ssm's Triton kernel for CUDA tensors when it imports, else the torch path.
    """
    check_ssd_backend(backend)
    if backend == "mamba_ssm" or (backend == "auto" and x.is_cuda):
        kernel = _mamba_ssm_kernel()
        if kernel is not None and x.is_cuda:
            y = kernel(x.contiguous(), dt.contiguous(), A.float(), B.contiguous(), C.contiguous(), chunk_size)
            return y.to(x.dtype)
        if backend == "mamba_ssm":
            raise RuntimeError(
                "ssd_backend='mamba_ssm' needs CUDA tensors and an importable mamba_ssm with its CUDA build; "
                "use ssd_backend='torch' or 'auto'"
            )
    return ssd_scan_torch(x, dt, A, B, C, chunk_size)
