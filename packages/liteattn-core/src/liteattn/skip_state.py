"""The skip state: which key tiles each query tile computes at the next call.

Basics
------
A :class:`SkipState` belongs to one attention layer. At call *t* a backend reads ``read_bits`` (tiles to
compute) and writes ``write_bits`` (tiles the skip test found useful); call *t + 1* reads what call *t* wrote.
Both buffers are packed keep-bitmasks of shape (batch, heads, q_tiles, words), ``words = ceil(k_tiles / 32)``:
bit ``j % 32`` of word ``j // 32`` (least significant first) stands for key tile ``j``.

Details
-------
A bitmask costs one bit per (query tile, key tile) whatever the visit order, is scanned by a kernel with a
popcount, and expands to a dense mask (or a FlexAttention ``BlockMask``) with two tensor ops::

    keep = unpack_keep_mask(state.read_bits, k_tiles)          # (B, H, q_tiles, k_tiles) bool
    token_mask = keep.repeat_interleave(block_m, 2)[:, :, :Sq].repeat_interleave(block_n, 3)[..., :Sk]

The state is indexed by query heads (GQA shares K/V across heads, not skip decisions). Key tiles are visited
in ascending order on even calls and descending order on odd calls, so that the tiles a row meets first,
which are always kept, alternate between the two ends of the sequence.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch

from .tiles import default_tile_shape, num_tiles, tile_rows

__all__ = ["SkipState", "ShapeKey", "check_query_tiles", "pack_keep_mask", "unpack_keep_mask"]

# Bit j of a word weighs 2^j, bit 31 -2^31: a sum of distinct weights is the word as an int32.
_BIT_WEIGHTS = torch.tensor([1 << i for i in range(31)] + [-(1 << 31)], dtype=torch.int64)


def pack_keep_mask(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool (..., k_tiles) mask into int32 (..., ceil(k_tiles / 32)) words, LSB first."""
    k_tiles = mask.shape[-1]
    words = num_tiles(k_tiles, 32)
    padded = torch.zeros(*mask.shape[:-1], words * 32, dtype=torch.int64, device=mask.device)
    padded[..., :k_tiles] = mask.to(torch.int64)
    bits = padded.view(*mask.shape[:-1], words, 32) * _BIT_WEIGHTS.to(mask.device)
    return bits.sum(-1).to(torch.int32)


def unpack_keep_mask(bits: torch.Tensor, num_k_tiles: int) -> torch.Tensor:
    """Inverse of :func:`pack_keep_mask`: int32 (..., words) to bool (..., num_k_tiles)."""
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1
    return unpacked.flatten(-2)[..., :num_k_tiles].bool()


def check_query_tiles(tiles, q_tiles: int) -> torch.Tensor:
    """``tiles`` as int64 indices on the CPU, checked to be strictly increasing query tiles in [0, q_tiles)."""
    index = torch.as_tensor(tiles).flatten()
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"query tiles must be integer indices; got dtype {index.dtype}")
    index = index.to(device="cpu", dtype=torch.int64)
    if index.numel() == 0 or index[0] < 0 or index[-1] >= q_tiles or (index.diff() <= 0).any():
        raise ValueError(f"query tiles must be strictly increasing indices in [0, {q_tiles}); "
                         f"got {index.tolist()}")
    return index


@dataclass(frozen=True)
class ShapeKey:
    """What a skip state was built for; a call with another batch size or sequence length resets it."""

    batch: int
    heads: int
    q_len: int
    k_len: int
    head_dim: int
    device: torch.device

    def __str__(self) -> str:
        return (f"batch={self.batch}, heads={self.heads}, q_len={self.q_len}, k_len={self.k_len}, "
                f"head_dim={self.head_dim}, device={self.device}")


