"""The SSD scan of Mamba2 (state-space duality), in pure PyTorch, and the choice of backend.

The recurrence, per head ``h`` (heads of one group share ``B`` and ``C``)::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * outer(x_t, B_t)
    y_t     = state_t @ C_t

is evaluated chunk by chunk: inside a chunk as a masked (causal, decayed) attention-like product,
across chunks by passing one ``(headdim, d_state)`` state per head. The result does not depend on the
chunk size except through rounding, so each backend picks the size that suits it.

The torch path avoids per-head (L x L) elementwise work: with ``a`` the cumulative decay and ``c`` a
reference point, ``exp(a_i - a_j) = exp(a_i - c) * exp(c - a_j)``, so the decayed product becomes one GEMM
with ``tril(C B^T)`` shared by all heads of a group, scaled per token before and after. That is exact up to
rounding while the exponents stay within +-``SAFE_HALF_RANGE`` (checked per chunk and head):

- short sequences (one chunk): :func:`_ssd_row_blocks` (re-centred per block of rows, no states);
- long ones: :func:`_ssd_factorised` (chunks of ~128 tokens, states carried between chunks);
- heads whose decay range is unsafe are redone with shorter chunks, finally by :func:`_ssd_exact`.

Every path but the row blocks also starts from a given state and returns the last one, so a long sequence
can be scanned in pieces (the mixer does so for CPU inference). Under ``torch.compile`` the exact path runs:
it has no data-dependent branches, so the model compiles to one graph.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["SSD_BACKENDS", "ssd_scan", "ssd_scan_torch", "choose_chunk_len", "check_ssd_backend", "mamba_ssm_available",
           "reference_paths", "using_reference_paths"]

SSD_BACKENDS = ("auto", "torch", "mamba_ssm", "triton")


# The factorised path runs where every |c - a| of a chunk is at most this many nats: exp(+-40) keeps both
# factors, and their products with the data, far inside float32's normal range (~1e-38 .. 3e38).
SAFE_HALF_RANGE = 40.0
_CLAMP = 60.0  # exponents of unsafe heads are clamped here (finite values, overwritten afterwards)
_DROP = 60.0  # decay factors below e^-60 are dropped (set to 0): see _exp_dropped
_MIN_FACTORISED_CHUNK = 16  # below this an unsafe head goes to the exact path


_REFERENCE_PATHS: ContextVar[bool] = ContextVar("matmamba_vision_reference_paths", default=False)


@contextmanager
def reference_paths() -> Iterator[None]:
    """Inside, the model takes paths whose work depends only on the shapes: the exact torch SSD scan (as under
    ``torch.compile``; no data-dependent row blocks or redone heads, no Triton kernel) and the unfused
    depthwise conv. :func:`matmamba_vision.count_flops` counts under it, so a configuration has one figure."""
    token = _REFERENCE_PATHS.set(True)
    try:
        yield
    finally:
        _REFERENCE_PATHS.reset(token)


def using_reference_paths() -> bool:
    """Whether :func:`reference_paths` is active."""
    return _REFERENCE_PATHS.get()


def choose_chunk_len(seqlen: int, d_state: int, chunk_size: int = 256) -> int:
    """Longest chunk the torch path considers (at most ``chunk_size``).

    One chunk while its (L x L) product costs less than carrying states across chunks
    (L <= 64 + 2 d_state, in multiply-adds per channel), else about 128 (GEMMs with a short inner
    dimension run far below peak on CPUs), balanced so that the padding is under one token per chunk.
    """
    if seqlen <= min(chunk_size, 64 + 2 * d_state):
        return max(1, seqlen)
    return _balanced(seqlen, min(chunk_size, 128))


def _balanced(seqlen: int, target: int) -> int:
    """The chunk length closest to ``target`` (not above) that splits ``seqlen`` into equal-ish chunks."""
    nc = -(-seqlen // max(1, target))
    return -(-seqlen // nc)


def _unsafe_heads(a: torch.Tensor, bounds: List[Tuple[int, int]]) -> torch.Tensor:
    """(heads,) bool: heads whose decay range exceeds ``2 * SAFE_HALF_RANGE`` inside one of the blocks
    ``bounds`` [(start, end), ...] in some sample; ``a`` (batch, L, heads) is the cumulative decay."""
    with torch.no_grad():
        starts = torch.tensor([s for s, _ in bounds], device=a.device)
        lasts = torch.tensor([e - 1 for _, e in bounds], device=a.device)
        rng = a.index_select(1, starts) - a.index_select(1, lasts)  # (b, blocks, h)
        return (rng > 2 * SAFE_HALF_RANGE).flatten(0, 1).any(0)


def _safe_chunk_len(dA: torch.Tensor, q: int) -> int:
    """Halve ``q`` (down to ``_MIN_FACTORISED_CHUNK``) until at most an eighth of the heads has a chunk whose
    decay range the factorised path rejects (those few are redone with shorter chunks by ``_ssd_auto``);
    ``dA`` (batch, seqlen, heads) is ``dt * A`` (<= 0)."""
    seqlen, heads = dA.shape[1], dA.shape[2]
    with torch.no_grad():
        a = torch.cumsum(dA, dim=1)
    while q > _MIN_FACTORISED_CHUNK:
        # Each chunk, the last one taken as the q tokens that end the sequence.
        ends = [min(e, seqlen) for e in range(q, seqlen + q, q)]
        if int(_unsafe_heads(a, [(e - q, e) for e in ends]).sum()) <= heads // 8:
            break
        q = _balanced(seqlen, max(_MIN_FACTORISED_CHUNK, q // 2))
    return q


@torch.library.custom_op("matmamba_vision::cumsum_last", mutates_args=())
def _cumsum_last(t: torch.Tensor) -> torch.Tensor:
    """``torch.cumsum(t, -1)`` as an op the compiler calls rather than generates (inductor's split-scan
    codegen fails on some CUDA shapes in torch 2.11, seen on an H200)."""
    return torch.cumsum(t, dim=-1)


@_cumsum_last.register_fake
def _(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


_cumsum_last.register_autograd(
    lambda ctx, grad: _cumsum_last(grad.flip(-1)).flip(-1),  # d/dt of a prefix sum: the suffix sums
)


def _exp_dropped(t: torch.Tensor) -> torch.Tensor:
    """``exp(t)`` in place, exactly 0 where ``t < -_DROP``. Every caller's dropped terms weigh at most e^-20 of
    the terms kept beside them, far below float32's resolution; kept, their products are float32 subnormals,
    which x86 GEMMs process several-fold slower (measured: one row block's GEMM 4.5 ms instead of 1 ms)."""
    return t.masked_fill_(t < -_DROP, float("-inf")).exp_()


def _pad_seq(t: torch.Tensor, pad: int) -> torch.Tensor:
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) if pad else t


