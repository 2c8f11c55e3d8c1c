"""Forward skip-attention kernels (only ``@triton.jit`` code lives here).

Chain: ``_attn_fwd`` (one program per query tile, or a persistent loop over tiles ordered by work)
-> ``_attn_fwd_tile`` (load Q, walk the kept key tiles, epilogue) -> ``_attn_fwd_inner`` (one key tile:
scores, skip test, online softmax, PV).

Scores are kept in log2 units: ``s = q.k * scale * log2(e)``, which is what the skip test compares with the
per-head thresholds, and what ``exp2`` wants.
"""

import triton
import triton.language as tl

LN2 = tl.constexpr(0.6931471805599453)  # log(2), turns a log2-domain LSE into a natural-log one


@triton.jit
def _compact_keep_list(
    Bits,                   # int32 (rows, W): packed keep bits, rows = B * H * QT
    Count,                  # int32 (rows,): number of kept key tiles per row (output)
    Index,                  # int32 (rows, KT): kept key tiles in visit order, first Count entries valid (output)
    Work,                   # int32 (rows,): Count + 1, the work estimate the persistent scheduler sorts by
    KT, W,
    REVERSE: tl.constexpr,  # visit key tiles in descending order
    KT_PAD: tl.constexpr,   # next power of two >= KT
):
    """Expand one row of the bitmask into a compact, ordered list of kept key tiles."""
    row = tl.program_id(0)
    offs = tl.arange(0, KT_PAD)
    if REVERSE:
        tile = KT - 1 - offs
    else:
        tile = offs
    in_range = offs < KT
    tile_safe = tl.where(in_range, tile, 0)
    word = tl.load(Bits + row * W + tile_safe // 32, mask=in_range, other=0)
    keep = (((word >> (tile_safe % 32)) & 1) != 0) & in_range
    keep_i = keep.to(tl.int32)
    pos = tl.cumsum(keep_i, 0) - 1
    tl.store(Index + row * KT + pos, tile_safe, mask=keep)
    count = tl.sum(keep_i, 0)
    tl.store(Count + row, count)
    tl.store(Work + row, count + 1)


@triton.jit
def _load_kv(
    K, V,                                # pointers to this (b, kv head), or tensor descriptors
    b, kv_col, kv_col_v,                 # descriptor coordinates: batch, first column of this kv head
    j, offs_n, offs_d, offs_dv,          # j: key tile, a scalar, or (BLOCK_N,) copies of it (IDX_MODE 3)
    stride_ks, stride_vs, Sk,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr, EVEN_N: tl.constexpr, KV_DESC: tl.constexpr,
):
    """K (BLOCK_N, D) and V (BLOCK_N, DV) of key tile j; padded keys load as 0."""
    if KV_DESC:
        k = K.load([b, j * BLOCK_N, kv_col]).reshape(BLOCK_N, D_PAD)
        v = V.load([b, j * BLOCK_N, kv_col_v]).reshape(BLOCK_N, DV_PAD)
    else:
        keys = j * BLOCK_N + offs_n
        k_ptrs = K + keys[:, None] * stride_ks + offs_d[None, :]
        v_ptrs = V + keys[:, None] * stride_vs + offs_dv[None, :]
        if EVEN_N:
            if D_PAD == HEAD_DIM:
                k = tl.load(k_ptrs)
            else:
                k = tl.load(k_ptrs, mask=offs_d[None, :] < HEAD_DIM, other=0)
            if DV_PAD == HEAD_DIM_V:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=offs_dv[None, :] < HEAD_DIM_V, other=0)
        else:
            k = tl.load(k_ptrs, mask=(keys[:, None] < Sk) & (offs_d[None, :] < HEAD_DIM), other=0)
            v = tl.load(v_ptrs, mask=(keys[:, None] < Sk) & (offs_dv[None, :] < HEAD_DIM_V), other=0)
    return k, v


