"""The SSD scan of Mamba2 (state-space duality): its definition and its exact chunked form, in plain torch.

The recurrence, per head ``h`` (heads of one group share ``B`` and ``C``)::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * outer(x_t, B_t)
    y_t     = state_t @ C_t

:func:`ssd_recurrence_ref` runs it token by token in float64 (the oracle tests compare every route with).
:func:`ssd_scan_ref` evaluates it chunk by chunk: inside a chunk as a masked (causal, decayed) attention-like
product with an explicit (q x q) decay matrix per head, across chunks by passing one ``(headdim, d_state)``
state per head. Its work depends on the shapes only (no data-dependent branch), so it is the route the FLOP
counter, ``torch.compile`` and the ``"reference"`` backend take; the result does not depend on the chunk
size except through rounding.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["ssd_recurrence_ref", "ssd_scan_ref", "ScanCore"]

_DROP = 60.0  # decay factors below e^-60 are dropped (set to 0): see exp_dropped

# A scan on float32 tensors: (x, dt, A, B, C, h0, want_final) -> (y float32, final state or None).
ScanCore = Callable[..., Tuple[torch.Tensor, Optional[torch.Tensor]]]


def ssd_recurrence_ref(x, dt, A, B, C, initial_state=None, return_final_state=False):
    """The recurrence above, one token at a time in float64 (slow; for tests).

    Arguments as in :func:`ssd_scan_ref`; returns float64 ``y``, or ``(y, final state)`` with
    ``return_final_state``.
    """
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    B, C = B.repeat_interleave(h // g, dim=2), C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, p, n) if initial_state is None else initial_state.double().clone()
    ys = []
    for t in range(seqlen):
        state = torch.exp(dt[:, t] * A)[..., None, None] * state
        state = state + dt[:, t][..., None, None] * x[:, t, :, :, None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, C[:, t]))
    y = torch.stack(ys, dim=1)
    return (y, state) if return_final_state else y


@torch.library.custom_op("matmamba_vision::cumsum_last", mutates_args=())
def _cumsum_last(t: torch.Tensor) -> torch.Tensor:
    """``torch.cumsum(t, -1)`` as an op the compiler calls rather than generates (inductor's split-scan
    codegen fails on some CUDA shapes in torch 2.11, seen on an H200). The result is contiguous, whatever
    ``t``'s strides, as the fake declares."""
    return torch.cumsum(t, dim=-1).contiguous()


@_cumsum_last.register_fake
def _(t: torch.Tensor) -> torch.Tensor:
    return t.new_empty(t.shape)


_cumsum_last.register_autograd(
    lambda ctx, grad: _cumsum_last(grad.flip(-1)).flip(-1),  # d/dt of a prefix sum: the suffix sums
)


def exp_dropped(t: torch.Tensor) -> torch.Tensor:
    """``exp(t)`` in place, exactly 0 where ``t < -_DROP``. Every caller's dropped terms weigh at most e^-20 of
    the terms kept beside them, far below float32's resolution; kept, their products are float32 subnormals,
    which x86 GEMMs process in microcode, far slower than normal operands (figures: BENCHMARKS.md)."""
    return t.masked_fill_(t < -_DROP, float("-inf")).exp_()


_EXP_DROP = math.exp(-_DROP) * (1 + 1e-5)  # above any rounding of exp(-_DROP) in float32


def exp_dropped_traced(t: torch.Tensor) -> torch.Tensor:
    """:func:`exp_dropped` of ``min(t, 0)`` for an exported graph: ``max(exp(clamp(t, -_DROP, 0)) - e^-_DROP, 0)``,
    so the dropped terms are exactly 0 and the kept ones move by ~1e-26 at most. Elementwise clamp, subtract
    and max only: the masked selects (``Where``) of the eager form are among ONNX Runtime's slowest CPU ops."""
    return (torch.exp(t.clamp(-_DROP, 0.0)) - _EXP_DROP).clamp_min(0.0)


def pad_seq(t: torch.Tensor, pad: int) -> torch.Tensor:
    """``t`` (batch, seqlen, ...) with ``pad`` zero tokens appended."""
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t


