"""Gated RMSNorm of Mamba2 (``norm_before_gate=False``) in Triton: ``rmsnorm(y * silu(z)) * weight`` over the
last dim, statistics in float32."""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._launch import check_device, launch, next_pow2

__all__ = ["gated_rms_norm"]


@triton.jit
def _norm_fwd_kernel(
    Y,
    Z,
    W,
    O,
    RSTD,
    M,
    D,
    sym,
    szm,
    som,
    eps,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # int64: rows x width > 2^31
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    m = rmask[:, None] & (cols < D)[None, :]
    y = tl.load(Y + rows[:, None] * sym + cols[None, :], mask=m, other=0.0).to(tl.float32)
    z = tl.load(Z + rows[:, None] * szm + cols[None, :], mask=m, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=cols < D, other=0.0).to(tl.float32)
    g = y * z / (1.0 + tl.exp(-z))
    rstd = 1.0 / tl.sqrt(tl.sum(g * g, axis=1) / D + eps)
    tl.store(RSTD + rows, rstd, mask=rmask)
    tl.store(O + rows[:, None] * som + cols[None, :], (g * rstd[:, None] * w[None, :]).to(O.dtype.element_ty), mask=m)


@triton.jit
def _norm_bwd_kernel(
    Y,
    Z,
    W,
    RSTD,
    GO,
    GY,
    GZ,
    GW,
    M,
    D,
    TILES,
    sym,
    szm,
    sgm,
    sgym,
    sgzm,
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """``TILES`` consecutive row tiles per program; one float32 partial of grad weight per program."""
    pid = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_D)
    cmask = cols < D
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    gw = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for i in range(TILES):
        rows = (pid * TILES + i) * BLOCK_M + tl.arange(0, BLOCK_M)
        rmask = rows < M
        m = rmask[:, None] & cmask[None, :]
        y = tl.load(Y + rows[:, None] * sym + cols[None, :], mask=m, other=0.0).to(tl.float32)
        z = tl.load(Z + rows[:, None] * szm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        go = tl.load(GO + rows[:, None] * sgm + cols[None, :], mask=m, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + rows, mask=rmask, other=0.0)
        sig = 1.0 / (1.0 + tl.exp(-z))
        sz = z * sig
        xhat = y * sz * rstd[:, None]
        gw += tl.sum(go * xhat, axis=0)
        dxhat = go * w[None, :]
        # d/dg of g * rstd(g): rstd * (dxhat - xhat * mean(dxhat * xhat))
        dg = rstd[:, None] * (dxhat - xhat * (tl.sum(dxhat * xhat, axis=1) / D)[:, None])
        tl.store(GY + rows[:, None] * sgym + cols[None, :], (dg * sz).to(GY.dtype.element_ty), mask=m)
        gz = dg * y * sig * (1.0 + z * (1.0 - sig))
        tl.store(GZ + rows[:, None] * sgzm + cols[None, :], gz.to(GZ.dtype.element_ty), mask=m)
    tl.store(GW + pid * D + cols, gw, mask=cmask)


MAX_BWD_PROGRAMS = 1024  # the backward's programs (and float32 grad-weight partials); a module attribute for tests


def _tile(d: int) -> Tuple[int, int, int]:
    """(rows per tile, padded width, warps): whole rows, about 4K floats a tile (8-16 a thread up to 4,096 wide)."""
    block_d = next_pow2(d)
    block_m = max(1, min(16, 4096 // block_d))
    return block_m, block_d, min(max(block_m * block_d // 256, 1), 8)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (rows, width) with unit column stride (a view where the layout allows, else a copy)."""
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


@torch.library.custom_op("matmamba_vision::triton_gated_rms_norm", mutates_args=())
def _norm_fwd(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    y2, z2 = _rows(y), _rows(z)
    m, d = y2.shape
    out = torch.empty((m, d), dtype=y.dtype, device=y.device)
    rstd = torch.empty((m,), dtype=torch.float32, device=y.device)
    if out.numel():
        block_m, block_d, warps = _tile(d)
        launch(
            _norm_fwd_kernel,
            (triton.cdiv(m, block_m),),
            y2,
            z2,
            weight,
            out,
            rstd,
            m,
            d,
            y2.stride(0),
            z2.stride(0),
            out.stride(0),
            eps,
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return out.view(y.shape), rstd


@_norm_fwd.register_fake
def _(y, z, weight, eps):
    return y.new_empty(y.shape), y.new_empty(y.shape[:-1].numel(), dtype=torch.float32)


@torch.library.custom_op("matmamba_vision::triton_gated_rms_norm_bwd", mutates_args=())
def _norm_bwd(
    y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, grad: torch.Tensor
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y2, z2, g2 = _rows(y), _rows(z), _rows(grad)
    m, d = y2.shape
    block_m, block_d, warps = _tile(d)
    tiles = max(1, triton.cdiv(triton.cdiv(m, block_m), MAX_BWD_PROGRAMS))  # row tiles per program
    progs = max(1, triton.cdiv(triton.cdiv(m, block_m), tiles))
    gy = torch.empty((m, d), dtype=y.dtype, device=y.device)
    gz = torch.empty((m, d), dtype=z.dtype, device=z.device)
    gw = torch.zeros((progs, d), dtype=torch.float32, device=y.device)
    if gy.numel():
        launch(
            _norm_bwd_kernel,
            (progs,),
            y2,
            z2,
            weight,
            rstd,
            g2,
            gy,
            gz,
            gw,
            m,
            d,
            tiles,
            y2.stride(0),
            z2.stride(0),
            g2.stride(0),
            gy.stride(0),
            gz.stride(0),
            BLOCK_M=block_m,
            BLOCK_D=block_d,
            num_warps=warps,
        )
    return gy.view(y.shape), gz.view(z.shape), gw.sum(0).to(weight.dtype)


@_norm_bwd.register_fake
def _(y, z, weight, rstd, grad):
    return y.new_empty(y.shape), z.new_empty(z.shape), weight.new_empty(weight.shape)


def _setup(ctx, inputs, output):
    y, z, weight, _ = inputs
    ctx.save_for_backward(y, z, weight, output[1])


def _backward(ctx, grad, _grad_rstd):
    y, z, weight, rstd = ctx.saved_tensors
    gy, gz, gw = _norm_bwd(y, z, weight, rstd, grad)
    return gy, gz, gw, None


_norm_fwd.register_autograd(_backward, setup_context=_setup)


def gated_rms_norm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``rmsnorm(y * silu(z)) * weight`` over the last dim (float32 statistics), in ``y.dtype``; differentiable
    in ``y``, ``z`` and ``weight`` (the active width: a leading slice of the full weight)."""
    if y.shape != z.shape or weight.shape != y.shape[-1:]:
        raise ValueError(
            f"gated_rms_norm: y and z must have one shape and weight its last dim, got "
            f"{tuple(y.shape)}, {tuple(z.shape)}, {tuple(weight.shape)}"
        )
    check_device("gated_rms_norm", y, z, weight)
    return _norm_fwd(y, z, weight, float(eps))[0]
