"""INT8 quantisation of Q and K (only ``@triton.jit`` code lives here).

Q: one symmetric scale per (batch, head, query tile): ``scale = max|q| / 127``, ``q8 = round(q / scale)``.
K: smoothed by its per-channel mean over the sequence (``k - mean_s(k)``, which shifts every score of a row
by the same amount and so changes neither the softmax nor the skip test), then one scale per
(batch, kv head, key tile). Both follow ``liteattn.quant`` bit for bit: the same fp32 division by 127 and
round-half-to-even, so the int8 tensors equal the reference's.
"""

import triton
import triton.language as tl

INT8_MAX = tl.constexpr(127.0) # symmetric int8 range [-127, 127]


@triton.jit
def _round_half_even(x):
    # torch.round semantics without libdevice (the interpreter has none)
    r = tl.floor(x + 0.5)
    return tl.where(((r - x) == 0.5) & ((r - 2.0 * tl.floor(r * 0.5)) != 0.0), r - 1.0, r)


@triton.jit
def _quantize_q(
    Q,                       # (B, Sq, H, D) fp16/bf16/fp32
    Q8,                      # int8 (B, Sq, H, D) contiguous (output)
    QScale,                  # fp32 (B, H, QT) (output)
    stride_qb, stride_qs, stride_qh,
    H, Sq, QT,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
):
    qt = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    offs_m = qt * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_m[:, None] < Sq) & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_m[:, None] * stride_qs + offs_d[None, :],
                mask=mask, other=0).to(tl.float32)
    amax = tl.max(tl.max(tl.abs(q), 1), 0)
    # IEEE divisions (div_rn), as torch does: Triton's default fp32 '/' is approximate on GPUs
    scale = tl.where(amax > 0, tl.math.div_rn(amax, INT8_MAX), 1.0)
    q8 = _round_half_even(tl.math.div_rn(q, scale))
    q8 = tl.minimum(tl.maximum(q8, -127.0), 127.0).to(tl.int8)
    q8_ptrs = Q8 + ((b.to(tl.int64) * Sq + offs_m[:, None]) * H + h) * HEAD_DIM + offs_d[None, :]
    tl.store(q8_ptrs, q8, mask=mask)
    tl.store(QScale + bh * QT + qt, scale)


@triton.jit
def _quantize_k(
    K,                       # (B, Sk, Hkv, D)
    KMean,                   # fp32 (B, Hkv, D)
    K8,                      # int8 (B, Sk, Hkv, D) contiguous (output)
    KScale,                  # fp32 (B, Hkv, KT) (output)
    stride_kb, stride_ks, stride_kh,
    Hkv, Sk, KT,
    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_N: tl.constexpr,
):
    kt = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // Hkv
    h = bh % Hkv
    offs_n = kt * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_n[:, None] < Sk) & (offs_d[None, :] < HEAD_DIM)
    k = tl.load(K + b.to(tl.int64) * stride_kb + h * stride_kh + offs_n[:, None] * stride_ks + offs_d[None, :],
                mask=mask, other=0).to(tl.float32)
    kmean = tl.load(KMean + bh * HEAD_DIM + offs_d, mask=offs_d < HEAD_DIM, other=0.0)
    k = tl.where(mask, k - kmean[None, :], 0.0)
    amax = tl.max(tl.max(tl.abs(k), 1), 0)
    scale = tl.where(amax > 0, tl.math.div_rn(amax, INT8_MAX), 1.0)
    k8 = _round_half_even(tl.math.div_rn(k, scale))
    k8 = tl.minimum(tl.maximum(k8, -127.0), 127.0).to(tl.int8)
    k8_ptrs = K8 + ((b.to(tl.int64) * Sk + offs_n[:, None]) * Hkv + h) * HEAD_DIM + offs_d[None, :]
    tl.store(k8_ptrs, k8, mask=mask)
    tl.store(KScale + bh * KT + kt, scale)
