"""Keep masks for the benchmark: random tile masks, and masks shaped like video self-attention.

A keep mask is bool (B, H, q_tiles, k_tiles); ``True`` means "compute this key tile for this query tile".
``random`` and ``video`` keep ``round((1 - sparsity) * k_tiles)`` tiles in every query tile (at least one), the
diagonal tile among them: the work per query tile is uniform. ``video-uneven`` is what real skip states look
like to a scheduler: sparsity differs by head (spread around the requested mean) and kept tiles are chosen per
head over all pairs, so the number of kept tiles differs from one query tile to the next.
"""

from __future__ import annotations

import math

import torch

from ..testing import random_keep_mask, video_qkv
from ..tiles import num_tiles

__all__ = ["MASK_KINDS", "flex_block_mask", "keep_mask", "mask_sparsity", "video_dims", "video_keep_mask"]

MASK_KINDS = ("random", "video", "video-uneven")

# Latent video shapes (frames, height, width) of the models the default benchmark shapes come from.
_KNOWN_DIMS = {32760: (21, 30, 52), 75600: (21, 45, 80), 32768: (32, 32, 32)}


def video_dims(seq_len: int) -> tuple[int, int, int]:
    """A (frames, height, width) with ``frames * height * width == seq_len``: Wan's latent grids for the
    default shapes, otherwise the most cube-like factorisation with frames <= height <= width."""
    if seq_len in _KNOWN_DIMS:
        return _KNOWN_DIMS[seq_len]
    best, best_cost = (1, 1, seq_len), math.inf
    for frames in range(1, int(round(seq_len ** (1 / 3))) + 2):
        if seq_len % frames:
            continue
        rest = seq_len // frames
        for height in range(frames, int(math.isqrt(rest)) + 1):
            if rest % height == 0:
                width = rest // height
                cost = math.log(width / frames)
                if cost < best_cost:
                    best, best_cost = (frames, height, width), cost
    return best


def _keep_count(k_tiles: int, sparsity: float) -> int:
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity}")
    return max(1, round((1.0 - sparsity) * k_tiles))


def _diagonal(q_tiles: int, k_tiles: int) -> torch.Tensor:
    return torch.arange(q_tiles) * k_tiles // max(q_tiles, 1)


def video_keep_mask(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, sparsity: float, *,
                    block_m: int = 128, block_n: int = 128, seed: int = 0, num_patterns: int = 4,
                    uneven: bool = False) -> torch.Tensor:
    """Keep the ``1 - sparsity`` key tiles with the largest block-pooled score ``mean(q_tile) . mean(k_tile)``
    of :func:`liteattn.testing.video_qkv` (tokens attend to their 3-D neighbourhood), per query tile.

    The workload is generated at ``video_dims(k_len)`` with one head; ``num_patterns`` seeds give distinct
    patterns, assigned to heads in turn. Queries use the first ``q_len`` positions.

    ``uneven=True``: head h drops a fraction spread linearly around ``sparsity`` (mean ``sparsity``, from
    ``sparsity - d`` to ``sparsity + d`` with ``d = min(sparsity, 1 - sparsity) / 2``), choosing the pairs with the
    largest scores over the whole (q_tiles, k_tiles) grid, so rows keep different numbers of tiles.
    """
    frames, height, width = video_dims(k_len)
    q_tiles, k_tiles = num_tiles(q_len, block_m), num_tiles(k_len, block_n)
    keep = _keep_count(k_tiles, sparsity)
    diagonal = _diagonal(q_tiles, k_tiles)
    patterns, score_maps = [], []
    for pattern in range(min(num_patterns, heads)):
        q, k, _ = video_qkv(1, frames, height, width, heads=1, head_dim=head_dim, seed=seed + pattern,
                            step=pattern + 1, num_steps=num_patterns)
        q_pooled = _pool(q[0, :q_len, 0], block_m)  # (q_tiles, D)
        k_pooled = _pool(k[0, :, 0], block_n)  # (k_tiles, D)
        scores = q_pooled @ k_pooled.T
        scores[torch.arange(q_tiles), diagonal] = torch.inf
        score_maps.append(scores)
        top = scores.topk(keep, dim=-1).indices
        patterns.append(torch.zeros(q_tiles, k_tiles, dtype=torch.bool).scatter_(-1, top, True))
    if uneven:
        spread = min(sparsity, 1.0 - sparsity) / 2
        by_head = []
        for h in range(heads):
            head_sparsity = sparsity + spread * ((2 * h / (heads - 1) - 1) if heads > 1 else 0.0)
            count = max(q_tiles, round((1.0 - head_sparsity) * q_tiles * k_tiles))
            flat = score_maps[h % len(score_maps)].flatten()
            chosen = torch.zeros_like(flat, dtype=torch.bool)
            chosen[flat.topk(count).indices] = True
            by_head.append(chosen.view(q_tiles, k_tiles))
        by_head = torch.stack(by_head)
    else:
        by_head = torch.stack([patterns[h % len(patterns)] for h in range(heads)])
    return by_head.unsqueeze(0).expand(batch, -1, -1, -1).contiguous()