class SkipState:
    """Double-buffered keep-bitmask of one attention layer, plus its geometry and call counter.

    ``block_m`` / ``block_n`` default to :func:`liteattn.default_tile_shape` of the head dim seen first.
    """

    def __init__(self, block_m: int | None = None, block_n: int | None = None):
        for name, value in (("block_m", block_m), ("block_n", block_n)):
            if value is not None and (value < 16 or value & (value - 1)):
                raise ValueError(f"{name} must be a power of two >= 16; got {value}")
        self._requested_blocks = (block_m, block_n)
        self.block_m: int | None = block_m
        self.block_n: int | None = block_n
        self.shape_key: ShapeKey | None = None
        self.call_count = 0
        self.last_sparsity = None
        self._buffers: torch.Tensor | None = None
        self._warned_reset = False

    @property
    def last_sparsity(self) -> float | None:
        """Fraction of key tiles the last call skipped. Calls record it on the device without waiting;
        reading it waits for that call."""
        return None if self._last_sparsity is None else float(self._last_sparsity)

    @last_sparsity.setter
    def last_sparsity(self, value) -> None:
        self._last_sparsity = value

    # -- geometry -----------------------------------------------------------------------------------
    @property
    def q_tiles(self) -> int:
        return num_tiles(self.shape_key.q_len, self.block_m)

    @property
    def k_tiles(self) -> int:
        return num_tiles(self.shape_key.k_len, self.block_n)

    @property
    def reverse(self) -> bool:
        """Visit direction of the next call: descending key tiles on odd calls."""
        return self.call_count % 2 == 1

    # -- buffers ------------------------------------------------------------------------------------
    @property
    def read_bits(self) -> torch.Tensor:
        """Tiles the next call computes (before must-do / must-skip are applied)."""
        self._require_initialised()
        return self._buffers[self.call_count % 2]

    @property
    def write_bits(self) -> torch.Tensor:
        """Buffer the next call's backend fills with the tiles its skip test keeps."""
        self._require_initialised()
        return self._buffers[(self.call_count + 1) % 2]

    def prepare(self, key: ShapeKey) -> None:
        """Make the state fit ``key``: first use allocates it, a changed shape resets it with a warning."""
        if self.shape_key == key:
            return
        if self.shape_key is not None and not self._warned_reset:
            warnings.warn(f"liteattn: input shape changed from ({self.shape_key}) to ({key}); the skip state "
                          f"is reset to compute every tile", stacklevel=3)
            self._warned_reset = True
        self.block_m, self.block_n = self.tile_shape(key.head_dim)
        self.shape_key = key
        self._allocate()

    def tile_shape(self, head_dim: int) -> tuple[int, int]:
        """The (block_m, block_n) this state takes for calls of ``head_dim``: the requested sizes, else the
        head dim's defaults."""
        default_m, default_n = default_tile_shape(head_dim)
        return self._requested_blocks[0] or default_m, self._requested_blocks[1] or default_n

    def advance(self, always_keep: torch.Tensor | None = None) -> None:
        """Finish a call: tiles in ``always_keep`` (packed words, broadcastable) join what the backend wrote,
        and the written buffer becomes the one the next call reads."""
        if always_keep is not None:
            self.write_bits.bitwise_or_(always_keep)
        self.call_count += 1

    def clone(self) -> SkipState:
        """An independent copy, buffers included: calls on it never touch this state (calibration, tests)."""
        return copy.deepcopy(self)

    def select_query_tiles(self, tiles) -> SkipState:
        """An independent state holding only the rows of query tiles ``tiles`` (strictly increasing indices).

        Query tile ``tiles[i]`` becomes query tile ``i`` of the new state, and the call counter (hence the
        visit direction) is kept. A call with ``query[:, self.query_rows(tiles)]`` on the new state reads,
        computes and writes, for those tiles, exactly what the same call with the full query on this state
        would: rows of different query tiles never interact. Calibration uses it to evaluate a candidate on a
        sample of the query tiles.
        """
        self._require_initialised()
        index = self._check_query_tiles(tiles)
        selected = SkipState(*self._requested_blocks)
        selected.block_m, selected.block_n = self.block_m, self.block_n
        q_len = tile_rows(index, self.shape_key.q_len, self.block_m).numel()
        key = self.shape_key
        selected.shape_key = ShapeKey(key.batch, key.heads, q_len, key.k_len, key.head_dim, key.device)
        selected._buffers = self._buffers[:, :, :, index.to(self._buffers.device)].clone()
        selected.call_count = self.call_count
        return selected

    def query_rows(self, tiles) -> torch.Tensor:
        """Int64 indices (on the state's device) of the query rows that query tiles ``tiles`` (strictly
        increasing) cover, in order: the query of a call on :meth:`select_query_tiles`'s state."""
        self._require_initialised()
        index = self._check_query_tiles(tiles)
        return tile_rows(index, self.shape_key.q_len, self.block_m, device=self.shape_key.device)

    def _check_query_tiles(self, tiles) -> torch.Tensor:
        return check_query_tiles(tiles, self.q_tiles)

    def reset(self) -> None:
        """Back to "compute every tile" on the next call (geometry and shape are kept)."""
        self.call_count = 0
        self.last_sparsity = None
        if self.shape_key is not None:
            self._allocate()

    def _allocate(self) -> None:
        # "Every tile" filled in on the device. Packing the mask on the host took milliseconds per layer at 32k
        # tokens, and even one packed row copied over from pageable memory waits for the GPU's queue: at the
        # first step of every video, each layer's call sat idle until the previous layers had run.
        key = self.shape_key
        words = num_tiles(self.k_tiles, 32)
        self._buffers = torch.zeros(2, key.batch, key.heads, self.q_tiles, words, dtype=torch.int32,
                                    device=key.device)
        self._buffers[0].fill_(-1)
        last_word_tiles = self.k_tiles - 32 * (words - 1)
        if last_word_tiles < 32:  # bits past the last key tile stay 0, as pack_keep_mask leaves them
            self._buffers[0, ..., -1].fill_((1 << last_word_tiles) - 1)
        self.call_count = 0

    def _require_initialised(self) -> None:
        if self._buffers is None:
            raise RuntimeError("this SkipState has not seen a call yet; it takes its shape from the first call")

    # -- inspection ---------------------------------------------------------------------------------
    def keep_mask(self) -> torch.Tensor:
        """Bool (batch, heads, q_tiles, k_tiles): the tiles the next call computes (without must-do/skip)."""
        return unpack_keep_mask(self.read_bits, self.k_tiles)

    def sparsity(self) -> float:
        """Fraction of (query tile, key tile) pairs the next call skips."""
        return 1.0 - self.keep_mask().float().mean().item()

    def to_dense(self) -> torch.Tensor:
        """Bool (batch, heads, q_len, k_len) token mask of :meth:`keep_mask`."""
        key = self.shape_key
        keep = self.keep_mask()
        rows = keep.repeat_interleave(self.block_m, dim=2)[:, :, : key.q_len]
        return rows.repeat_interleave(self.block_n, dim=3)[..., : key.k_len]

    def __str__(self) -> str:
        if self.shape_key is None:
            return "SkipState(uninitialised)"
        return (f"SkipState({self.shape_key}, tiles={self.block_m}x{self.block_n} "
                f"[{self.q_tiles} x {self.k_tiles}], calls={self.call_count}, "
                f"next direction={'descending' if self.reverse else 'ascending'}, "
                f"next sparsity={self.sparsity():.3f})")

    __repr__ = __str__
