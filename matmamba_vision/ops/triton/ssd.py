"""The chunked SSD scan of Mamba2 in Triton, forward and backward, with the D skip fused.

Forward: four kernels, as in the SSD paper's chunked algorithm (``Q`` tokens per chunk, states in float32):

0. :func:`_chunk_cb_kernel`: per (chunk, batch x group): ``C_i . B_j`` within the chunk (Q x Q), shared by
   the group's heads (per head, its Q x Q x d_state multiply-adds were 1.6x all the rest of the forward's
   products at 35M's headdim 16 and d_state 128);
1. :func:`_chunk_state_kernel`: per (chunk, batch x head): the in-chunk cumulative decay ``a = cumsum(dt A)``
   and the chunk's own end state ``sum_j exp(a_last - a_j) dt_j x_j B_j^T`` (headdim x d_state);
2. :func:`_state_pass_kernel`: per (batch x head): the states entering each chunk,
   ``s_{c+1} = exp(a_last_c) s_c + own_c`` from ``s_0`` = the initial state, and the final state;
3. :func:`_chunk_scan_kernel`: per (chunk, batch x head): ``y_i = exp(a_i) C_i s_c
   + sum_{j<=i} (C_i . B_j) exp(a_i - a_j) dt_j x_j + D x_i``.

Backward (:func:`_ssd_bwd`): kernels 0, 1 and 2 recompute ``C_i . B_j`` and the entering states, then

4. :func:`_chunk_dstate_kernel`: per chunk, what its outputs send to the state entering it,
   ``sum_i exp(a_i) dy_i C_i^T``;
5. :func:`_state_pass_bwd_kernel`: reverse state passing from the final state's gradient: the gradient of the
   state leaving each chunk (= of its own state) and, at the start, of the initial state;
6. :func:`_chunk_bwd_kernel`: per (chunk, batch x head): dx, ddt, the per-token d(dt A) (reverse cumsum of
   the gradient of ``a``, which also takes the entering state's decay ``exp(a_last)``) and dD, through the
   inter-chunk, intra-chunk and own-state terms;
7. :func:`_chunk_w_kernel`: per (chunk, batch x group): the group's Q x Q intra-chunk weights, summed over
   its heads (so the two Q x Q x d_state products of dB and dC run once per group);
8. :func:`_chunk_bwd_bc_kernel`: per (chunk, batch x group, d_state block): dB and dC, looping over the
   group's heads for the state terms (no per-head (seqlen x d_state) partials are written).
Sums over headdim blocks, and over the splits of a group's heads when there are few programs, are float32
partials added in torch (no atomics).

Every exponent is <= 0, so nothing overflows at any decay. Sequences of any length are masked, not padded.
:func:`matmamba_vision.ops.ssd_ref.ssd_scan_ref` is the plain-torch reference (the tests' reference).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._launch import check_device, interpreter_active, launch, next_pow2

__all__ = ["ssd", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 64


@triton.jit
def _causal_decay(a, SIZE: tl.constexpr):
    """``exp(a_i - a_j)`` for j <= i, else 0 (SIZE x SIZE, from the cumulative log decays ``a``; exponents <= 0)."""
    k = tl.arange(0, SIZE)
    return tl.exp(tl.where(k[:, None] >= k[None, :], a[:, None] - a[None, :], -1e30))


@triton.jit
def _chunk_state_kernel(
    X,
    DT,
    A,
    B,
    ACUM,
    ST,
    L,
    H,
    G,
    P,
    N,
    NC,
    sxb,
    sxl,
    sxh,
    sxp,
    sdb,
    sdl,
    sdh,
    sbb,
    sbl,
    sbg,
    sbn,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_bh, pid_c, pid_p = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)  # int64: offsets
    bi, hi = pid_bh // H, pid_bh % H  # of 2048 px batches pass 2^31 elements
    gi = hi // (H // G)
    q = tl.arange(0, Q)
    t = pid_c.to(tl.int64) * Q + q  # int64: t * (token stride) passes 2^31 past ~1M tokens
    tm = t < L
    dt = tl.load(DT + bi * sdb + t * sdl + hi * sdh, mask=tm, other=0.0).to(tl.float32)
    dA = dt * tl.load(A + hi).to(tl.float32)
    a = tl.cumsum(dA, axis=0)
    tl.store(ACUM + (pid_bh * NC + pid_c) * Q + q, a, mask=(q < Q) & (pid_p == 0))
    w = tl.exp(tl.sum(dA, axis=0) - a) * dt  # decay to the chunk's end, times dt
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = pp < P
    xT = tl.load(
        X + bi * sxb + t[None, :] * sxl + hi * sxh + pp[:, None] * sxp, mask=pm[:, None] & tm[None, :], other=0.0
    ).to(tl.float32)
    xT = xT * w[None, :]
    base = (pid_bh * NC + pid_c) * P
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nm = nn < N
        Bm = tl.load(
            B + bi * sbb + t[:, None] * sbl + gi * sbg + nn[None, :] * sbn, mask=tm[:, None] & nm[None, :], other=0.0
        ).to(tl.float32)
        s = tl.dot(xT, Bm, input_precision=PREC)
        tl.store(ST + (base + pp[:, None]) * N + nn[None, :], s, mask=pm[:, None] & nm[None, :])


@triton.jit
def _state_pass_kernel(
    ST,
    ACUM,
    H0,
    FINAL,
    PN,
    NC,
    Q: tl.constexpr,
    HAS_H0: tl.constexpr,
    BLOCK: tl.constexpr,
    CHUNKS: tl.constexpr,
):
    """Overwrites each chunk's own state in ST with the state entering that chunk. ``CHUNKS`` chunks at a time:
    their loads are issued together and the recurrence across them is one product with their (CHUNKS x CHUNKS)
    decay matrix ``exp(L_i - L_j)``, j <= i (L: the cumulative log decay; exponents <= 0), so the serial chain
    is NC / CHUNKS memory round trips, not NC."""
    pid_bh, pid_s = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs = pid_s * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_H0:
        s = tl.load(H0 + pid_bh * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        s = tl.zeros((BLOCK,), dtype=tl.float32)
    k = tl.arange(0, CHUNKS)
    for c0 in range(0, NC, CHUNKS):
        c = c0 + k
        cm = c < NC
        ptr = ST + (pid_bh * NC + c)[:, None] * PN + offs[None, :]
        own = tl.load(ptr, mask=cm[:, None] & m[None, :], other=0.0)
        log_decay = tl.cumsum(tl.load(ACUM + (pid_bh * NC + c) * Q + Q - 1, mask=cm, other=0.0), axis=0)
        mix = _causal_decay(log_decay, CHUNKS)
        # the state leaving chunk c, which enters chunk c + 1 (past NC: no decay, nothing added)
        after = tl.exp(log_decay)[:, None] * s[None, :] + tl.dot(mix, own, input_precision="ieee")
        tl.store(ptr + PN, after, mask=((k < CHUNKS - 1) & (c + 1 < NC))[:, None] & m[None, :])
        tl.store(ST + (pid_bh * NC + c0) * PN + offs, s, mask=m)
        s = tl.sum(tl.where((k == CHUNKS - 1)[:, None], after, 0.0), axis=0)  # past NC: unchanged, the last
    tl.store(FINAL + pid_bh * PN + offs, s, mask=m)


@triton.jit
def _chunk_cb_kernel(
    B,
    C,
    CB,
    L,
    G,
    N,
    NC,
    sbb,
    sbl,
    sbg,
    sbn,
    scb,
    scl,
    scg,
    scn,
    Q: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
    OPS16: tl.constexpr,
):
    """Per (batch x group, chunk): ``C_i . B_j`` for the chunk's tokens (Q x Q, float32), which every head of the
    group shares (computed once here, not per head). ``OPS16``: 16-bit inputs multiply as they are (exact, into
    float32), not as float32 operands on TF32."""
    pid_bg, pid_c = tl.program_id(0).to(tl.int64), tl.program_id(1)
    bi, gi = pid_bg // G, pid_bg % G
    q = tl.arange(0, Q)
    t = pid_c.to(tl.int64) * Q + q  # int64: t * (token stride) passes 2^31 past ~1M tokens
    tm = t < L
    cb = tl.zeros((Q, Q), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nm = nn < N
        Cm = tl.load(
            C + bi * scb + t[:, None] * scl + gi * scg + nn[None, :] * scn, mask=tm[:, None] & nm[None, :], other=0.0
        )
        BT = tl.load(
            B + bi * sbb + t[None, :] * sbl + gi * sbg + nn[:, None] * sbn, mask=nm[:, None] & tm[None, :], other=0.0
        )
        if OPS16:
            cb += tl.dot(Cm, BT)
        else:
            cb += tl.dot(Cm.to(tl.float32), BT.to(tl.float32), input_precision=PREC)
    tl.store(CB + (pid_bg * NC + pid_c) * Q * Q + q[:, None] * Q + q[None, :], cb)


@triton.jit
def _chunk_scan_kernel(
    X,
    DT,
    CB,
    C,
    D,
    ACUM,
    ST,
    Y,
    L,
    H,
    G,
    P,
    N,
    NC,
    sxb,
    sxl,
    sxh,
    sxp,
    sdb,
    sdl,
    sdh,
    scb,
    scl,
    scg,
    scn,
    syb,
    syl,
    syh,
    syp,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr,
    PREC: tl.constexpr,
    SCORES16: tl.constexpr,
):
    """``SCORES16``: the intra-chunk weights multiply x in x's (16-bit) dtype, not in float32 (chosen per dot from
    the errors that benchmarks/ssd_dot_precision.py measures)."""
    pid_bh, pid_c, pid_p = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)  # int64: offsets
    bi, hi = pid_bh // H, pid_bh % H  # of 2048 px batches pass 2^31 elements
    gi = hi // (H // G)
    q = tl.arange(0, Q)
    t = pid_c.to(tl.int64) * Q + q  # int64: t * (token stride) passes 2^31 past ~1M tokens
    tm = t < L
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = pp < P
    base = (pid_bh * NC + pid_c) * P
    acc = tl.zeros((Q, BLOCK_P), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nm = nn < N
        Cm = tl.load(
            C + bi * scb + t[:, None] * scl + gi * scg + nn[None, :] * scn, mask=tm[:, None] & nm[None, :], other=0.0
        ).to(tl.float32)
        S = tl.load(ST + (base + pp[None, :]) * N + nn[:, None], mask=nm[:, None] & pm[None, :], other=0.0)
        acc += tl.dot(Cm, S, input_precision=PREC)
    # loaded after the state loop, so that the Q x Q tiles are not live across it (registers)
    a = tl.load(ACUM + (pid_bh * NC + pid_c) * Q + q)
    dt = tl.load(DT + bi * sdb + t * sdl + hi * sdh, mask=tm, other=0.0).to(tl.float32)
    acc = acc * tl.exp(a)[:, None]  # the entering state decayed to token i
    cb = tl.load(CB + ((bi * G + gi) * NC + pid_c) * Q * Q + q[:, None] * Q + q[None, :])  # C_i . B_j
    scores = cb * _causal_decay(a, Q) * dt[None, :]
    xm = tl.load(
        X + bi * sxb + t[:, None] * sxl + hi * sxh + pp[None, :] * sxp, mask=tm[:, None] & pm[None, :], other=0.0
    )
    if SCORES16:
        acc += tl.dot(scores.to(xm.dtype), xm)
    else:
        acc += tl.dot(scores, xm.to(tl.float32), input_precision=PREC)
    if HAS_D:
        acc += tl.load(D + hi).to(tl.float32) * xm.to(tl.float32)
    tl.store(
        Y + bi * syb + t[:, None] * syl + hi * syh + pp[None, :] * syp,
        acc.to(Y.dtype.element_ty),
        mask=tm[:, None] & pm[None, :],
    )


@triton.jit
def _chunk_dstate_kernel(
    GY,
    C,
    ACUM,
    DST,
    L,
    H,
    G,
    P,
    N,
    NC,
    syb,
    syl,
    syh,
    syp,
    scb,
    scl,
    scg,
    scn,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
):
    """Per (chunk, batch x head): the gradient that the chunk's outputs send to the state entering it,
    ``sum_i exp(a_i) dy_i C_i^T`` (headdim x d_state)."""
    pid_bh, pid_c, pid_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    bi, hi = pid_bh // H, pid_bh % H
    gi = hi // (H // G)
    q = tl.arange(0, Q)
    t = pid_c * Q + q  # int64: t * token stride passes 2^31 past ~1M tokens
    tm = t < L
    a = tl.load(ACUM + (pid_bh * NC + pid_c) * Q + q)
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = pp < P
    gyT = tl.load(
        GY + bi * syb + t[None, :] * syl + hi * syh + pp[:, None] * syp, mask=pm[:, None] & tm[None, :], other=0.0
    ).to(tl.float32)
    gyT = gyT * tl.exp(a)[None, :]
    base = (pid_bh * NC + pid_c) * P
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nm = nn < N
        Cm = tl.load(
            C + bi * scb + t[:, None] * scl + gi * scg + nn[None, :] * scn, mask=tm[:, None] & nm[None, :], other=0.0
        ).to(tl.float32)
        tl.store(
            DST + (base + pp[:, None]) * N + nn[None, :],
            tl.dot(gyT, Cm, input_precision=PREC),
            mask=pm[:, None] & nm[None, :],
        )


@triton.jit
def _state_pass_bwd_kernel(
    DST,
    ACUM,
    GFINAL,
    DH0,
    PN,
    NC,
    Q: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Reverse state passing per (batch x head): from ``g = dfinal``, chunk by chunk backwards, overwrites
    DST[c] (the chunk outputs' gradient of the entering state) with the gradient of the state *leaving*
    chunk c (that of its own state), then ``g = exp(a_last_c) g + DST[c]``; ``g`` at the start is dh0."""
    pid_bh, pid_s = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs = pid_s * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    g = tl.load(GFINAL + pid_bh * PN + offs, mask=m, other=0.0)
    for i in range(NC):
        c = NC - 1 - i
        ptr = DST + (pid_bh * NC + c) * PN + offs
        from_y = tl.load(ptr, mask=m, other=0.0)
        tl.store(ptr, g, mask=m)
        g = tl.exp(tl.load(ACUM + (pid_bh * NC + c) * Q + Q - 1)) * g + from_y
    tl.store(DH0 + pid_bh * PN + offs, g, mask=m)