def _heads(idx: torch.Tensor, x, dt, A, B, C, h0: Optional[torch.Tensor] = None):
    """The scan's inputs restricted to heads ``idx`` (each keeps its own group's B and C), and their h0."""
    h, g = x.shape[2], B.shape[2]
    if g > 1:
        B, C = B[:, :, idx // (h // g)], C[:, :, idx // (h // g)]
    return (x[:, :, idx], dt[:, :, idx], A[idx], B, C), (None if h0 is None else h0[:, idx])


def _put_heads(t: torch.Tensor, dim: int, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t`` with heads ``idx`` (along ``dim``) replaced by ``rows``; in place when autograd is off."""
    return t.index_copy_(dim, idx, rows) if not torch.is_grad_enabled() else t.index_copy(dim, idx, rows)


def _ssd_exact(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    h0: Optional[torch.Tensor] = None, want_final: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Reference chunked scan on float32 tensors: per head, an explicit (q x q) decay matrix per chunk.
    ``h0`` (batch, heads, headdim, d_state) is the state before the first token; returns (y, final state or
    None)."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    q = max(1, min(chunk_size, seqlen))
    nc = -(-seqlen // q)
    pad = nc * q - seqlen
    x, dt, B, C = (_pad_seq(t, pad) for t in (x, dt, B, C))  # dt = 0 on padding: no decay, no input
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
    decay = _exp_dropped(seg.masked_fill(~keep, 0.0) if torch.is_grad_enabled() else seg.masked_fill_(~keep, 0.0))
    scores = (decay.view(b, nc, g, hg, q, q) * cb.unsqueeze(3)).view(b, nc, h, q, q)
    xd_h = xd.permute(0, 1, 3, 2, 4)  # (b, c, h, q, p)
    y = torch.matmul(scores, xd_h)  # (b, c, h, q, p)

    final = None
    if nc > 1 or h0 is not None or want_final:
        # Each chunk's own end state, from its inputs decayed to the chunk's end.
        to_end = _exp_dropped(a_cum[..., -1:] - a_cum)  # (b, c, h, q)
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


def _ssd_factorised(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, q: int,
    h0: Optional[torch.Tensor] = None, want_final: bool = False,
) -> Tuple[Optional[torch.Tensor], torch.Tensor, Optional[torch.Tensor]]:
    """Chunked scan whose intra-chunk product is one GEMM shared by all heads of a group.

    With ``a`` the in-chunk cumulative decay and ``c`` its mid-range per (chunk, head),
    ``exp(a_i - a_j) = exp(a_i - c) * exp(c - a_j)``, so ``y = e * (tril(C B^T) @ U + C @ S'^T)`` with
    ``U_j = exp(c - a_j) dt_j x_j``, ``e_i = exp(a_i - c)`` and ``S'`` the entering state times ``exp(c)``.
    Exact up to rounding where the chunk's decay range is at most ``2 * SAFE_HALF_RANGE``.

    Returns (y float32 or None when no head is safe, unsafe-head mask (heads,), final state or None); rows
    of unsafe heads are finite but wrong and must be replaced by the caller.
    """
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    hg = h // g
    nc = -(-seqlen // q)
    pad = nc * q - seqlen
    dt, B, C = (_pad_seq(t, pad) for t in (dt, B, C))  # dt = 0 on padding: no decay, no input
    a = torch.cumsum((dt * A).view(b, nc, q, h), dim=2)  # (b, nc, q, h), decreasing along q
    a_first, a_last = a[:, :, 0], a[:, :, -1]
    with torch.no_grad():
        bad = ((a_first - a_last) > 2 * SAFE_HALF_RANGE).flatten(0, 1).any(0)
    if bool(bad.all()):
        return None, bad, None
    mid = torch.lerp(a_first, a_last, 0.5)  # (b, nc, h)
    la = (a - mid.unsqueeze(2)).clamp_(-_CLAMP, _CLAMP)  # a_i - c, within +-40 on safe heads
    e = la.exp()  # exp(a_i - c)
    # dt_j exp(c - a_j); not dt / e, whose gradient (-dt / e^2) overflows where e is clamped at e^-60
    f = dt.view(b, nc, q, h) * torch.neg(la).exp_()
    U = x * f.view(b, nc * q, h, 1)[:, :seqlen]
    U = _pad_seq(U, pad).view(b, nc, q, g, hg * p).transpose(2, 3)  # (b, nc, g, q, hg*p)
    Bc = B.view(b, nc, q, g, n).transpose(2, 3)  # (b, nc, g, q, n)
    Cc = C.view(b, nc, q, g, n).transpose(2, 3)
    Z = torch.matmul(torch.matmul(Cc, Bc.transpose(-1, -2)).tril_(), U)  # (b, nc, g, q, hg*p)
    final = None
    if nc > 1 or h0 is not None or want_final:
        # S'_c = exp(mid_c) * (state entering chunk c): S'_0 = exp(mid_0) h0, S'_{c+1} = k_c S'_c + G_c with
        # k_c = exp(mid_{c+1} - mid_c + a_last_c) <= 1 and G_c = (k_c U_c)^T B_c (k folded into the per-token
        # factor: one pass over x instead of one over the larger states). The final state is S' after the
        # last chunk with mid = 0 there.
        lk = mid[:, 1:] - mid[:, :-1] + a_last[:, :-1]  # (b, nc-1, h) log k
        if want_final:
            lk = torch.cat([lk, (a_last[:, -1] - mid[:, -1]).unsqueeze(1)], dim=1)
        steps = lk.shape[1]  # chunks whose end state is needed
        # fk = f k = dt exp(lk - la), dropped below e^-_DROP (those terms reach y at most e^(40 - _DROP) of
        # full weight).
        fk = dt.view(b, nc, q, h)[:, :steps] * _exp_dropped(lk.unsqueeze(2) - la[:, :steps])
        fk = fk.view(b, steps * q, h, 1)
        xs = _pad_seq(x, pad) if steps == nc else x
        Uk = (xs[:, : steps * q] * fk).view(b, steps, q, g, hg * p).transpose(2, 3)
        G = torch.matmul(Uk.transpose(-1, -2), Bc[:, :steps])  # (b, steps, g, hg*p, n)
        # The recurrence, one fused multiply-add per chunk on (b, heads, p*n) states. (A batched GEMM with the
        # (chunks x chunks) matrix of decay products does it in one call, but its inner dimension is the
        # number of chunks: measured 23 GFLOP/s plus two transposes, 4x the loop's time on a quiet machine.)
        # k <= 1, dropped like fk: a fast-decaying head whose fk were all dropped would otherwise carry states
        # k * S' that are subnormals into the C @ S GEMM below.
        k = _exp_dropped(lk.clone()).unsqueeze(-1)  # (b, steps, h, 1)
        G = G.view(b, steps, h, p * n)
        if h0 is None:
            s0 = G.new_zeros(b, h, p * n)
        else:
            # exp(mid) >= e^-40 on safe heads; clamped for unsafe ones (redone by the caller), whose products
            # would otherwise be subnormals in the C @ S GEMM below.
            s0 = h0.float().reshape(b, h, p * n) * mid[:, 0].clamp(min=-_CLAMP).exp().unsqueeze(-1)
        if torch.is_grad_enabled():
            states = [s0]
            for c in range(steps):
                states.append(torch.addcmul(G[:, c], states[-1], k[:, c]))
            S = torch.stack(states, dim=1)  # (b, steps + 1, h, p*n)
        else:
            S = G.new_empty(b, steps + 1, h, p * n)
            S[:, 0] = s0
            for c in range(steps):
                torch.addcmul(G[:, c], S[:, c], k[:, c], out=S[:, c + 1])
        if want_final:
            final = S[:, nc].reshape(b, h, p, n)
            S = S[:, :nc]
        S = S.reshape(b * nc * g, hg * p, n).transpose(1, 2)
        Z3, C3 = Z.view(b * nc * g, q, hg * p), Cc.reshape(b * nc * g, q, n)
        Z = (Z3.baddbmm_(C3, S) if not torch.is_grad_enabled() else torch.baddbmm(Z3, C3, S))
        Z = Z.view(b, nc, g, q, hg * p)
    y = Z.transpose(2, 3).reshape(b, nc * q, h, p)
    y = y.mul_(e.view(b, nc * q, h, 1)) if not torch.is_grad_enabled() else y * e.view(b, nc * q, h, 1)
    return (y[:, :seqlen] if pad else y), bad, final


def _row_block_products(
    x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, Ms: List[torch.Tensor], bounds: List[Tuple[int, int]]
) -> torch.Tensor:
    """The rows of the single-chunk scan, block by block: block ``(s, e)`` takes its rows of ``tril(C B^T)``
    from ``M`` (batch, groups, e - s, e) and is re-centred on its own mid-range (see :func:`_ssd_row_blocks`)."""
    b, seqlen, h, p = x.shape
    g = Ms[0].shape[1]
    hg = h // g
    inference = not torch.is_grad_enabled()
    blocks, y = [], (x.new_empty(b, seqlen, h, p) if inference else None)  # inference: blocks written in place
    for (s, e_), M in zip(bounds, Ms):
        mid = torch.lerp(a[:, s], a[:, e_ - 1], 0.5).unsqueeze(1)  # (b, 1, h)
        lu = (mid - a[:, :e_]).clamp_(max=_CLAMP)
        u = dt[:, :e_] * _exp_dropped(lu)
        U = (x[:, :e_] * u.unsqueeze(-1)).view(b, e_, g, hg * p).transpose(1, 2)  # (b, g, e_, hg*p)
        Z = torch.matmul(M, U).transpose(1, 2).reshape(b, e_ - s, h, p)
        scale = (a[:, s:e_] - mid).clamp_(-_CLAMP, _CLAMP).exp_().unsqueeze(-1)
        if inference:
            torch.mul(Z, scale, out=y[:, s:e_])
        else:
            blocks.append(Z * scale)
    return y if inference else (blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1))


def _ssd_row_blocks(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, max_blocks: int = 8
) -> Optional[torch.Tensor]:
    """Single-chunk scan (short sequences) as GEMMs, with the factorisation re-centred per block of rows.

    For rows ``i`` of block ``I`` with mid-range ``c_I``: ``y_i = e_i * sum_{j<=i} (C_i.B_j) u_j`` with
    ``e_i = exp(a_i - c_I)`` and ``u_j = exp(c_I - a_j) dt_j x_j``. Only the block's own decay range must be
    <= ``2 * SAFE_HALF_RANGE``; for earlier columns ``c_I - a_j <= 0``, and where it is below ``-_DROP`` the
    column is dropped (u_j = 0: true weights below e^(40 - _DROP) = e^-20 of the row's own; see
    :func:`_exp_dropped`). No states are carried.
    Uses the fewest blocks (1, 2, 4, ...) for which at most an eighth of the heads is unsafe. Those heads are
    redone with each block's rows split in halves (then quarters, eighths), which reuse the block's rows of
    ``tril(C B^T)``; with several groups, or where that is not enough, they go to :func:`_ssd_auto` with
    chunks. Returns None where no block count qualifies.
    """
    b, seqlen, h, p = x.shape
    g = B.shape[2]
    a = torch.cumsum(dt * A, dim=1)  # (b, L, h), decreasing
    nb = 1
    while True:
        r = -(-seqlen // nb)
        bounds = [(s, min(s + r, seqlen)) for s in range(0, seqlen, r)]
        bad = _unsafe_heads(a, bounds)
        if int(bad.sum()) <= h // 8:
            break
        if nb >= max_blocks or r <= _MIN_FACTORISED_CHUNK:
            return None
        nb *= 2
    Bg, Cg = B.transpose(1, 2), C.transpose(1, 2)  # (b, g, L, n)
    # Each block's rows of tril(C B^T), computed on their own: a contiguous (r x e) operand keeps the next GEMM
    # fast (a row slice of the full (L x L) product ran at a fifth of the speed).
    Ms = [torch.matmul(Cg[:, :, s:e_], Bg[:, :, :e_].transpose(-1, -2)).tril_(s) for s, e_ in bounds]
    y = _row_block_products(x, dt, a, Ms, bounds)
    if not bool(bad.any()):
        return y
    idx = bad.nonzero()[:, 0]
    sub, _ = _heads(idx, x, dt, A, B, C)
    ys = None
    if g == 1:
        a_sub = a.index_select(2, idx)
        while ys is None and r > _MIN_FACTORISED_CHUNK:
            # Each block's rows split in halves; a half's rows of tril(C B^T) are a slice of its block's.
            halves = []
            for (s, e_), M in zip(bounds, Ms):
                m = s + -(-(e_ - s) // 2)
                halves += [((s, m), M[:, :, : m - s, :m]), ((m, e_), M[:, :, m - s:, :e_])] if m < e_ else [((s, e_), M)]
            bounds, Ms = [hb for hb, _ in halves], [hm for _, hm in halves]
            r = -(-r // 2)
            if not bool(_unsafe_heads(a_sub, bounds).any()):
                ys = _row_block_products(sub[0], sub[1], a_sub, Ms, bounds)
    if ys is None:
        ys, _ = _ssd_auto(*sub, _balanced(seqlen, max(_MIN_FACTORISED_CHUNK, r // 2)))
    return _put_heads(y, 2, idx, ys)


def _ssd_auto(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, q: int,
    h0: Optional[torch.Tensor] = None, want_final: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Factorised path; heads whose decay range is unsafe are redone with chunks a quarter as long,
    and below ``_MIN_FACTORISED_CHUNK`` tokens with the exact path. Returns (y, final state or None)."""
    y, bad, final = _ssd_factorised(x, dt, A, B, C, q, h0, want_final)
    if y is not None and not bool(bad.any()):
        return y, final
    idx = bad.nonzero()[:, 0]
    sub, sub_h0 = _heads(idx, x, dt, A, B, C, h0)
    if q > _MIN_FACTORISED_CHUNK:
        nq = max(_MIN_FACTORISED_CHUNK, q // 4)
        ys, fs = _ssd_auto(*sub, -(-x.shape[1] // -(-x.shape[1] // nq)), sub_h0, want_final)
    else:
        ys, fs = _ssd_exact(*sub, q, sub_h0, want_final)
    if y is None:
        return ys, fs
    return _put_heads(y, 2, idx, ys), (_put_heads(final, 1, idx, fs) if want_final else None)


def ssd_scan_torch(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    exact: bool = False,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
):
    """Chunked SSD scan, computed in float32 and returned in ``x.dtype``.

    Args:
        x: (batch, seqlen, heads, headdim) inputs.
        dt: (batch, seqlen, heads) positive step sizes (softplus already applied).
        A: (heads,) negative decay rates.
        B, C: (batch, seqlen, groups, d_state); ``heads`` must be a multiple of ``groups``.
        chunk_size: the most tokens per chunk; the path picks its own length below it
            (:func:`choose_chunk_len`); any sequence length is accepted.
        exact: skip the factorised fast path (reference; slower).
        initial_state: (batch, heads, headdim, d_state) state before the first token (default zeros), so a
            long sequence can be scanned in pieces.
        return_final_state: also return the (float32) state after the last token.

    Returns:
        y (batch, seqlen, heads, headdim), or (y, final_state) with ``return_final_state``.
    """
    b, seqlen, h, p = x.shape
    g, n = B.shape[-2:]
    if h % g:
        raise ValueError(f"heads ({h}) must be a multiple of groups ({g})")
    if initial_state is not None and tuple(initial_state.shape) != (b, h, p, n):
        raise ValueError(f"initial_state must have shape (batch, heads, headdim, d_state) = {(b, h, p, n)}, "
                         f"got {tuple(initial_state.shape)}")
    out_dtype = x.dtype
    if seqlen == 0:  # nothing to scan: no outputs, and the state passes through unchanged
        final = initial_state.float() if initial_state is not None else x.new_zeros(b, h, p, n, dtype=torch.float32)
        return (x.new_empty(x.shape), final) if return_final_state else x.new_empty(x.shape)
    stateful = initial_state is not None or return_final_state
    with torch.autocast(x.device.type, enabled=False):  # float32 throughout, also under autocast
        x, dt, A, B, C = (t.float() for t in (x, dt, A, B, C))
        if exact:
            y, final = _ssd_exact(x, dt, A, B, C, chunk_size, initial_state, return_final_state)
        elif torch.compiler.is_compiling() or using_reference_paths():
            # Compiled: the exact path has no data-dependent branches (no graph breaks, so one graph per
            # model) and the compiler fuses its per-head decay work. Counted: its work depends on shapes only.
            q = choose_chunk_len(seqlen, n, chunk_size)
            y, final = _ssd_exact(x, dt, A, B, C, q, initial_state, return_final_state)
        else:
            q = choose_chunk_len(seqlen, n, chunk_size)
            y = _ssd_row_blocks(x, dt, A, B, C) if q >= seqlen and not stateful else None
            final = None
            if y is None:
                y, final = _ssd_auto(x, dt, A, B, C, _safe_chunk_len(dt * A, q), initial_state, return_final_state)
    y = y.to(out_dtype)
    return (y, final) if return_final_state else y


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
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
):
    """SSD scan with the chosen backend (arguments and result as in :func:`ssd_scan_torch`).

    ``auto`` takes the project's Triton kernels (:mod:`matmamba_vision.ops.triton`) for CUDA tensors when
    ``triton`` imports, else the torch path; ``mamba_ssm`` runs only when asked for by name.
    """
    check_ssd_backend(backend)
    # --- issue 14 hook: backend "triton" (ops/triton/ssd.py), and "auto"'s choice on CUDA ---
    if not using_reference_paths() and (backend == "triton" or (backend == "auto" and x.is_cuda and _triton_ok())):
        return _triton_ssd(x, dt, A, B, C, chunk_size, initial_state, return_final_state)
    # --- end of the issue 14 hook ---
    if backend == "mamba_ssm" and not using_reference_paths():
        kernel = _mamba_ssm_kernel()
        if kernel is not None and x.is_cuda:
            out = kernel(x.contiguous(), dt.contiguous(), A.float(), B.contiguous(), C.contiguous(), chunk_size,
                         initial_states=initial_state, return_final_states=return_final_state)
            if return_final_state:
                return out[0].to(x.dtype), out[1].float()
            return out.to(x.dtype)
        if backend == "mamba_ssm":
            raise RuntimeError(
                "ssd_backend='mamba_ssm' needs CUDA tensors and an importable mamba_ssm with its CUDA build; "
                "use ssd_backend='torch' or 'auto'"
            )
    return ssd_scan_torch(x, dt, A, B, C, chunk_size, initial_state=initial_state,
                          return_final_state=return_final_state)


# --- issue 14 hook: the Triton backend, imported on first use ---
@torch.compiler.assume_constant_result  # compiled code takes the answer as a constant (no trace of the import)
def _triton_ok() -> bool:
    from .triton import triton_available
    return triton_available()


def _triton_ssd(x, dt, A, B, C, chunk_size, initial_state, return_final_state):
    if not _triton_ok():
        raise RuntimeError("ssd_backend='triton' needs the triton package (it ships with torch's CUDA wheels); "
                           "use ssd_backend='torch' or 'auto'")
    from .triton.ssd import DEFAULT_CHUNK, ssd
    chunk = 16
    while chunk < min(chunk_size, DEFAULT_CHUNK):  # a power of two from 16 up to the kernels' default
        chunk *= 2
    return ssd(x, dt, A, B, C, initial_state=initial_state, return_final_state=return_final_state, chunk_size=chunk)