@triton.jit
def _attn_fwd_inner(
    acc, l_i, m_i, words, row_votes,     # running state: (BM, DV), (BM,), (BM,) log2 units, (W_PAD,), (BM,)
    t, votes_row,                        # visit position; deferred votes of this query tile (DEFER_VOTE)
    gaps_row,                            # this query tile's row of tile gaps (WRITE_GAPS)
    q, q_scale,
    K, V, k_scale_row,
    b, kv_col, kv_col_v,
    stride_ks, stride_vs,
    j, Sk, qk_scale, thr,
    row_valid, offs_m_local, offs_n, offs_d, offs_dv, w_offs,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_N: tl.constexpr,        # Sk % BLOCK_N == 0: no padded keys anywhere
    WRITE_BITS: tl.constexpr,    # run the skip test and accumulate the next state
    WRITE_GAPS: tl.constexpr,    # store the tile's gap, the largest m_tile - m_run over valid rows
    DEFER_VOTE: tl.constexpr,    # keep per-row votes, OR them across rows after the kernel (no barrier here)
    USE_INT8: tl.constexpr,
    UPCAST: tl.constexpr,        # do the dots in fp32 (interpreter: bf16 dots are broken there)
    DOT_PREC: tl.constexpr,      # input_precision of fp32 dots
    KV_DESC: tl.constexpr,       # K and V come through tensor descriptors
    IDX_VEC: tl.constexpr,       # j is a (BLOCK_N,) vector (IDX_MODE 3)
):
    k, v = _load_kv(K, V, b, kv_col, kv_col_v, j, offs_n, offs_d, offs_dv, stride_ks, stride_vs, Sk,
                    HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD, BLOCK_N, EVEN_N, KV_DESC)
    # -- raw scores; s = qk * factor in log2 units is never materialised: the max is taken on qk and
    #    scaled (exact: rounding is monotonic), and exp2 takes one FMA per score --
    if USE_INT8:
        qk = tl.dot(q, tl.trans(k), out_dtype=tl.int32).to(tl.float32)
        k_scale = tl.load(k_scale_row + j)
        if IDX_VEC:
            qk = qk * k_scale[None, :]
            factor = q_scale * qk_scale
        else:
            factor = q_scale * k_scale * qk_scale
    else:
        if UPCAST:
            qk = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision=DOT_PREC)
        else:
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        factor = qk_scale
    if not EVEN_N:
        # padded keys never contribute: one add of a (BLOCK_N,) bias of 0 / -inf
        qk = qk + tl.where(j * BLOCK_N + offs_n < Sk, 0.0, float("-inf"))[None, :]
    m_tile = tl.max(qk, 1) * factor
    # -- skip test: a valid row needs the tile iff m_tile - m_run > threshold (m_run = -inf: always) --
    # The vote and the gap read the same rise, so ``gap > thr`` is the written bit exactly: a max over rows
    # exceeds thr iff some row does.
    rise = m_tile - m_i
    if WRITE_BITS:
        need = (rise > thr) & row_valid
        if DEFER_VOTE:
            # bit t % 32 of each row's word for the window t // 32 of visited tiles; stored every step so
            # the loop has no branch (the same 512 bytes are rewritten until the window moves on)
            slot = t % 32
            row_votes = tl.where(slot == 0, 0, row_votes) | (need.to(tl.int32) << slot)
            tl.store(votes_row + (t // 32) * BLOCK_M + offs_m_local, row_votes)
        else:
            need_any = tl.max(need.to(tl.int32), 0)
            words = words | tl.where(w_offs == j // 32, need_any << (j % 32), 0)
    if WRITE_GAPS:
        # padded rows hold zero queries and must not raise the gap; j may be BLOCK_N copies of the index
        # (IDX_VEC), which all store the same value
        tl.store(gaps_row + j, tl.max(tl.where(row_valid, rise, float("-inf")), 0))
    # -- online softmax --
    m_new = tl.maximum(m_i, m_tile)
    p = tl.math.exp2(tl.fma(qk, factor, -m_new[:, None]))  # one FMA per score, with or without fp fusion
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if UPCAST:
        acc = tl.dot(p, v.to(tl.float32), acc, input_precision=DOT_PREC)
    else:
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
    return acc, l_i, m_new, words, row_votes


@triton.jit
def _attn_fwd_tile(
    tile_id,                                  # (b * H + h) * QT + qt: the row of the skip state
    Q, K, V, Out, Lse, Thr,                   # pointers, or (Q, K, V) tensor descriptors when USE_DESC
    Kp, Vp,                                   # K and V pointers (IDX_MODE 3 loads K/V through pointers)
    QScale, KScale,                           # int8 scales: fp32 (B, H, QT), (B, Hkv, KT)
    Count, Index, WBits,                      # compact keep list (rows,), (rows, KT); next state (rows, W)
    Votes,                                    # int32 (rows, ceil(KT/32), BM) deferred votes (DEFER_VOTE)
    TileGaps,                                 # fp32 (rows, KT) gaps of computed tiles (WRITE_GAPS)
    stride_qb, stride_qs, stride_qh,          # Q (B, Sq, H, D) or its int8 copy
    stride_kb, stride_ks, stride_kh,          # K (B, Sk, Hkv, D) or its int8 copy
    stride_vb, stride_vs, stride_vh,          # V (B, Sk, Hkv, DV)
    stride_ob, stride_os, stride_oh,          # Out (B, Sq, H, DV)
    H, GROUP, Sq, Sk, QT, KT, W,
    qk_scale,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    W_PAD: tl.constexpr,
    DENSE: tl.constexpr, REVERSE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    WRITE_BITS: tl.constexpr, WRITE_GAPS: tl.constexpr, USE_INT8: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    USE_DESC: tl.constexpr, DEFER_VOTE: tl.constexpr, WARP_SPEC: tl.constexpr,
    IDX_MODE: tl.constexpr,
):
    qt = tile_id % QT
    bh = tile_id // QT
    h = bh % H
    b = bh // H
    hk = h // GROUP

    offs_m = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    offs_dv = tl.arange(0, DV_PAD)
    w_offs = tl.arange(0, W_PAD)
    row_valid = offs_m < Sq

    if USE_DESC:
        q = Q.load([b, qt * BLOCK_M, h * HEAD_DIM]).reshape(BLOCK_M, D_PAD)
    else:
        q_ptrs = Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :]
        if EVEN_M and D_PAD == HEAD_DIM:
            q = tl.load(q_ptrs)
        else:
            q = tl.load(q_ptrs, mask=row_valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0)
    if USE_DESC and (IDX_MODE != 3 or DENSE):
        K_base = K
        V_base = V
    else:
        K_base = Kp + b.to(tl.int64) * stride_kb + hk * stride_kh
        V_base = Vp + b.to(tl.int64) * stride_vb + hk * stride_vh
    if USE_INT8:
        q_scale = tl.load(QScale + tile_id)
        k_scale_row = KScale + (b * (H // GROUP) + hk) * KT
    else:
        q_scale = 1.0
        k_scale_row = KScale
    thr = tl.load(Thr + h)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DV_PAD], dtype=tl.float32)
    words = tl.zeros([W_PAD], dtype=tl.int32)
    row_votes = tl.zeros([BLOCK_M], dtype=tl.int32)
    offs_m_local = tl.arange(0, BLOCK_M)
    votes_row = Votes + tile_id.to(tl.int64) * (((KT + 31) // 32) * BLOCK_M)
    gaps_row = TileGaps + tile_id.to(tl.int64) * KT

    if DENSE:
        count = KT
    else:
        count = tl.load(Count + tile_id)
    idx_row = Index + tile_id.to(tl.int64) * KT
    # IDX_MODE 2: indices travel through loop-carried registers, loaded 3 visits ahead
    if IDX_MODE == 2 and not DENSE:
        j_next = tl.load(idx_row, mask=0 < count, other=0)
        j1 = tl.load(idx_row + 1, mask=1 < count, other=0)
        j2 = tl.load(idx_row + 2, mask=2 < count, other=0)
    else:
        j_next = 0
        j1 = 0
        j2 = 0
    for t in tl.range(0, count, warp_specialize=WARP_SPEC):
        if DENSE:
            if REVERSE:
                j = KT - 1 - t
            else:
                j = t
        elif IDX_MODE == 0:
            j = tl.load(idx_row + t)
        elif IDX_MODE == 1:
            # a one-element tensor load, which the software pipeliner can prefetch (scalar loads it cannot)
            j = tl.sum(tl.load(idx_row + t + tl.arange(0, 1)), 0)
        elif IDX_MODE == 3:
            # BLOCK_N copies of the index as one tensor load: the pipeliner prefetches it one stage ahead of
            # the K/V pointer loads it feeds (an indirect load, like paged attention)
            j = tl.load(idx_row + t + tl.zeros([BLOCK_N], dtype=tl.int32))
        else:
            j = j_next
            j_next = j1
            j1 = j2
            j2 = tl.load(idx_row + t + 3, mask=t + 3 < count, other=0)
        acc, l_i, m_i, words, row_votes = _attn_fwd_inner(
            acc, l_i, m_i, words, row_votes, t, votes_row, gaps_row, q, q_scale, K_base, V_base, k_scale_row,
            b, hk * HEAD_DIM, hk * HEAD_DIM_V, stride_ks, stride_vs, j, Sk, qk_scale, thr,
            row_valid, offs_m_local, offs_n, offs_d, offs_dv, w_offs,
            HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD, BLOCK_M, BLOCK_N, EVEN_N, WRITE_BITS, WRITE_GAPS, DEFER_VOTE,
            USE_INT8, UPCAST, DOT_PREC, USE_DESC and (IDX_MODE != 3 or DENSE), IDX_MODE == 3 and not DENSE)

    # -- epilogue: rows with no computed tile get out = 0, lse = -inf --
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = tl.where(empty, float("-inf"), (m_i + tl.math.log2(l_safe)) * LN2)
    o_ptrs = Out + b.to(tl.int64) * stride_ob + h * stride_oh + offs_m[:, None] * stride_os + offs_dv[None, :]
    if EVEN_M and DV_PAD == HEAD_DIM_V:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty))
    else:
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V))
    tl.store(Lse + (b * H + h) * Sq + offs_m, lse, mask=row_valid)
    if WRITE_BITS:
        if not DEFER_VOTE:
            tl.store(WBits + tile_id * W + w_offs, words, mask=w_offs < W)


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse, Thr,
    QScale, KScale,
    Count, Index, WBits, Votes,
    TileGaps,                                 # fp32 (B, H, QT, KT), pre-filled with -inf (WRITE_GAPS)
    Order,                                    # int32 (num_tiles,): tiles by decreasing work (persistent only)
    stride_qb, stride_qs, stride_qh,
    stride_kb, stride_ks, stride_kh,
    stride_vb, stride_vs, stride_vh,
    stride_ob, stride_os, stride_oh,
    B, H, GROUP, Sq, Sk, QT, KT, W,
    qk_scale,
    num_tiles,
    HEAD_DIM: tl.constexpr, HEAD_DIM_V: tl.constexpr,
    D_PAD: tl.constexpr, DV_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    W_PAD: tl.constexpr,
    DENSE: tl.constexpr, REVERSE: tl.constexpr,
    EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
    WRITE_BITS: tl.constexpr, USE_INT8: tl.constexpr,
    WRITE_GAPS: tl.constexpr,                 # report every computed tile's gap (calibration probes)
    UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    USE_DESC: tl.constexpr,                   # TMA tensor descriptors over (B, S, heads * D) views
    DEFER_VOTE: tl.constexpr,                 # skip-test votes reduced across rows by _pack_votes
    WARP_SPEC: tl.constexpr,                  # warp-specialised key loop (producer / consumer warps)
    IDX_MODE: tl.constexpr,                   # how the key loop reads the keep list: 0 scalar load, 1 one-element
                                              # tensor load, 2 loop-carried registers loaded 3 visits ahead
    PERSISTENT: tl.constexpr,                 # loop over Order with a grid of about one program per SM
):
    if USE_DESC:
        # 3-D views (B, S, heads * D): out-of-range rows of a batch load as zeros
        Hkv = H // GROUP
        q_src = tl.make_tensor_descriptor(Q, shape=[B, Sq, H * HEAD_DIM], strides=[stride_qb, stride_qs, 1],
                                          block_shape=[1, BLOCK_M, D_PAD])
        k_src = tl.make_tensor_descriptor(K, shape=[B, Sk, Hkv * HEAD_DIM], strides=[stride_kb, stride_ks, 1],
                                          block_shape=[1, BLOCK_N, D_PAD])
        v_src = tl.make_tensor_descriptor(V, shape=[B, Sk, Hkv * HEAD_DIM_V], strides=[stride_vb, stride_vs, 1],
                                          block_shape=[1, BLOCK_N, DV_PAD])
    else:
        q_src = Q
        k_src = K
        v_src = V
    if PERSISTENT:
        for work in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
            tile_id = tl.load(Order + work)
            _attn_fwd_tile(
                tile_id, q_src, k_src, v_src, Out, Lse, Thr, K, V, QScale, KScale, Count, Index, WBits, Votes,
                TileGaps, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
                H, GROUP, Sq, Sk, QT, KT, W, qk_scale,
                HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD, BLOCK_M, BLOCK_N, W_PAD, DENSE, REVERSE,
                EVEN_M, EVEN_N, WRITE_BITS, WRITE_GAPS, USE_INT8, UPCAST, DOT_PREC, USE_DESC, DEFER_VOTE, WARP_SPEC,
                IDX_MODE)
    else:
        # grid (QT, B * H): consecutive programs share K/V of one head in L2
        tile_id = tl.program_id(1) * QT + tl.program_id(0)
        _attn_fwd_tile(
            tile_id, q_src, k_src, v_src, Out, Lse, Thr, K, V, QScale, KScale, Count, Index, WBits, Votes,
            TileGaps, stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
            stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh,
            H, GROUP, Sq, Sk, QT, KT, W, qk_scale,
            HEAD_DIM, HEAD_DIM_V, D_PAD, DV_PAD, BLOCK_M, BLOCK_N, W_PAD, DENSE, REVERSE,
            EVEN_M, EVEN_N, WRITE_BITS, WRITE_GAPS, USE_INT8, UPCAST, DOT_PREC, USE_DESC, DEFER_VOTE, WARP_SPEC,
            IDX_MODE)