@triton.jit
def _chunk_bwd_kernel(
    X,
    DT,
    A,
    B,
    C,
    CB,
    D,
    ACUM,
    ST,
    DST,
    GY,
    DX,
    DDT_P,
    DA_P,
    DD_P,
    L,
    H,
    G,
    P,
    N,
    NC,
    sxb,
    sxl,
    sxh,
    sxp,
    sdb,
    sdl,
    sdh,
    sbb,
    sbl,
    sbg,
    sbn,
    scb,
    scl,
    scg,
    scn,
    syb,
    syl,
    syh,
    syp,
    sob,
    sol,
    soh,
    sop,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HAS_D: tl.constexpr,
    PREC: tl.constexpr,
    XGY16: tl.constexpr,
    DSB16: tl.constexpr,
):
    """Per (chunk, batch x head, headdim block): the gradients of the chunk's three terms, the inter-chunk
    ``exp(a_i) C_i s``, the intra-chunk ``sum_{j<=i} (C_i . B_j) exp(a_i - a_j) dt_j x_j`` and the own state
    ``sum_j exp(a_last - a_j) dt_j x_j B_j^T``, plus the D skip and the decay of the entering state.

    dx is complete (all of d_state is looped over here) and stored in x's dtype; what sums over headdim
    (ddt, the per-token dA terms, dD) is stored as this headdim block's float32 partial, per head, and summed
    outside (no atomics). dB and dC, which sum over the heads of a group, are :func:`_chunk_bwd_bc_kernel`'s.

    Operands (chosen per dot from the errors that benchmarks/ssd_dot_precision.py measures): ``XGY16``: dy . x
    in the inputs' 16-bit dtype (exact); ``DSB16``: B . dS_out with dS_out rounded to B's dtype (bf16 only);
    else float32 operands (TF32 for 16-bit inputs)."""
    pid_bh, pid_c, pid_p = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    bi, hi = pid_bh // H, pid_bh % H
    gi = hi // (H // G)
    prow = pid_p * tl.num_programs(0) + pid_bh  # row of the float32 partials: (headdim block, batch x head)
    q = tl.arange(0, Q)
    t = pid_c * Q + q
    tm = t < L
    a = tl.load(ACUM + (pid_bh * NC + pid_c) * Q + q)
    a_last = tl.load(ACUM + (pid_bh * NC + pid_c) * Q + Q - 1)
    dt = tl.load(DT + bi * sdb + t * sdl + hi * sdh, mask=tm, other=0.0).to(tl.float32)
    pp = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    pm = pp < P
    qp_mask = tm[:, None] & pm[None, :]
    xm = tl.load(X + bi * sxb + t[:, None] * sxl + hi * sxh + pp[None, :] * sxp, mask=qp_mask, other=0.0)
    gy = tl.load(GY + bi * syb + t[:, None] * syl + hi * syh + pp[None, :] * syp, mask=qp_mask, other=0.0)
    # The d_state loop keeps only (Q, BLOCK_P) accumulators: with dS_out = the leaving state's gradient,
    # x_j^T dS_out B_j = sum_p x_j[p] (B_j . dS_out[p]) and dy_i^T s C_i = sum_p dy_i[p] (C_i . s[p]).
    dx_own = tl.zeros((Q, BLOCK_P), dtype=tl.float32)  # B_j . dS_out[p]
    c_s = tl.zeros((Q, BLOCK_P), dtype=tl.float32)  # C_i . s[p]
    ds_s = tl.zeros((BLOCK_P,), dtype=tl.float32)  # sum_n dS_out * s, per p
    base = (pid_bh * NC + pid_c) * P
    for n0 in range(0, N, BLOCK_N):
        nn = n0 + tl.arange(0, BLOCK_N)
        nm = nn < N
        qn_mask = tm[:, None] & nm[None, :]
        pn_mask = pm[:, None] & nm[None, :]
        Bm = tl.load(B + bi * sbb + t[:, None] * sbl + gi * sbg + nn[None, :] * sbn, mask=qn_mask, other=0.0)
        dS = tl.load(DST + (base + pp[:, None]) * N + nn[None, :], mask=pn_mask, other=0.0)  # d(leaving state)
        if DSB16:
            dx_own += tl.dot(Bm, tl.trans(dS.to(Bm.dtype)))
        else:
            dx_own += tl.dot(Bm.to(tl.float32), tl.trans(dS), input_precision=PREC)
        Cm = tl.load(C + bi * scb + t[:, None] * scl + gi * scg + nn[None, :] * scn, mask=qn_mask, other=0.0).to(
            tl.float32
        )
        S = tl.load(ST + (base + pp[:, None]) * N + nn[None, :], mask=pn_mask, other=0.0)  # entering state
        c_s += tl.dot(Cm, tl.trans(S), input_precision=PREC)
        ds_s += tl.sum(dS * S, axis=1)
    x_ds_b = tl.sum(xm.to(tl.float32) * dx_own, axis=1)  # x_j^T dS_out B_j
    gy_s_c = tl.sum(gy.to(tl.float32) * c_s, axis=1)  # dy_i^T s C_i
    w_own = tl.exp(a_last - a) * dt  # the own state's weight of token j
    cb = tl.load(CB + ((bi * G + gi) * NC + pid_c) * Q * Q + q[:, None] * Q + q[None, :])  # C_i . B_j
    k = cb * _causal_decay(a, Q)  # (C_i . B_j) exp(a_i - a_j), j <= i
    dx = tl.dot(tl.trans(k), gy.to(tl.float32), input_precision=PREC) * dt[:, None] + dx_own * w_own[:, None]
    if HAS_D:
        dx += tl.load(D + hi).to(tl.float32) * gy.to(tl.float32)
    tl.store(DX + bi * sob + t[:, None] * sol + hi * soh + pp[None, :] * sop, dx.to(DX.dtype.element_ty), mask=qp_mask)
    # dt as a multiplier: the intra-chunk term and the own state
    if XGY16:
        m = k * tl.dot(gy, tl.trans(xm))  # times dy_i . x_j over this headdim block
    else:
        m = k * tl.dot(gy.to(tl.float32), tl.trans(xm.to(tl.float32)), input_precision=PREC)
    ddt = tl.sum(m, axis=0) + tl.exp(a_last - a) * x_ds_b
    # d(a_i), a = cumsum(dt A) within the chunk
    m = m * dt[None, :]
    own = w_own * x_ds_b
    da = tl.sum(m, axis=1) - tl.sum(m, axis=0) - own + tl.exp(a) * gy_s_c  # exp(a_i): entering state's decay
    da += tl.where(q == Q - 1, tl.sum(own, axis=0) + tl.exp(a_last) * tl.sum(ds_s, axis=0), 0.0)
    # d(dt_k A) = sum_{i >= k} da_i (reverse cumsum as a masked sum: exact, no cancellation)
    dda = tl.sum(tl.where(q[:, None] >= q[None, :], da[:, None], 0.0), axis=0)
    ddt += dda * tl.load(A + hi).to(tl.float32)
    tl.store(DDT_P + prow * L + t, ddt, mask=tm)
    tl.store(DA_P + prow * L + t, dda * dt, mask=tm)
    if HAS_D:
        tl.store(DD_P + prow * NC + pid_c, tl.sum(tl.sum(gy.to(tl.float32) * xm.to(tl.float32), axis=1), axis=0))