def ssd_chunked_exact(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    h0: Optional[torch.Tensor] = None,
    want_final: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The chunked scan on float32 tensors: per head, an explicit (q x q) decay matrix per chunk.
    ``h0`` (batch, heads, headdim, d_state) is the state before the first token; returns (y, final state or
    None)."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    q = max(1, min(chunk_size, seqlen))
    nc = -(-seqlen // q)
    pad = nc * q - seqlen
    x, dt, B, C = (pad_seq(t, pad) for t in (x, dt, B, C))  # dt = 0 on padding: no decay, no input
    hg = h // g

    xd = (x * dt.unsqueeze(-1)).view(b, nc, q, h, p)  # dt_j * x_j
    B = B.view(b, nc, q, g, n).transpose(2, 3)  # (b, c, g, q, n)
    C = C.view(b, nc, q, g, n).transpose(2, 3)
    dA = (dt * A).view(b, nc, q, h).transpose(2, 3)
    a_cum = _cumsum_last(dA.contiguous()) if torch.compiler.is_compiling() else torch.cumsum(dA, dim=-1)  # (b, c, h, q)

    # Intra-chunk: y_i = sum_{j<=i} (C_i . B_j) exp(a_i - a_j) dt_j x_j. C.B is shared by a group's heads.
    cb = torch.matmul(C, B.transpose(-1, -2)).tril_()  # (b, c, g, q, q)
    seg = a_cum.unsqueeze(-1) - a_cum.unsqueeze(-2)  # (b, c, h, q, q); <= 0 below the diagonal, 0 on it
    # The diagonal and above set to 0 (not clamped: clamp's gradient vanishes where a below-diagonal entry is
    # exactly 0, e.g. dt = 0 or A = 0, and the diagonal's is pure rounding noise).
    keep = torch.ones(q, q, dtype=torch.bool, device=seg.device).tril_(-1)
    if torch.compiler.is_exporting():  # the same values (seg > 0 only above the diagonal), without a select
        decay = exp_dropped_traced(seg)
    else:
        decay = exp_dropped(seg.masked_fill(~keep, 0.0) if torch.is_grad_enabled() else seg.masked_fill_(~keep, 0.0))
    scores = (decay.view(b, nc, g, hg, q, q) * cb.unsqueeze(3)).view(b, nc, h, q, q)
    xd_h = xd.permute(0, 1, 3, 2, 4)  # (b, c, h, q, p)
    y = torch.matmul(scores, xd_h)  # (b, c, h, q, p)

    final = None
    if nc > 1 or h0 is not None or want_final:
        # Each chunk's own end state, from its inputs decayed to the chunk's end.
        to_end = a_cum[..., -1:] - a_cum  # (b, c, h, q), <= 0
        to_end = exp_dropped_traced(to_end) if torch.compiler.is_exporting() else exp_dropped(to_end)
        xs = (xd_h * to_end.unsqueeze(-1)).view(b, nc, g, hg, q, p)
        xs = xs.transpose(-1, -2).reshape(b, nc, g, hg * p, q)
        chunk_states = torch.matmul(xs, B).view(b, nc, g, hg, p, n)
        # Pass states across chunks: s_{c+1} = exp(a_c,end) s_c + own_c; chunk c reads s_c (s_0 = h0).
        chunk_decay = torch.exp(a_cum[..., -1]).view(b, nc, g, hg, 1, 1)
        state = None if h0 is None else h0.float().view(b, g, hg, p, n)
        entering = []
        for c in range(nc if want_final else nc - 1):
            entering.append(state)
            own = chunk_states[:, c]
            state = own if state is None else state * chunk_decay[:, c] + own
        if want_final:
            final = state.view(b, h, p, n)
        else:
            entering.append(state)
        first = 0 if h0 is not None else 1  # chunk 0 reads a zero state when there is no h0
        if first < nc:
            prev = torch.stack(entering[first:], dim=1).view(b, nc - first, g, hg * p, n)
            y_off = torch.matmul(C[:, first:], prev.transpose(-1, -2))  # (b, nc-first, g, q, hg*p)
            y_off = y_off.view(b, nc - first, g, q, hg, p).permute(0, 1, 2, 4, 3, 5).reshape(b, nc - first, h, q, p)
            y_off = y_off * torch.exp(a_cum[:, first:]).unsqueeze(-1)
            y = torch.cat([y[:, :first], y[:, first:] + y_off], dim=1)

    y = y.permute(0, 1, 3, 2, 4).reshape(b, nc * q, h, p)
    if pad:
        y = y[:, :seqlen]
    return y, final


def scan_float32(
    core: ScanCore,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    initial_state: Optional[torch.Tensor],
    return_final_state: bool,
):
    """What every torch scan shares: checks the shapes, passes an empty sequence's state through, runs
    ``core`` on float32 copies (also under autocast) and returns ``y`` in ``x.dtype``."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    if initial_state is not None and tuple(initial_state.shape) != (b, h, p, n):
        raise ValueError(
            f"initial_state must have shape (batch, heads, headdim, d_state) = {(b, h, p, n)}, "
            f"got {tuple(initial_state.shape)}"
        )
    out_dtype = x.dtype
    if seqlen == 0:  # nothing to scan: no outputs, and the state passes through unchanged
        final = initial_state.float() if initial_state is not None else x.new_zeros(b, h, p, n, dtype=torch.float32)
        return (x.new_empty(x.shape), final) if return_final_state else x.new_empty(x.shape)
    # float32 throughout, also under autocast (the meta device, shapes only, has no autocast to turn off)
    with torch.autocast(x.device.type, enabled=False) if x.device.type != "meta" else nullcontext():
        x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
        y, final = core(x, dt, A, B, C, initial_state, return_final_state)
    y = y.to(out_dtype)
    return (y, final) if return_final_state else y


def ssd_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    D: Optional[torch.Tensor] = None,
):
    """The exact chunked scan (chunks of ``chunk_size`` tokens), computed in float32, returned in ``x.dtype``:
    the reference of every SSD route (the torch backends' and the Triton kernels', :mod:`.triton.ssd`).

    Args:
        x: (batch, seqlen, heads, headdim) inputs.
        dt: (batch, seqlen, heads) positive step sizes (softplus already applied).
        A: (heads,) negative decay rates.
        B, C: (batch, seqlen, groups, d_state); ``heads`` must be a multiple of ``groups``.
        chunk_size: tokens per chunk (any sequence length is accepted: the last chunk is padded).
        initial_state: (batch, heads, headdim, d_state) state before the first token (default zeros).
        return_final_state: also return the (float32) state after the last token.
        D: (heads,) skip weights: ``y += D x`` (in float32, before the cast), as the Triton kernel fuses it.

    Returns:
        y (batch, seqlen, heads, headdim), or (y, final_state) with ``return_final_state``.
    """
    if D is not None and tuple(D.shape) != (x.shape[2],):
        raise ValueError(f"D must have shape (heads,) = ({x.shape[2]},), got {tuple(D.shape)}")

    def core(x, dt, A, B, C, h0, want_final):
        y, final = ssd_chunked_exact(x, dt, A, B, C, chunk_size, h0, want_final)
        return (y if D is None else y + x * D.float().unsqueeze(-1)), final

    return scan_float32(core, x, dt, A, B, C, initial_state, return_final_state)
