"""The reference backend: the specification of liteattn in executable form.

Two functions:

* :func:`reference_forward` runs one :class:`~liteattn.backend.AttentionCall` the way every kernel must:
  an online softmax over the key tiles of each query tile, visited in the call's order, that computes only
  the tiles ``compute_bits`` keeps and applies the skip test to each of them.
* :func:`masked_attention` is the "math path": softmax attention under a dense boolean token mask, used by
  tests to check that the online softmax of :func:`reference_forward` is plain attention over what it kept.

Everything is vectorised over batch, heads and query tiles; the only Python loop walks the key tiles.
"""

from __future__ import annotations

import math

import torch

from .backend import AttentionCall, Capabilities
from .quant import quantize_k, quantize_q
from .skip_state import pack_keep_mask, unpack_keep_mask

__all__ = ["ReferenceBackend", "reference_forward", "masked_attention"]

LOG2E = 1.0 / math.log(2.0)  # scores are kept in log2 units, as kernels using exp2 do
LN2 = math.log(2.0)


def _by_tiles(x: torch.Tensor, block: int, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, S, Hx, D) -> (B, heads, tiles, block, D) in ``dtype``, zero-padded, kv heads repeated for GQA."""
    batch, seq, kv_heads, dim = x.shape
    tiles = -(-seq // block)
    padded = torch.zeros(batch, tiles * block, kv_heads, dim, dtype=dtype, device=x.device)
    padded[:, :seq] = x.to(dtype)
    padded = padded.repeat_interleave(heads // kv_heads, dim=2)
    return padded.view(batch, tiles, block, heads, dim).permute(0, 3, 1, 2, 4)


def _scores_log2(call: AttentionCall, dtype: torch.dtype):
    """Return a function giving, for key tile j, the scores q.k * scale * log2(e): (B, H, q_tiles, bm, bn)."""
    heads, bm, bn = call.num_heads, call.block_m, call.block_n
    if call.use_int8:
        q_int, q_scale = quantize_q(call.q, bm)  # q_scale (B, H, q_tiles)
        k_int, k_scale = quantize_k(call.k, bn)  # k_scale (B, Hkv, k_tiles)
        q_tiles = _by_tiles(q_int, bm, heads, dtype)
        k_tiles = _by_tiles(k_int, bn, heads, dtype)
        k_scale = k_scale.repeat_interleave(heads // call.num_kv_heads, dim=1).to(dtype)
        q_factor = (q_scale.to(dtype) * call.scale * LOG2E)[..., None, None]

        def scores(j: int) -> torch.Tensor:
            exact_int = torch.einsum("bhqmd,bhnd->bhqmn", q_tiles, k_tiles[:, :, j])  # exact: |sum| < 2^24
            return exact_int * q_factor * k_scale[:, :, j, None, None, None]

        return scores
    q_tiles = _by_tiles(call.q, bm, heads, dtype) * (call.scale * LOG2E)
    k_tiles = _by_tiles(call.k, bn, heads, dtype)
    return lambda j: torch.einsum("bhqmd,bhnd->bhqmn", q_tiles, k_tiles[:, :, j])


def reference_forward(call: AttentionCall, *, upcast: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``call``: returns ``(out (B, Sq, H, Dv) in q's dtype, lse (B, H, Sq) float32)``.

    Fills ``call.write_bits`` when it is given. ``upcast=True`` computes in float64 (the golden result of
    parity tests); otherwise float32.
    """
    dtype = torch.float64 if upcast else torch.float32
    batch, q_len, heads, k_len = call.batch, call.q_len, call.num_heads, call.k_len
    bm, bn, q_tiles, k_tiles = call.block_m, call.block_n, call.q_tiles, call.k_tiles
    device = call.q.device

    scores_of_tile = _scores_log2(call, dtype)
    v_tiles = _by_tiles(call.v, bn, heads, dtype)  # (B, H, k_tiles, bn, Dv)
    row_is_valid = (torch.arange(q_tiles * bm, device=device) < q_len).view(q_tiles, bm)
    key_is_valid = (torch.arange(k_tiles * bn, device=device) < k_len).view(k_tiles, bn)
    if call.compute_bits is None:
        compute = torch.ones(batch, heads, q_tiles, k_tiles, dtype=torch.bool, device=device)
    else:
        compute = unpack_keep_mask(call.compute_bits, k_tiles)
    threshold = call.thresholds.to(device=device, dtype=dtype).view(1, heads, 1, 1)

    # Online softmax state per query row, in log2 units: running max m, denominator l, numerator acc.
    m = torch.full((batch, heads, q_tiles, bm), -math.inf, dtype=dtype, device=device)
    l = torch.zeros_like(m)
    acc = torch.zeros(batch, heads, q_tiles, bm, call.v.shape[-1], dtype=dtype, device=device)
    needed = torch.zeros_like(compute)

    visit_order = range(k_tiles - 1, -1, -1) if call.reverse else range(k_tiles)
    for j in visit_order:
        on = compute[..., j, None]  # (B, H, q_tiles, 1): does this query tile compute key tile j?
        s = scores_of_tile(j).masked_fill(~key_is_valid[j], -math.inf)
        tile_max = s.amax(dim=-1)  # finite: every key tile holds at least one valid key

        # The skip test: a row needs the tile when its max rises above the running max by more than the
        # threshold; the first computed tile meets m = -inf and is always needed.
        row_needs = (tile_max - m > threshold) & row_is_valid
        needed[..., j] = on[..., 0] & row_needs.any(dim=-1)
        if call.tile_gaps is not None:
            gap = (tile_max - m).masked_fill(~row_is_valid, -math.inf).amax(dim=-1)
            call.tile_gaps[..., j] = torch.where(on[..., 0], gap, -math.inf).float()

        m_new = torch.where(on, torch.maximum(m, tile_max), m)
        rescale = torch.where(m == -math.inf, 0.0, torch.exp2(m - m_new))
        p = torch.where(on[..., None], torch.exp2(s - m_new[..., None]), 0.0)
        l = rescale * l + p.sum(dim=-1)
        acc = rescale[..., None] * acc + p @ v_tiles[:, :, j, None]
        m = m_new

    # Rows that computed no key: output 0 and lse = -inf, never NaN.
    has_keys = l > 0
    out = torch.where(has_keys[..., None], acc / torch.where(has_keys, l, 1.0)[..., None], 0.0)
    lse = torch.where(has_keys, (m + torch.log2(torch.where(has_keys, l, 1.0))) * LN2, -math.inf)

    if call.write_bits is not None:
        call.write_bits.copy_(pack_keep_mask(needed))
    out = out.flatten(2, 3)[:, :, :q_len].permute(0, 2, 1, 3).to(call.q.dtype)
    return out, lse.flatten(2, 3)[:, :, :q_len].float()


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     mask: torch.Tensor | None = None, *, upcast: bool = True):
    """Softmax attention of BSHD tensors under a bool (B, H, Sq, Sk) mask (True = attend).

    ``upcast=True`` computes in float64; ``upcast=False`` in the inputs' dtype, which is the error a
    low-precision PyTorch implementation makes (FA3's yardstick). Fully masked rows give 0 and lse -inf.
    Returns ``(out (B, Sq, H, Dv), lse (B, H, Sq) float32)``.
    """
    dtype = torch.float64 if upcast else q.dtype
    groups = q.shape[2] // k.shape[2]
    qh = q.to(dtype).transpose(1, 2)
    kh = k.to(dtype).repeat_interleave(groups, dim=2).transpose(1, 2)
    vh = v.to(dtype).repeat_interleave(groups, dim=2).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf)
    lse = torch.logsumexp(s.float() if not upcast else s, dim=-1)
    p = torch.where(lse[..., None] == -math.inf, 0.0, torch.exp(s - lse[..., None].to(dtype))).to(dtype)
    out = (p @ vh).transpose(1, 2)
    return out.to(q.dtype), lse.float()


class ReferenceBackend:
    """Readable PyTorch; any device, fp16/bf16/fp32, any head dim, INT8 simulated exactly."""

    name = "reference"
    priority = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(
            devices=frozenset({"cpu", "cuda"}),
            dtypes=frozenset({torch.float16, torch.bfloat16, torch.float32}),
            head_dims=frozenset(range(1, 513)),
            int8=True,
            writes_state=True,
            tile_gaps=True,
        )

    def unavailable_reason(self) -> str | None:
        return None

    def unsupported_reason(self, call: AttentionCall) -> str | None:
        return None

    def forward(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        return reference_forward(call)