@triton.jit
def _chunk_w_kernel(
    X,
    DT,
    ACUM,
    GY,
    W_P,
    BATCH,
    L,
    H,
    G,
    P,
    NC,
    HPS,
    sxb,
    sxl,
    sxh,
    sxp,
    sdb,
    sdl,
    sdh,
    syb,
    syl,
    syh,
    syp,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    PREC: tl.constexpr,
    OPS16: tl.constexpr,
):
    """Per (split x batch x group, chunk): the intra-chunk weights ``sum_h W_h`` over ``HPS`` heads of the group
    (a split), ``W_h[i, j] = (dy_i . x_j) exp(a_i - a_j) dt_j`` (j <= i), stored as the split's float32 (Q x Q)
    partial; :func:`_chunk_bwd_bc_kernel` multiplies their sum by B and C. ``OPS16``: dy . x in the inputs'
    16-bit dtype (exact), not as float32 operands on TF32."""
    pid, pid_c = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64)  # int64: bi x batch stride
    row, gi = pid // G, pid % G  # row = split x batch + batch index
    split, bi = row // BATCH, row % BATCH
    hpg = H // G
    q = tl.arange(0, Q)
    t = pid_c * Q + q
    tm = t < L
    W = tl.zeros((Q, Q), dtype=tl.float32)
    h_lo = gi * hpg + split * HPS
    for hi in range(h_lo, tl.minimum(h_lo + HPS, (gi + 1) * hpg)):
        gx = tl.zeros((Q, Q), dtype=tl.float32)
        for p0 in range(0, P, BLOCK_P):
            pp = p0 + tl.arange(0, BLOCK_P)
            qp_mask = tm[:, None] & (pp < P)[None, :]
            xm = tl.load(X + bi * sxb + t[:, None] * sxl + hi * sxh + pp[None, :] * sxp, mask=qp_mask, other=0.0)
            gy = tl.load(GY + bi * syb + t[:, None] * syl + hi * syh + pp[None, :] * syp, mask=qp_mask, other=0.0)
            if OPS16:
                gx += tl.dot(gy, tl.trans(xm))
            else:
                gx += tl.dot(gy.to(tl.float32), tl.trans(xm.to(tl.float32)), input_precision=PREC)
        a = tl.load(ACUM + ((bi * H + hi) * NC + pid_c) * Q + q)
        dt = tl.load(DT + bi * sdb + t * sdl + hi * sdh, mask=tm, other=0.0).to(tl.float32)
        W += _causal_decay(a, Q) * gx * dt[None, :]
    tl.store(W_P + ((row * G + gi) * NC + pid_c) * Q * Q + q[:, None] * Q + q[None, :], W)


