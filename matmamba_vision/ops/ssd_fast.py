"""The SSD scan's fast CPU path: the chunked scan of :mod:`.ssd_ref` with the per-head decay work factorised
into GEMMs.

With ``a`` the cumulative decay and ``c`` a reference point, ``exp(a_i - a_j) = exp(a_i - c) * exp(c - a_j)``,
so the decayed product becomes one GEMM with ``tril(C B^T)`` shared by all heads of a group, scaled per token
before and after. That is exact up to rounding while the exponents stay within +-``SAFE_HALF_RANGE``
(checked per chunk and head):

- short sequences (one chunk): :func:`_ssd_row_blocks` (re-centred per block of rows, no states);
- long ones: :func:`_ssd_factorised` (chunks of ~128 tokens, states carried between chunks);
- heads whose decay range is unsafe are redone with shorter chunks, finally by the exact chunked form.

Every path but the row blocks also starts from a given state and returns the last one, so a long sequence
can be scanned in pieces (the mixer does so for CPU inference). The work depends on the data (which heads
are redone), so the FLOP counter and ``torch.compile`` take :func:`.ssd_ref.ssd_scan_ref` instead.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .ssd_ref import exp_dropped, pad_seq, scan_float32, ssd_chunked_exact

__all__ = ["ssd_scan_fast", "choose_chunk_len"]

# The factorised path runs where every |c - a| of a chunk is at most this many nats: exp(+-40) keeps both
# factors, and their products with the data, far inside float32's normal range (~1e-38 .. 3e38).
SAFE_HALF_RANGE = 40.0
_CLAMP = 60.0  # exponents of unsafe heads are clamped here (finite values, overwritten afterwards)
_MIN_FACTORISED_CHUNK = 16  # below this an unsafe head goes to the exact path


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


def _heads(idx: torch.Tensor, x, dt, A, B, C, h0: Optional[torch.Tensor] = None):
    """The scan's inputs restricted to heads ``idx`` (each keeps its own group's B and C), and their h0."""
    h, g = x.shape[2], B.shape[2]
    if g > 1:
        B, C = B[:, :, idx // (h // g)], C[:, :, idx // (h // g)]
    return (x[:, :, idx], dt[:, :, idx], A[idx], B, C), (None if h0 is None else h0[:, idx])


def _put_heads(t: torch.Tensor, dim: int, idx: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t`` with heads ``idx`` (along ``dim``) replaced by ``rows``; in place when autograd is off."""
    return t.index_copy_(dim, idx, rows) if not torch.is_grad_enabled() else t.index_copy(dim, idx, rows)


def _ssd_factorised(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    q: int,
    h0: Optional[torch.Tensor] = None,
    want_final: bool = False,
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
    dt, B, C = (pad_seq(t, pad) for t in (dt, B, C))  # dt = 0 on padding: no decay, no input
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
    U = pad_seq(U, pad).view(b, nc, q, g, hg * p).transpose(2, 3)  # (b, nc, g, q, hg*p)
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
        fk = dt.view(b, nc, q, h)[:, :steps] * exp_dropped(lk.unsqueeze(2) - la[:, :steps])
        fk = fk.view(b, steps * q, h, 1)
        xs = pad_seq(x, pad) if steps == nc else x
        Uk = (xs[:, : steps * q] * fk).view(b, steps, q, g, hg * p).transpose(2, 3)
        G = torch.matmul(Uk.transpose(-1, -2), Bc[:, :steps])  # (b, steps, g, hg*p, n)
        # The recurrence, one fused multiply-add per chunk on (b, heads, p*n) states. (A batched GEMM with the
        # (chunks x chunks) matrix of decay products does it in one call, but its inner dimension is the
        # number of chunks, far too short for a GEMM, and it needs two transposes; figures: BENCHMARKS.md.)
        # k <= 1, dropped like fk: a fast-decaying head whose fk were all dropped would otherwise carry states
        # k * S' that are subnormals into the C @ S GEMM below.
        k = exp_dropped(lk.clone()).unsqueeze(-1)  # (b, steps, h, 1)
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
        Z = Z3.baddbmm_(C3, S) if not torch.is_grad_enabled() else torch.baddbmm(Z3, C3, S)
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
        u = dt[:, :e_] * exp_dropped(lu)
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
    :func:`.ssd_ref.exp_dropped`). No states are carried.
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
    # fast (a strided row slice of the full (L x L) product is a slow GEMM operand).
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
                halves += (
                    [((s, m), M[:, :, : m - s, :m]), ((m, e_), M[:, :, m - s :, :e_])] if m < e_ else [((s, e_), M)]
                )
            bounds, Ms = [hb for hb, _ in halves], [hm for _, hm in halves]
            r = -(-r // 2)
            if not bool(_unsafe_heads(a_sub, bounds).any()):
                ys = _row_block_products(sub[0], sub[1], a_sub, Ms, bounds)
    if ys is None:
        ys, _ = _ssd_auto(*sub, _balanced(seqlen, max(_MIN_FACTORISED_CHUNK, r // 2)))
    return _put_heads(y, 2, idx, ys)


def _ssd_auto(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    q: int,
    h0: Optional[torch.Tensor] = None,
    want_final: bool = False,
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
        ys, fs = ssd_chunked_exact(*sub, q, sub_h0, want_final)
    if y is None:
        return ys, fs
    return _put_heads(y, 2, idx, ys), (_put_heads(final, 1, idx, fs) if want_final else None)


def ssd_scan_fast(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 256,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
):
    """The scan (arguments and result as in :func:`.ssd_ref.ssd_scan_ref`) by the factorised GEMMs: row
    blocks for a single chunk without states, else chunks of :func:`choose_chunk_len` tokens (shortened
    while many heads' decay range is unsafe)."""

    def core(x, dt, A, B, C, h0, want_final):
        q = choose_chunk_len(x.shape[1], B.shape[-1], chunk_size)
        stateful = h0 is not None or want_final
        y = _ssd_row_blocks(x, dt, A, B, C) if q >= x.shape[1] and not stateful else None
        if y is not None:
            return y, None
        return _ssd_auto(x, dt, A, B, C, _safe_chunk_len(dt * A, q), h0, want_final)

    return scan_float32(core, x, dt, A, B, C, initial_state, return_final_state)
