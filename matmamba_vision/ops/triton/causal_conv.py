"""Causal depthwise conv1d + bias (+ SiLU) over channels-last ``(batch, seqlen, channels)`` tensors, in Triton.

``out[:, t, c] = act(bias[c] + sum_j weight[c, j] * x[:, t - (k-1) + j, c])`` (zeros before the start). The
active channels are whatever leading slice of the weights the caller passes (a view, not a copy); ``x`` may be
any strided view whose channel stride is its own (e.g. a slice of a projection's output).
"""

from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._launch import check_device, launch

__all__ = ["causal_conv1d"]

_BLOCK_L = 32
_BLOCK_C = 64


@triton.jit
def _conv_fwd_kernel(
    X,
    W,
    Bias,
    Y,
    L,
    CH,
    sxb,
    sxl,
    sxc,
    swc,
    swk,
    syb,
    syl,
    syc,
    K: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid, pid_c = tl.program_id(0).to(tl.int64), tl.program_id(1)  # (batch x seqlen tiles, channel tiles)
    pid_b, pid_l = pid // tl.cdiv(L, BLOCK_L), pid % tl.cdiv(L, BLOCK_L)  # int64 offsets
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < CH
    X += pid_b * sxb
    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    acc += tl.load(Bias + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for j in tl.static_range(K):
        s = t - (K - 1) + j
        m = ((s >= 0) & (s < L))[:, None] & cmask[None, :]
        xv = tl.load(X + s[:, None] * sxl + c[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
        wv = tl.load(W + c * swc + j * swk, mask=cmask, other=0.0).to(tl.float32)
        acc += xv * wv[None, :]
    if SILU:
        acc = acc / (1.0 + tl.exp(-acc))
    m = (t < L)[:, None] & cmask[None, :]
    tl.store(Y + pid_b * syb + t[:, None] * syl + c[None, :] * syc, acc.to(Y.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_kernel(
    X,
    W,
    Bias,
    GY,
    GX,
    GW,
    GB,
    L,
    CH,
    sxb,
    sxl,
    sxc,
    swc,
    swk,
    sgb,
    sgl,
    sgc,
    sxgb,
    sxgl,
    sxgc,
    K: tl.constexpr,
    SILU: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """grad x for the rows of this tile; this tile's partial sums of grad weight (K, CH) and grad bias."""
    pid, pid_c = tl.program_id(0).to(tl.int64), tl.program_id(1)  # (batch x seqlen tiles, channel tiles)
    pid_b, pid_l = pid // tl.cdiv(L, BLOCK_L), pid % tl.cdiv(L, BLOCK_L)  # int64 offsets
    t = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < CH
    X += pid_b * sxb
    GY += pid_b * sgb
    bias = tl.load(Bias + c, mask=cmask, other=0.0).to(tl.float32)
    gx = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    # x[s] meets weight[:, j] in out[s + (K-1) - j]: the gradient of the pre-activation at rows t + d,
    # d = 0 .. K-1, is recomputed here (the forward's output is not kept).
    for d in tl.static_range(K):
        r = t + d
        rmask = (r < L)[:, None] & cmask[None, :]
        g = tl.load(GY + r[:, None] * sgl + c[None, :] * sgc, mask=rmask, other=0.0).to(tl.float32)
        if SILU:
            pre = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32) + bias[None, :]
            for j in tl.static_range(K):
                s = r - (K - 1) + j
                m = ((s >= 0) & (s < L))[:, None] & cmask[None, :]
                xv = tl.load(X + s[:, None] * sxl + c[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
                wv = tl.load(W + c * swc + j * swk, mask=cmask, other=0.0).to(tl.float32)
                pre += xv * wv[None, :]
            sig = 1.0 / (1.0 + tl.exp(-pre))
            g = g * sig * (1.0 + pre * (1.0 - sig))
        wd = tl.load(W + c * swc + (K - 1 - d) * swk, mask=cmask, other=0.0).to(tl.float32)
        gx += g * wd[None, :]
        if d == 0:  # this tile's rows: partial grad weight and grad bias
            tl.store(GB + pid * CH + c, tl.sum(g, axis=0), mask=cmask)
            for j in tl.static_range(K):
                s = t - (K - 1) + j
                m = ((s >= 0) & (s < L))[:, None] & cmask[None, :]
                xv = tl.load(X + s[:, None] * sxl + c[None, :] * sxc, mask=m, other=0.0).to(tl.float32)
                tl.store(GW + (pid * K + j) * CH + c, tl.sum(g * xv, axis=0), mask=cmask)
    m = (t < L)[:, None] & cmask[None, :]
    tl.store(GX + pid_b * sxgb + t[:, None] * sxgl + c[None, :] * sxgc, gx.to(GX.dtype.element_ty), mask=m)


def _grid(b: int, seqlen: int, ch: int):
    """(batch x seqlen tiles, channel tiles): the first axis of a CUDA grid is the one without a 65,535 cap."""
    return (b * triton.cdiv(seqlen, _BLOCK_L), triton.cdiv(ch, _BLOCK_C))


@torch.library.custom_op("matmamba_vision::triton_causal_conv1d", mutates_args=())
def _conv_fwd(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool) -> torch.Tensor:
    b, seqlen, ch = x.shape
    y = torch.empty((b, seqlen, ch), dtype=x.dtype, device=x.device)
    if y.numel():
        launch(
            _conv_fwd_kernel,
            _grid(b, seqlen, ch),
            x,
            weight,
            bias,
            y,
            seqlen,
            ch,
            *x.stride(),
            *weight.stride(),
            *y.stride(),
            K=weight.shape[1],
            SILU=silu,
            BLOCK_L=_BLOCK_L,
            BLOCK_C=_BLOCK_C,
        )
    return y


@_conv_fwd.register_fake
def _(x, weight, bias, silu):
    return x.new_empty(x.shape)


@torch.library.custom_op("matmamba_vision::triton_causal_conv1d_bwd", mutates_args=())
def _conv_bwd(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, grad: torch.Tensor, silu: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    b, seqlen, ch = x.shape
    k = weight.shape[1]
    grid = _grid(b, seqlen, ch)
    progs = grid[0]
    gx = torch.empty((b, seqlen, ch), dtype=x.dtype, device=x.device)
    gw = torch.zeros((progs, k, ch), dtype=torch.float32, device=x.device)
    gb = torch.zeros((progs, ch), dtype=torch.float32, device=x.device)
    if gx.numel():
        launch(
            _conv_bwd_kernel,
            grid,
            x,
            weight,
            bias,
            grad,
            gx,
            gw,
            gb,
            seqlen,
            ch,
            *x.stride(),
            *weight.stride(),
            *grad.stride(),
            *gx.stride(),
            K=k,
            SILU=silu,
            BLOCK_L=_BLOCK_L,
            BLOCK_C=_BLOCK_C,
        )
    # the partials sum to (k, channels): grad weight made contiguous (channels, k), as the fake declares
    return gx, gw.sum(0).t().contiguous().to(weight.dtype), gb.sum(0).to(bias.dtype)


@_conv_bwd.register_fake
def _(x, weight, bias, grad, silu):
    return x.new_empty(x.shape), weight.new_empty(weight.shape), bias.new_empty(bias.shape)


def _setup(ctx, inputs, output):
    x, weight, bias, silu = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.silu = silu


def _backward(ctx, grad):
    x, weight, bias = ctx.saved_tensors
    gx, gw, gb = _conv_bwd(x, weight, bias, grad, ctx.silu)
    return gx, gw, gb, None


_conv_fwd.register_autograd(_backward, setup_context=_setup)


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool = True) -> torch.Tensor:
    """Causal depthwise conv1d of ``x`` (batch, seqlen, channels) with ``weight`` (channels, k) and ``bias``
    (channels,), then SiLU when ``silu``; a contiguous result in ``x.dtype``. Differentiable in all three."""
    if x.dim() != 3 or weight.dim() != 2 or bias.dim() != 1:
        raise ValueError(
            f"causal_conv1d: x must be (batch, seqlen, channels), weight (channels, k) and bias "
            f"(channels,), got {tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}"
        )
    if not (x.shape[2] == weight.shape[0] == bias.shape[0]) or weight.shape[1] < 1:
        raise ValueError(
            f"causal_conv1d: channels of x {x.shape[2]}, weight {weight.shape[0]} and bias "
            f"{bias.shape[0]} must agree, and k >= 1"
        )
    check_device("causal_conv1d", x, weight, bias)
    return _conv_fwd(x, weight, bias, bool(silu))