@triton.jit
def _chunk_bwd_bc_kernel(
    X,
    DT,
    B,
    C,
    ACUM,
    W,
    ST,
    DST,
    GY,
    DB_P,
    DC_P,
    BATCH,
    L,
    H,
    G,
    P,
    N,
    NC,
    HPS,
    sxb,
    sxl,
    sxh,
    sxp,
    sdb,
    sdl,
    sdh,
    sbb,
    sbl,
    sbg,
    sbn,
    scb,
    scl,
    scg,
    scn,
    syb,
    syl,
    syh,
    syp,
    Q: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PREC: tl.constexpr,
    WB16: tl.constexpr,
):
    """Per (split x batch x group, chunk, d_state block): dB and dC of the chunk's tokens, summed over ``HPS`` heads
    of the group (a split; the splits' float32 partials are added outside):

    ``dC_i = sum_h exp(a_i) dy_i s^T + W B``, ``dB_j = sum_h w_own_j x_j dS^T + W^T C`` with ``W`` the group's
    intra-chunk weights summed over its heads (:func:`_chunk_w_kernel`; its two Q x Q x d_state products once
    per group, in split 0). ``WB16``: ``W B`` with W rounded to B's dtype (bf16 only; chosen from the errors that
    benchmarks/ssd_dot_precision.py measures), else float32 operands (TF32 for 16-bit inputs)."""
    pid, pid_c, pid_n = tl.program_id(0).to(tl.int64), tl.program_id(1).to(tl.int64), tl.program_id(2)
    row, gi = pid // G, pid % G  # row = split x batch + batch index (int64: bi x batch stride passes 2^31)
    split, bi = row // BATCH, row % BATCH
    hpg = H // G
    q = tl.arange(0, Q)
    t = pid_c * Q + q
    tm = t < L
    nn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nm = nn < N
    dC = tl.zeros((Q, BLOCK_N), dtype=tl.float32)
    dB = tl.zeros((Q, BLOCK_N), dtype=tl.float32)
    h_lo = gi * hpg + split * HPS
    for hi in range(h_lo, tl.minimum(h_lo + HPS, (gi + 1) * hpg)):
        bh = bi * H + hi
        a = tl.load(ACUM + (bh * NC + pid_c) * Q + q)
        a_last = tl.load(ACUM + (bh * NC + pid_c) * Q + Q - 1)
        dt = tl.load(DT + bi * sdb + t * sdl + hi * sdh, mask=tm, other=0.0).to(tl.float32)
        e_in = tl.exp(a)  # the entering state's decay to token i
        w_own = tl.exp(a_last - a) * dt  # the own state's weight of token j
        base = (bh * NC + pid_c) * P
        for p0 in range(0, P, BLOCK_P):
            pp = p0 + tl.arange(0, BLOCK_P)
            pm = pp < P
            qp_mask = tm[:, None] & pm[None, :]
            pn_mask = pm[:, None] & nm[None, :]
            gy = tl.load(GY + bi * syb + t[:, None] * syl + hi * syh + pp[None, :] * syp, mask=qp_mask, other=0.0).to(
                tl.float32
            )
            S = tl.load(ST + (base + pp[:, None]) * N + nn[None, :], mask=pn_mask, other=0.0)  # entering state
            dC += tl.dot(gy * e_in[:, None], S, input_precision=PREC)
            xm = tl.load(X + bi * sxb + t[:, None] * sxl + hi * sxh + pp[None, :] * sxp, mask=qp_mask, other=0.0).to(
                tl.float32
            )
            dS = tl.load(DST + (base + pp[:, None]) * N + nn[None, :], mask=pn_mask, other=0.0)  # d(leaving)
            dB += tl.dot(xm * w_own[:, None], dS, input_precision=PREC)
    qn_mask = tm[:, None] & nm[None, :]
    if split == 0:
        Wm = tl.load(W + ((bi * G + gi) * NC + pid_c) * Q * Q + q[:, None] * Q + q[None, :])
        Bm = tl.load(B + bi * sbb + t[:, None] * sbl + gi * sbg + nn[None, :] * sbn, mask=qn_mask, other=0.0)
        if WB16:
            dC += tl.dot(Wm.to(Bm.dtype), Bm)
        else:
            dC += tl.dot(Wm, Bm.to(tl.float32), input_precision=PREC)
        Cm = tl.load(C + bi * scb + t[:, None] * scl + gi * scg + nn[None, :] * scn, mask=qn_mask, other=0.0).to(
            tl.float32
        )
        dB += tl.dot(tl.trans(Wm), Cm, input_precision=PREC)
    out = ((row * L + t[:, None]) * G + gi) * N + nn[None, :]  # (split, batch, seqlen, group, n)
    tl.store(DB_P + out, dB, mask=qn_mask)
    tl.store(DC_P + out, dC, mask=qn_mask)


