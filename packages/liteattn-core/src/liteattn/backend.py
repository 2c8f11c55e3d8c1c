"""The interface every backend implements; ``docs/backend-contract.md`` is its long form.

A backend sees plain tensors, never a :class:`~liteattn.SkipState`: core turns the state, the must-do /
must-skip ranges and the thresholds into an :class:`AttentionCall`, and folds the result back into the state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from .tiles import num_tiles

__all__ = ["AttentionCall", "Backend", "Capabilities"]


@dataclass(frozen=True)
class AttentionCall:
    """One attention call, as a backend receives it.

    Shapes: ``q`` (B, Sq, H, D), ``k`` (B, Sk, Hkv, D), ``v`` (B, Sk, Hkv, Dv), ``thresholds`` (H,) float32 in
    log2 units, ``compute_bits`` / ``write_bits`` int32 (B, H, q_tiles, words) packed keep-bitmasks or None.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    scale: float
    thresholds: torch.Tensor
    block_m: int
    block_n: int
    compute_bits: torch.Tensor | None = None  # None: compute every key tile
    write_bits: torch.Tensor | None = None  # None: no skip test, nothing written
    reverse: bool = False  # visit kept key tiles in descending order
    use_int8: bool = False
    tile_gaps: torch.Tensor | None = None  # float32 (B, H, q_tiles, k_tiles) output, see below
    skipped_tiles: torch.Tensor | None = None  # 0-d int64 counter, zero on entry: += key tiles not computed

    # ``skipped_tiles`` is passed only to backends whose capabilities say ``counts_skipped``, and only with
    # ``compute_bits``: such a backend adds the number of (query tile, key tile) pairs it did not compute, which
    # core turns into the call's sparsity without popcounting the bits afterwards (~20 us of small kernels).

    # ``tile_gaps``, when given, receives for every computed tile the largest ``tile max - running max before
    # it`` over the valid rows of its query tile (log2 units, +inf for a row's first tile), and -inf for tiles
    # not computed. The skip test at any threshold t is then ``tile_gaps > t``: calibration reads the keep
    # bits of every candidate threshold off one call.

    @property
    def batch(self) -> int:
        return self.q.shape[0]

    @property
    def q_len(self) -> int:
        return self.q.shape[1]

    @property
    def k_len(self) -> int:
        return self.k.shape[1]

    @property
    def num_heads(self) -> int:
        return self.q.shape[2]

    @property
    def num_kv_heads(self) -> int:
        return self.k.shape[2]

    @property
    def head_dim(self) -> int:
        return self.q.shape[3]

    @property
    def q_tiles(self) -> int:
        return num_tiles(self.q_len, self.block_m)

    @property
    def k_tiles(self) -> int:
        return num_tiles(self.k_len, self.block_n)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run; dispatch checks these before asking :meth:`Backend.unsupported_reason`."""

    devices: frozenset[str]
    dtypes: frozenset[torch.dtype]
    head_dims: frozenset[int]
    int8: bool = False
    writes_state: bool = True
    tile_gaps: bool = False  # can fill AttentionCall.tile_gaps
    counts_skipped: bool = False  # can fill AttentionCall.skipped_tiles


@runtime_checkable
class Backend(Protocol):
    """An attention engine. Register one under the ``liteattn.backends`` entry-point group as a
    zero-argument callable (usually the class) returning an instance."""

    name: str
    priority: int  # auto dispatch tries backends from the highest priority down

    def capabilities(self) -> Capabilities: ...

    def unavailable_reason(self) -> str | None:
        """Why this backend cannot run at all here (missing GPU, wrong architecture), or None."""
        ...

    def unsupported_reason(self, call: AttentionCall) -> str | None:
        """Why this backend cannot run ``call`` beyond what :class:`Capabilities` says, or None."""
        ...

    def forward(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(out, lse)``: out (B, Sq, H, Dv) in q's dtype, lse (B, H, Sq) float32 (natural log)."""
        ...