@triton.jit
def _pack_votes(
    Votes,                  # int32 (rows, ceil(KT/32), BM): per-row votes by visit window
    Count, Index,           # compact keep list
    WBits,                  # int32 (rows, W): next state (output, every word written)
    KT, W,
    BLOCK_M: tl.constexpr, W_PAD: tl.constexpr,
    DENSE: tl.constexpr, REVERSE: tl.constexpr,
):
    """OR the deferred votes across the rows of each query tile and scatter them to key-tile bits."""
    row = tl.program_id(0)
    if DENSE:
        count = KT
    else:
        count = tl.load(Count + row)
    slots = tl.arange(0, 32)
    offs_m = tl.arange(0, BLOCK_M)
    w_offs = tl.arange(0, W_PAD)
    words = tl.zeros([W_PAD], dtype=tl.int32)
    base = Votes + row.to(tl.int64) * (((KT + 31) // 32) * BLOCK_M)
    for win in range(0, (count + 31) // 32):
        votes = tl.load(base + win * BLOCK_M + offs_m)                       # (BM,)
        flags = tl.max((votes[:, None] >> slots[None, :]) & 1, 0)             # (32,) any row voted
        t = win * 32 + slots
        live = t < count
        if DENSE:
            if REVERSE:
                j = KT - 1 - t
            else:
                j = t
        else:
            j = tl.load(Index + row.to(tl.int64) * KT + t, mask=live, other=0)
        bit = tl.where(live, flags, 0) << (j % 32)                           # distinct bits: sum == OR
        words += tl.sum(tl.where((j // 32)[:, None] == w_offs[None, :], bit[:, None], 0), 0)
    tl.store(WBits + row * W + w_offs, words, mask=w_offs < W)