STATE_PASS_CHUNKS = 16  # chunks per step of the state passing's scan (a module attribute: the tests vary it)
MIN_BC_PROGRAMS = 512  # kernels 7 and 8 split a group's heads until they have this many programs (or one head each)
MAX_CHUNKS = 65535  # the launch grid is (batch x heads, chunks, headdim blocks): CUDA caps axes 1 and 2
MAX_BLOCK_P = 64  # tile caps of headdim and d_state (module attributes: the tests lower them to 16)
MAX_BLOCK_N = 64
# The chunk-backward, W and dB/dC kernels keep several (chunk x chunk) and (chunk x tile) float32 tiles live:
# tiles of at most 32 and 8 warps keep them in registers (no spills at chunk 64 on sm_80 and sm_90).
BWD_MAX_BLOCK = 32
BWD_WARPS = 8
BC_FP32_BLOCK_N = (
    16  # the dB/dC kernel's d_state tile at float32, whose W products (no tensor cores) need more registers
)


def _blocks(p: int, n: int) -> Tuple[int, int]:
    return min(next_pow2(p), MAX_BLOCK_P), min(next_pow2(n), MAX_BLOCK_N)


def _bwd_blocks(p: int, n: int) -> Tuple[int, int]:
    """The backward kernels' tiles: :func:`_blocks` capped at ``BWD_MAX_BLOCK``."""
    block_p, block_n = _blocks(p, n)
    return min(block_p, BWD_MAX_BLOCK), min(block_n, BWD_MAX_BLOCK)


