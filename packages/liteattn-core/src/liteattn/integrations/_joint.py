"""Joint text+video attention split into a skipping video->video part and dense text parts."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..merge import merge_attention

__all__ = ["dense_attention_lse", "joint_attention"]

_CHUNK_ELEMENTS = 1 << 27  # fp32 score elements per chunk of the dense video->text part (512 MB)


def dense_attention_lse(q, k, v, key_mask=None, scale=None):
    """Attention of (B, Sq, H, D) queries over a short key set, in fp32: ``(out, lse)``.

    ``key_mask``: bool (B, Sk), True = attend. Rows with no key get out 0 and lse -inf. Queries are processed in
    chunks so that the (B, H, chunk, Sk) scores stay small.
    """
    batch, q_len, heads, _ = q.shape
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    groups = heads // k.shape[2]
    kh = k.float().repeat_interleave(groups, 2).transpose(1, 2)  # (B, H, Sk, D)
    vh = v.float().repeat_interleave(groups, 2).transpose(1, 2)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, batch * heads * k.shape[1]))
    outs, lses = [], []
    for start in range(0, q_len, chunk):
        qh = q[:, start:start + chunk].float().transpose(1, 2)  # (B, H, c, D)
        scores = qh @ kh.transpose(-1, -2) * scale
        if key_mask is not None:
            scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, c)
        probs = torch.exp(scores - torch.where(lse == -math.inf, 0.0, lse)[..., None])
        outs.append((probs @ vh).transpose(1, 2))
        lses.append(lse)
    return torch.cat(outs, 1).to(q.dtype), torch.cat(lses, -1)


def key_padding_mask(attn_mask, batch: int, k_len: int):
    """A bool (B, Sk) key mask from an attention mask that only masks keys (same for every query and head),
    or None when there is no mask; raises ValueError for masks that depend on the query or are not boolean."""
    if attn_mask is None:
        return None
    if attn_mask.dtype != torch.bool:
        raise ValueError("only boolean key-padding masks are supported")
    mask = attn_mask
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[1] != 1 or mask.shape[2] != 1:
        raise ValueError(f"the mask depends on the head or the query (shape {tuple(attn_mask.shape)})")
    return mask[:, 0, 0, :].expand(batch, k_len)


def joint_attention(lite, q, k, v, *, text_len: int, text_first: bool, key_mask=None, scale=None):
    """Self-attention over concatenated [text, video] (``text_first``) or [video, text] tokens, BSHD.

    video->video runs through ``lite`` (a :class:`~liteattn.LiteAttention`, skipping), video->text densely; the two
    are merged through their LSEs (:func:`liteattn.merge_attention`). Text queries attend to every key densely.
    ``key_mask`` (B, S) bool masks keys (text padding); video keys must all be unmasked.
    """
    seq = q.shape[1]
    video = slice(text_len, seq) if text_first else slice(0, seq - text_len)
    text = slice(0, text_len) if text_first else slice(seq - text_len, seq)
    if key_mask is not None and not bool(key_mask[:, video].all()):
        raise ValueError("video keys are masked; the joint split only supports masks on text keys")
    q_v, k_v, v_v = q[:, video], k[:, video], v[:, video]
    out_vv, lse_vv = lite(q_v, k_v, v_v, scale, return_softmax_lse=True)
    if text_len == 0:
        return out_vv
    text_mask = None if key_mask is None else key_mask[:, text]
    out_vt, lse_vt = dense_attention_lse(q_v, k[:, text], v[:, text], text_mask, scale)
    out_v, _ = merge_attention([out_vv, out_vt.to(out_vv.dtype)], [lse_vv, lse_vt])
    # text queries: dense over every key (short in the query dimension)
    sdpa_mask = None if key_mask is None else key_mask[:, None, None, :]
    groups = q.shape[2] // k.shape[2]
    kh, vh = (x.repeat_interleave(groups, 2).transpose(1, 2) for x in (k, v))
    out_t = F.scaled_dot_product_attention(q[:, text].transpose(1, 2), kh, vh, attn_mask=sdpa_mask,
                                           scale=scale).transpose(1, 2)
    parts = [out_t, out_v] if text_first else [out_v, out_t]
    return torch.cat([p.to(q.dtype) for p in parts], dim=1)
