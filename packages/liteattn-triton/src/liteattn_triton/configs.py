"""Launch configurations: (num_warps, num_stages) per problem class, and which tile shapes are supported.

No autotuning at call time: the skip state fixes the tile geometry, and a benchmark-picked table keeps the
first call of every layer free of tuning runs (and works in the interpreter, where autotune with more than
one config fails).
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD_DIMS = frozenset({32, 64, 96, 128, 256})
BLOCK_SIZES = frozenset({16, 32, 64, 128})
MAX_K_TILES = 1 << 16  # the compaction kernel holds one row of key tiles in registers

# Defaults picked on an H100 (bench/NOTES-triton.md has the measurements behind each)
DEFER_VOTE_DEFAULT = True  # reduce skip-test votes across rows after the kernel, not per tile
PERSISTENT_DEFAULT = False  # persistent grid over query tiles ordered by kept-tile count (sparse calls)
WARP_SPEC_DEFAULT = False  # Triton warp specialisation of the key loop
# keep-list reads in the key loop: 0 scalar load + TMA K/V, 1 one-element tensor load, 2 registers 3 visits
# ahead, 3 a (BLOCK_N,) broadcast load feeding pointer K/V loads (pipelined as an indirect load)
IDX_MODE_DEFAULT = 0


@dataclass(frozen=True)
class LaunchConfig:
    num_warps: int
    num_stages: int


def pick_config(head_dim: int, block_m: int, block_n: int, use_int8: bool) -> LaunchConfig:
    """Warps and pipeline depth for one tile shape (measured on an H100, see bench/NOTES-triton.md)."""
    if block_m * block_n < 128 * 64:
        return LaunchConfig(num_warps=4, num_stages=2)
    if head_dim > 128:
        return LaunchConfig(num_warps=8, num_stages=2)
    if head_dim <= 64:
        return LaunchConfig(num_warps=8 if block_m >= 128 else 4, num_stages=3)
    return LaunchConfig(num_warps=8, num_stages=3)


def keep_list_stages(dense_stages: int) -> int:
    """Pipeline depth for the keep-list loop that gives K/V the prefetch distance of the dense loop.

    The tile index is a load that feeds the K/V loads, and Triton's pipeliner splits ``num_stages - 1``
    between the two levels of that chain: at the dense loop's 3 stages K/V get one buffer of lookahead
    instead of two (TTGIR: ``memdesc<2x128x128>`` against the dense loop's ``memdesc<3x128x128>``, Triton 3.6
    and 3.9), which cost ~20% on an H100. ``2 * s - 1`` stages restore the dense loop's K/V buffers
    (229.4 KB of shared memory at 128 x 128 x 128, as the dense kernel).
    """
    return 2 * dense_stages - 1


def unsupported_tiles(head_dim: int, block_m: int, block_n: int) -> str | None:
    """Why a tile shape is refused (it must be a power of two in 16..128, and fit shared memory), or None."""
    for name, value in (("block_m", block_m), ("block_n", block_n)):
        if value not in BLOCK_SIZES:
            return f"{name}={value} is not one of {sorted(BLOCK_SIZES)}"
    if head_dim > 128 and block_n > 64:
        return f"head_dim={head_dim} needs block_n <= 64 (shared memory); got block_n={block_n}"
    return None