def _pool(x: torch.Tensor, block: int) -> torch.Tensor:
    tiles = num_tiles(x.shape[0], block)
    padded = torch.zeros(tiles * block, x.shape[1], dtype=torch.float32)
    padded[: x.shape[0]] = x.float()
    counts = torch.full((tiles, 1), float(block))
    counts[-1] = x.shape[0] - (tiles - 1) * block
    return padded.view(tiles, block, -1).sum(1) / counts


def keep_mask(kind: str, batch: int, heads: int, q_len: int, k_len: int, head_dim: int, sparsity: float, *,
              block_m: int = 128, block_n: int = 128, seed: int = 0, device="cpu") -> torch.Tensor:
    """A keep mask of ``kind`` (one of :data:`MASK_KINDS`) at tile ``sparsity``, on ``device``."""
    q_tiles, k_tiles = num_tiles(q_len, block_m), num_tiles(k_len, block_n)
    if kind == "random":
        _keep_count(k_tiles, sparsity)
        mask = random_keep_mask(batch, heads, q_tiles, k_tiles, sparsity, seed=seed)
    elif kind in ("video", "video-uneven"):
        _keep_count(k_tiles, sparsity)
        mask = video_keep_mask(batch, heads, q_len, k_len, head_dim, sparsity, block_m=block_m, block_n=block_n,
                               seed=seed, uneven=kind == "video-uneven")
    else:
        raise ValueError(f"mask kind must be one of {MASK_KINDS}; got {kind!r}")
    return mask.to(device)


def mask_sparsity(mask: torch.Tensor) -> float:
    """Fraction of (query tile, key tile) pairs a keep mask drops."""
    return 1.0 - mask.float().mean().item()


def flex_block_mask(mask: torch.Tensor, q_len: int, k_len: int, block_m: int = 128, block_n: int = 128, *,
                    with_mask_mod: bool = False):
    """The FlexAttention ``BlockMask`` that computes exactly the tiles of a keep mask.

    Kept tiles are passed as *full* blocks, the fastest form Flex has: compiled Flex evaluates no
    ``mask_mod`` inside them and masks keys past ``k_len`` itself from ``seq_lengths``. Eager (uncompiled)
    Flex ignores the block structure and applies only ``mask_mod``; ``with_mask_mod=True`` attaches a
    tile-lookup ``mask_mod`` so that eager Flex computes the same attention (tests use it on CPU).
    """
    from torch.nn.attention.flex_attention import BlockMask

    counts = mask.sum(-1, dtype=torch.int32)
    # kept tile indices first, ascending (stable sort of "dropped" flags)
    indices = (~mask).to(torch.int8).argsort(dim=-1, stable=True).to(torch.int32)
    mask_mod = None
    if with_mask_mod:
        def mask_mod(b, h, q_idx, kv_idx):
            return mask[b, h, q_idx // block_m, kv_idx // block_n]
    return BlockMask.from_kv_blocks(torch.zeros_like(counts), torch.zeros_like(indices), counts.contiguous(),
                                    indices.contiguous(), BLOCK_SIZE=(block_m, block_n), mask_mod=mask_mod,
                                    seq_lengths=(q_len, k_len))
