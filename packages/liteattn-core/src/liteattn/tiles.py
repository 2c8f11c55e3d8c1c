"""Tile geometry and the conversion of token ranges to key tiles.

A query tile is ``block_m`` consecutive query rows, a key tile ``block_n`` consecutive keys; the last tile of
each may be partial. Every backend and every skip state uses the same geometry for a given head dim.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["default_tile_shape", "num_tiles", "ranges_to_tile_mask", "tile_rows", "validate_ranges"]


def default_tile_shape(head_dim: int) -> tuple[int, int]:
    """The (block_m, block_n) every backend uses by default.

    128 x 128 for head dims 65 to 128; 128 x 64 above, where a 128-key tile of K and V no longer fits the shared
    memory a Hopper kernel needs for pipelining. Up to 64, query tiles of 64 rows: they skip 9-10% more of a
    video run's work than 128 rows, and a Hopper kernel at that head dim computes three of them per CTA (one per
    warpgroup) at 1.1x the time of a dense call with the skip test on and every tile kept.
    """
    if head_dim > 128:
        return (128, 64)
    return (64, 128) if head_dim <= 64 else (128, 128)


def num_tiles(length: int, block: int) -> int:
    return -(-length // block)


def tile_rows(tiles: Sequence[int] | torch.Tensor, length: int, block: int, device=None) -> torch.Tensor:
    """Int64 indices of the tokens that ``tiles`` cover, tile by tile in the given order (the last tile of the
    sequence clipped to ``length``): ``query[:, tile_rows(tiles, Sq, block_m)]`` keeps those query tiles' rows."""
    tiles = torch.as_tensor(tiles, dtype=torch.int64, device=device).flatten()
    rows = (tiles[:, None] * block + torch.arange(block, device=tiles.device)).flatten()
    return rows[rows < length]


def validate_ranges(ranges: Sequence[int] | torch.Tensor | None, seq_len: int, name: str) -> list[int]:
    """Check a flat ``[s0, e0, s1, e1, ...]`` list of half-open token ranges and return it as ints.

    Ranges must be non-empty, ascending, non-overlapping and inside ``[0, seq_len]``.
    """
    if ranges is None:
        return []
    if isinstance(ranges, torch.Tensor):
        if ranges.dim() != 1 or ranges.dtype.is_floating_point or ranges.dtype == torch.bool:
            raise ValueError(f"{name} must be a flat list of integer token indices; got a tensor of shape "
                             f"{tuple(ranges.shape)} and dtype {ranges.dtype}")
        ranges = ranges.tolist()
    values = list(ranges)
    if any(isinstance(x, bool) or not isinstance(x, int) for x in values):
        raise ValueError(f"{name} must contain integer token indices; got {values!r}")
    if len(values) % 2:
        raise ValueError(f"{name} must have an even length [start0, end0, start1, end1, ...]; got {len(values)} "
                         f"values")
    previous_end = 0
    for i in range(0, len(values), 2):
        start, end = values[i], values[i + 1]
        if not 0 <= start < end <= seq_len:
            raise ValueError(f"{name} range [{start}, {end}) must satisfy 0 <= start < end <= {seq_len} "
                             f"(the key sequence length)")
        if start < previous_end:
            raise ValueError(f"{name} ranges must be sorted and non-overlapping; [{start}, {end}) starts before "
                             f"the previous range ends at {previous_end}")
        previous_end = end
    return values


def ranges_to_tile_mask(ranges: Sequence[int], seq_len: int, block_n: int, device=None) -> torch.Tensor:
    """Boolean (k_tiles,) mask of the key tiles touched by validated token ranges (start floor, end ceil)."""
    mask = torch.zeros(num_tiles(seq_len, block_n), dtype=torch.bool, device=device)
    for start, end in zip(ranges[0::2], ranges[1::2]):
        mask[start // block_n: num_tiles(end, block_n)] = True
    return mask


def ranges_to_token_mask(ranges: Sequence[int], seq_len: int) -> torch.Tensor:
    mask = torch.zeros(seq_len, dtype=torch.bool)
    for start, end in zip(ranges[0::2], ranges[1::2]):
        mask[start:end] = True
    return mask