def _prec(x: torch.Tensor) -> str:
    return "ieee" if x.dtype == torch.float32 else "tf32"


def _ops16(x: torch.Tensor, *dtypes: torch.dtype) -> bool:
    """Whether a dot chosen for 16-bit operands takes them in ``x``'s dtype: one of ``dtypes``, and not bf16
    under the interpreter (which holds bf16 as uint16 and multiplies it as integers)."""
    return x.dtype in dtypes and not (x.dtype == torch.bfloat16 and interpreter_active())


def _entering_states(x, dt, A, B, initial_state, final, q):
    """Kernels 1 and 2: the in-chunk cumulative decays (b, h, nc, q) and the float32 states entering each chunk
    (b, h, nc, p, n); writes the final state into ``final``."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2:]
    nc = triton.cdiv(seqlen, q)
    acum = torch.empty((b, h, nc, q), dtype=torch.float32, device=x.device)
    states = torch.empty((b, h, nc, p, n), dtype=torch.float32, device=x.device)
    block_p, block_n = _blocks(p, n)
    launch(
        _chunk_state_kernel,
        (b * h, nc, triton.cdiv(p, block_p)),
        x,
        dt,
        A.float(),
        B,
        acum,
        states,
        seqlen,
        h,
        g,
        p,
        n,
        nc,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        Q=q,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        PREC=_prec(x),
    )
    h0 = initial_state.float().contiguous() if initial_state is not None else final
    block = min(next_pow2(p * n), 256)
    launch(
        _state_pass_kernel,
        (b * h, triton.cdiv(p * n, block)),
        states,
        acum,
        h0,
        final,
        p * n,
        nc,
        Q=q,
        HAS_H0=initial_state is not None,
        BLOCK=block,
        CHUNKS=STATE_PASS_CHUNKS,
        num_warps=8,  # at 4 warps, 2 words a thread spill (sm_90)
    )
    return acum, states


def _chunk_cb(B, C, q):
    """Kernel 0: ``C_i . B_j`` within each chunk, per (batch, group): (b, g, nc, q, q) float32."""
    b, seqlen, g, n = B.shape
    nc = triton.cdiv(seqlen, q)
    cb = torch.empty((b, g, nc, q, q), dtype=torch.float32, device=B.device)
    launch(
        _chunk_cb_kernel,
        (b * g, nc),
        B,
        C,
        cb,
        seqlen,
        g,
        n,
        nc,
        *B.stride(),
        *C.stride(),
        Q=q,
        BLOCK_N=min(_blocks(1, n)[1], 32 if B.dtype == torch.float32 else 64),  # fp32 at 64: spills (sm_80)
        PREC=_prec(B),
        OPS16=_ops16(B, torch.float16, torch.bfloat16),
    )
    return cb


@torch.library.custom_op("matmamba_vision::triton_ssd", mutates_args=())
def _ssd_fwd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    b, seqlen, h, p = x.shape
    g, n = B.shape[2:]
    y = torch.empty((b, seqlen, h, p), dtype=x.dtype, device=x.device)
    final = torch.zeros((b, h, p, n), dtype=torch.float32, device=x.device)
    if seqlen == 0 or y.numel() == 0:
        if initial_state is not None:
            final.copy_(initial_state)
        return y, final
    q = chunk_size
    nc = triton.cdiv(seqlen, q)
    acum, states = _entering_states(x, dt, A, B, initial_state, final, q)
    A = A.float()
    block_p, block_n = _blocks(p, n)
    prec = _prec(x)
    grid = (b * h, nc, triton.cdiv(p, block_p))
    common = dict(Q=q, BLOCK_P=block_p, BLOCK_N=block_n, PREC=prec)
    launch(
        _chunk_scan_kernel,
        grid,
        x,
        dt,
        _chunk_cb(B, C, q),
        C,
        D if D is not None else A,
        acum,
        states,
        y,
        seqlen,
        h,
        g,
        p,
        n,
        nc,
        *x.stride(),
        *dt.stride(),
        *C.stride(),
        *y.stride(),
        HAS_D=D is not None,
        SCORES16=_ops16(x, torch.bfloat16),  # not fp16: the float32 weights could pass its range
        num_warps=8 if x.dtype == torch.float32 else 4,  # fp32 at 4 warps: spills at headdim 32 (sm_80)
        **common,
    )
    return y, final


@_ssd_fwd.register_fake
def _(x, dt, A, B, C, D, initial_state, chunk_size):
    b, _, h, p = x.shape
    return x.new_empty(x.shape), x.new_empty((b, h, p, B.shape[-1]), dtype=torch.float32)


def _head_splits(hpg: int, programs: int) -> Tuple[int, int]:
    """(splits, heads per split) of a group's ``hpg`` heads: as few splits as keep ``MIN_BC_PROGRAMS`` programs
    busy when each split has ``programs`` programs."""
    splits = max(1, min(hpg, triton.cdiv(MIN_BC_PROGRAMS, programs)))
    hps = triton.cdiv(hpg, splits)
    return triton.cdiv(hpg, hps), hps


def _bc_grads(x, dt, B, C, acum, states, dstates, grad_y, q):
    """dB and dC: the group's intra-chunk weights through :func:`_chunk_w_kernel`, then
    :func:`_chunk_bwd_bc_kernel`; each with the heads of a group in splits (:func:`_head_splits`), whose float32
    partials are summed here."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2:]
    nc = triton.cdiv(seqlen, q)
    block_p, block_n = _bwd_blocks(p, n)
    prec = _prec(x)
    if prec == "ieee":
        block_n = min(block_n, BC_FP32_BLOCK_N)
    nnb, hpg = triton.cdiv(n, block_n), h // g
    splits, hps = _head_splits(hpg, b * g * nc)
    w_p = torch.empty((splits, b, g, nc, q, q), dtype=torch.float32, device=x.device)
    launch(
        _chunk_w_kernel,
        (splits * b * g, nc),
        x,
        dt,
        acum,
        grad_y,
        w_p,
        b,
        seqlen,
        h,
        g,
        p,
        nc,
        hps,
        *x.stride(),
        *dt.stride(),
        *grad_y.stride(),
        Q=q,
        BLOCK_P=block_p,
        PREC=prec,
        OPS16=_ops16(x, torch.float16, torch.bfloat16) and grad_y.dtype == x.dtype,  # dy . x: exact in 16 bits
        num_warps=BWD_WARPS,
    )
    w = w_p.sum(0) if splits > 1 else w_p[0]
    splits, hps = _head_splits(hpg, b * g * nc * nnb)
    db_p, dc_p = (torch.empty((splits, b, seqlen, g, n), dtype=torch.float32, device=x.device) for _ in range(2))
    launch(
        _chunk_bwd_bc_kernel,
        (splits * b * g, nc, nnb),
        x,
        dt,
        B,
        C,
        acum,
        w,
        states,
        dstates,
        grad_y,
        db_p,
        dc_p,
        b,
        seqlen,
        h,
        g,
        p,
        n,
        nc,
        hps,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        *grad_y.stride(),
        Q=q,
        BLOCK_P=block_p,
        BLOCK_N=block_n,
        PREC=prec,
        WB16=_ops16(B, torch.bfloat16),  # not fp16: the float32 weights could pass its range
        num_warps=BWD_WARPS,
    )
    return db_p.sum(0).to(B.dtype), dc_p.sum(0).to(C.dtype)


