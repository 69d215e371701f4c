"""The mixer's causal depthwise conv1d (+ SiLU): a plain reference, the channels-last conv with its own
backward, and oneDNN's conv with SiLU fused.

All take ``x`` (batch, seqlen, channels), ``weight`` (channels, k) and ``bias`` (channels,); output ``t``
sees inputs ``t-k+1 .. t`` (zeros before the start), as ``nn.Conv1d`` with ``padding=k-1`` cut to the first
``seqlen`` outputs. Which one runs is :mod:`.dispatch`'s choice.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

__all__ = [
    "causal_conv1d_ref",
    "causal_depthwise_conv1d",
    "causal_conv1d_silu_onednn",
    "onednn_conv_silu_available",
]


def causal_conv1d_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, silu: bool = True) -> torch.Tensor:
    """The causal conv by ``F.conv1d``, then SiLU when ``silu``: the definition every route (this module's, the
    Triton kernel :mod:`.triton.causal_conv`) is tested against."""
    seqlen, (ch, k) = x.shape[1], weight.shape
    y = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=k - 1, groups=ch)
    y = y[..., :seqlen].transpose(1, 2)
    return F.silu(y) if silu else y


def causal_depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The causal depthwise conv (no SiLU), reading the channels-last input without a copy as an NHWC image
    of width 1, so the CPU runs oneDNN's vectorised depthwise kernel; the result is a strided
    (batch, seqlen, channels) view. With autograd on the CPU the backward is :class:`_CausalConvFn`'s shifted
    multiply-adds instead of oneDNN's depthwise backward (figures: BENCHMARKS.md).
    """
    if (
        torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and (x.requires_grad or weight.requires_grad or bias.requires_grad)
    ):
        return _CausalConvFn.apply(x, weight, bias)
    return _causal_conv_forward(x, weight, bias)


class _CausalConvFn(torch.autograd.Function):
    """The causal depthwise conv with a backward of shifted multiply-adds along the sequence."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _causal_conv_forward(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        seqlen, k = x.shape[1], weight.shape[1]
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        # out[t] = bias + sum_j w[:, j] x[t - (k-1) + j], so x[s] meets w[:, j] in out[s + (k-1) - j].
        if ctx.needs_input_grad[0]:
            grad_x = grad * weight[:, k - 1]
            for j in range(k - 1):
                shift = k - 1 - j
                if shift < seqlen:
                    grad_x[:, : seqlen - shift].addcmul_(grad[:, shift:], weight[:, j])
        if ctx.needs_input_grad[1]:
            grad_w = torch.stack(
                [
                    (x[:, : seqlen - (k - 1 - j)] * grad[:, k - 1 - j :]).sum((0, 1))
                    if k - 1 - j < seqlen
                    else weight.new_zeros(weight.shape[0])
                    for j in range(k)
                ],
                dim=1,
            )
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 1))
        return grad_x, grad_w, grad_b


def _causal_conv_forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    b, seqlen, ch = x.shape
    k = weight.shape[1]
    img = x.view(b, seqlen, 1, ch).permute(0, 3, 1, 2)  # (b, ch, seqlen, 1), channels-last strides
    out = F.conv2d(img, weight.view(ch, 1, k, 1), bias, padding=(k - 1, 0), groups=ch)
    return out[:, :, :seqlen].squeeze(3).permute(0, 2, 1)  # squeeze, not [..., 0]: exported, a Gather is slow


@functools.lru_cache(maxsize=None)
def onednn_conv_silu_available() -> bool:
    """Whether this build runs oneDNN's convolution with a SiLU post-op (:func:`causal_conv1d_silu_onednn`)."""
    try:
        op = torch.ops.mkldnn._convolution_pointwise
    except (AttributeError, RuntimeError):
        return False
    try:  # a tiny call: some builds register the op but lack the kernel
        op(
            torch.zeros(1, 2, 3, 1),
            torch.zeros(2, 1, 2, 1),
            torch.zeros(2),
            [1, 0],
            [1, 1],
            [1, 1],
            2,
            "swish",
            [],
            None,
        )
    except Exception:
        return False
    return torch.backends.mkldnn.is_available()


def causal_conv1d_silu_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``silu(causal_depthwise_conv1d(x, weight, bias))`` with the SiLU run as a post-op inside oneDNN's
    convolution (one pass over the output instead of two); CPU float32 inference only (no autograd)."""
    b, seqlen, ch = x.shape
    k = weight.shape[1]
    img = x.view(b, seqlen, 1, ch).permute(0, 3, 1, 2)
    out = torch.ops.mkldnn._convolution_pointwise(
        img, weight.reshape(ch, 1, k, 1), bias, [k - 1, 0], [1, 1], [1, 1], ch, "swish", [], None
    )
    return out[:, :, :seqlen, 0].permute(0, 2, 1)
