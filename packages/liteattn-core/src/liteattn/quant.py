"""INT8 quantisation of Q and K (``use_int8=True``): the specification backends fuse into their kernels.

Q gets one scale per (batch, head, query tile). K is first smoothed by its per-channel mean over the
sequence, which shifts every score of a query row by the same amount (``q . mean``) and so leaves the
softmax unchanged while removing the shared offset that would waste int8 range; it then gets one scale per
(batch, kv head, key tile). ``q_int8 @ k_int8^T`` is exact in int32 (|sum| <= 127^2 * 256 < 2^31) and is
dequantised with ``q_scale * k_scale``.
"""

from __future__ import annotations

import torch

__all__ = ["quantize_q", "quantize_k", "quantize_per_tile"]

_INT8_MAX = 127.0


def quantize_per_tile(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation of x (B, S, H, D) with one scale per (B, H, tile of ``block`` rows).

    Returns ``(x_int8 (B, S, H, D), scale (B, H, tiles) float32)``.
    """
    batch, seq, heads, dim = x.shape
    tiles = -(-seq // block)
    padded = torch.zeros(batch, tiles * block, heads, dim, dtype=torch.float32, device=x.device)
    padded[:, :seq] = x.float()
    grouped = padded.view(batch, tiles, block, heads, dim)
    amax = grouped.abs().amax(dim=(2, 4))  # (B, tiles, H)
    scale = torch.where(amax > 0, amax / _INT8_MAX, torch.ones_like(amax))
    quantised = torch.round(grouped / scale[:, :, None, :, None]).clamp_(-_INT8_MAX, _INT8_MAX)
    x_int8 = quantised.view(batch, tiles * block, heads, dim)[:, :seq].to(torch.int8)
    return x_int8, scale.permute(0, 2, 1).contiguous()


def quantize_q(q: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return quantize_per_tile(q, block_m)


def quantize_k(k: torch.Tensor, block_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    smoothed = k.float() - k.float().mean(dim=1, keepdim=True)
    return quantize_per_tile(smoothed, block_n)