@torch.library.custom_op("matmamba_vision::triton_ssd_bwd", mutates_args=())
def _ssd_bwd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor],
    initial_state: Optional[torch.Tensor],
    grad_y: torch.Tensor,
    grad_final: torch.Tensor,
    chunk_size: int,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients for x, dt, A, B, C, D and the initial state (zeros for the last two when absent): the entering
    states are recomputed (kernels 1 and 2), then :func:`_chunk_dstate_kernel`, :func:`_state_pass_bwd_kernel`
    and :func:`_chunk_bwd_kernel`; float32 partials are summed here."""
    b, seqlen, h, p = x.shape
    g, n = B.shape[2:]
    f32 = dict(dtype=torch.float32, device=x.device)
    grad_final = grad_final.float().contiguous()
    if seqlen == 0 or x.numel() == 0:
        return (
            torch.zeros_like(x),
            torch.zeros_like(dt),
            torch.zeros_like(A),
            torch.zeros_like(B),
            torch.zeros_like(C),
            A.new_zeros(h) if D is None else torch.zeros_like(D),
            grad_final.to(torch.float32 if initial_state is None else initial_state.dtype, copy=True),
        )
    q = chunk_size
    nc = triton.cdiv(seqlen, q)
    acum, states = _entering_states(x, dt, A, B, initial_state, torch.empty((b, h, p, n), **f32), q)
    block_p, block_n = _bwd_blocks(p, n)
    npb = triton.cdiv(p, block_p)
    grid = (b * h, nc, npb)
    common = dict(Q=q, BLOCK_P=block_p, BLOCK_N=block_n, PREC=_prec(x))
    dstates = torch.empty((b, h, nc, p, n), **f32)
    launch(
        _chunk_dstate_kernel,
        grid,
        grad_y,
        C,
        acum,
        dstates,
        seqlen,
        h,
        g,
        p,
        n,
        nc,
        *grad_y.stride(),
        *C.stride(),
        **common,
    )
    dh0 = torch.empty((b, h, p, n), **f32)
    block = min(next_pow2(p * n), 1024)
    launch(
        _state_pass_bwd_kernel,
        (b * h, triton.cdiv(p * n, block)),
        dstates,
        acum,
        grad_final,
        dh0,
        p * n,
        nc,
        Q=q,
        BLOCK=block,
    )
    dx = torch.empty((b, seqlen, h, p), dtype=x.dtype, device=x.device)
    ddt_p, da_p = torch.empty((npb, b, h, seqlen), **f32), torch.empty((npb, b, h, seqlen), **f32)
    dd_p = torch.empty((npb, b, h, nc), **f32)
    A32 = A.float()
    launch(
        _chunk_bwd_kernel,
        grid,
        x,
        dt,
        A32,
        B,
        C,
        _chunk_cb(B, C, q),
        D if D is not None else A32,
        acum,
        states,
        dstates,
        grad_y,
        dx,
        ddt_p,
        da_p,
        dd_p,
        seqlen,
        h,
        g,
        p,
        n,
        nc,
        *x.stride(),
        *dt.stride(),
        *B.stride(),
        *C.stride(),
        *grad_y.stride(),
        *dx.stride(),
        HAS_D=D is not None,
        XGY16=_ops16(x, torch.float16, torch.bfloat16) and grad_y.dtype == x.dtype,  # dy . x: exact in 16 bits
        DSB16=_ops16(B, torch.bfloat16),  # not fp16: the float32 state gradients could pass its range
        num_warps=BWD_WARPS,
        **common,
    )
    ddt = ddt_p.sum(0).transpose(1, 2).to(dt.dtype)
    dA = da_p.sum((0, 1, 3)).to(A.dtype)

    dD = dd_p.sum((0, 1, 3)).to(D.dtype) if D is not None else A.new_zeros(h)
    dh0 = dh0 if initial_state is None else dh0.to(initial_state.dtype)
    dB, dC = _bc_grads(x, dt, B, C, acum, states, dstates, grad_y, q)
    return dx, ddt.contiguous(), dA, dB, dC, dD, dh0


@_ssd_bwd.register_fake
def _(x, dt, A, B, C, D, initial_state, grad_y, grad_final, chunk_size):
    b, _, h, p = x.shape
    return (
        x.new_empty(x.shape),
        dt.new_empty(dt.shape),
        A.new_empty(A.shape),
        B.new_empty(B.shape),
        C.new_empty(C.shape),
        A.new_empty(h) if D is None else D.new_empty(D.shape),
        x.new_empty((b, h, p, B.shape[-1]), dtype=torch.float32)
        if initial_state is None
        else initial_state.new_empty(initial_state.shape),
    )


def _setup(ctx, inputs, output):
    x, dt, A, B, C, D, initial_state, chunk_size = inputs
    ctx.has_d, ctx.has_h0, ctx.chunk_size = D is not None, initial_state is not None, chunk_size
    ctx.save_for_backward(x, dt, A, B, C, D, initial_state)


def _backward(ctx, grad_y, grad_final):
    x, dt, A, B, C, D, h0 = ctx.saved_tensors
    if grad_y is None:
        grad_y = torch.zeros_like(x)
    if grad_final is None:
        grad_final = x.new_zeros((x.shape[0], x.shape[2], x.shape[3], B.shape[-1]), dtype=torch.float32)
    gx, gdt, gA, gB, gC, gD, gh0 = _ssd_bwd(x, dt, A, B, C, D, h0, grad_y, grad_final, ctx.chunk_size)
    return gx, gdt, gA, gB, gC, gD if ctx.has_d else None, gh0 if ctx.has_h0 else None, None


_ssd_fwd.register_autograd(_backward, setup_context=_setup)


def _check(x, dt, A, B, C, D, initial_state, chunk_size) -> None:
    if x.dim() != 4 or dt.dim() != 3 or A.dim() != 1 or B.dim() != 4 or B.shape != C.shape:
        raise ValueError(
            "ssd: x must be (batch, seqlen, heads, headdim), dt (batch, seqlen, heads), A (heads,), "
            f"B and C (batch, seqlen, groups, d_state); got {tuple(x.shape)}, {tuple(dt.shape)}, "
            f"{tuple(A.shape)}, {tuple(B.shape)}, {tuple(C.shape)}"
        )
    b, seqlen, h, p = x.shape
    g, n = B.shape[2:]
    if dt.shape != (b, seqlen, h) or A.shape != (h,) or B.shape[:2] != (b, seqlen) or h % g:
        raise ValueError(
            f"ssd: shapes disagree (x {tuple(x.shape)}, dt {tuple(dt.shape)}, A {tuple(A.shape)}, "
            f"B {tuple(B.shape)}); heads must be a multiple of groups"
        )
    if D is not None and D.shape != (h,):
        raise ValueError(f"ssd: D must have shape (heads,) = ({h},), got {tuple(D.shape)}")
    if initial_state is not None and initial_state.shape != (b, h, p, n):
        raise ValueError(
            f"ssd: initial_state must have shape (batch, heads, headdim, d_state) = {(b, h, p, n)}, "
            f"got {tuple(initial_state.shape)}"
        )
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"ssd: chunk_size must be a power of two >= 16, got {chunk_size!r}")
    if triton.cdiv(seqlen, chunk_size) > MAX_CHUNKS:
        raise ValueError(
            f"ssd: at most {MAX_CHUNKS} chunks (a CUDA grid's second axis), i.e. seqlen <= "
            f"{MAX_CHUNKS * chunk_size} at chunk_size {chunk_size}; got seqlen {seqlen}"
        )


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: Optional[torch.Tensor] = None,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
    chunk_size: int = DEFAULT_CHUNK,
):
    """The SSD scan (arguments as :func:`matmamba_vision.ops.ssd_ref.ssd_scan_ref`) in Triton, plus ``D``
    (heads,): ``y += D x`` fused. Returns y in ``x.dtype``, or (y, float32 final state) with ``return_final_state``.
    Differentiable in every tensor input (backward in Triton, see the module's docstring)."""
    _check(x, dt, A, B, C, D, initial_state, chunk_size)
    check_device("ssd", *(t for t in (x, dt, A, B, C, D, initial_state) if t is not None))
    y, final = _ssd_fwd(x, dt, A, B, C, D, initial_state, int(chunk_size))
    return (y, final) if return_final_state else y
