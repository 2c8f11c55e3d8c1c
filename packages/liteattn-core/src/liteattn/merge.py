"""Combining attentions over disjoint key sets through their log-sum-exps."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["merge_attention"]


def merge_attention(outputs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]):
    """Merge partial attentions ``outputs[i]`` (B, Sq, H, Dv) with ``lses[i]`` (B, H, Sq) computed over
    disjoint key sets into the attention over their union: returns ``(out, lse)``.

    Each part is weighted by ``exp(lse_i - lse)``; a part with lse = -inf (no key) weighs 0, and a row with no
    key in any part returns 0 and -inf.
    """
    if len(outputs) == 0 or len(outputs) != len(lses):
        raise ValueError(f"outputs and lses must be non-empty and of equal length; got {len(outputs)} and "
                         f"{len(lses)}")
    shape = outputs[0].shape
    for i, (out, lse) in enumerate(zip(outputs, lses)):
        if out.dim() != 4 or out.shape != shape:
            raise ValueError(f"outputs[{i}] must have shape {tuple(shape)} (B, Sq, H, Dv); got {tuple(out.shape)}")
        if lse.shape != (shape[0], shape[2], shape[1]):
            raise ValueError(f"lses[{i}] must have shape {(shape[0], shape[2], shape[1])} (B, H, Sq); "
                             f"got {tuple(lse.shape)}")
    stacked_lse = torch.stack([lse.float() for lse in lses])  # (parts, B, H, Sq)
    total = torch.logsumexp(stacked_lse, dim=0)
    safe_total = torch.where(total == -torch.inf, 0.0, total)
    weights = torch.exp(stacked_lse - safe_total)  # exp(-inf) = 0 for empty parts
    weights = weights.permute(0, 1, 3, 2).unsqueeze(-1)  # (parts, B, Sq, H, 1)
    merged = sum(w * out.float() for w, out in zip(weights, outputs))
    return merged.to(outputs[0].dtype), total
