"""``lite_attention``: the functional form. :class:`~liteattn.LiteAttention` wraps it with a state it owns."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ._env import verbose_enabled
from .backend import AttentionCall, Backend
from .dispatch import select_backend
from .lookahead import Lookahead
from .skip_state import ShapeKey, SkipState, pack_keep_mask
from .tiles import default_tile_shape, num_tiles, ranges_to_tile_mask, ranges_to_token_mask, validate_ranges
from .validation import check_qkv, check_scale, head_thresholds

__all__ = ["TileGapProbe", "lite_attention", "probe_tile_gaps", "run_attention", "tile_gaps_available"]

logger = logging.getLogger("liteattn")

Ranges = Sequence[int] | torch.Tensor | None


def lite_attention(query, key, value, state: SkipState | None = None, *, threshold=-10.0, scale=None,
                   must_do_list: Ranges = None, must_skip_list: Ranges = None, return_softmax_lse=False,
                   use_int8=False, backend: str | None = None):
    """Skip-attention of (batch, seq, heads, head_dim) tensors.

    With ``state=None`` every key tile is computed (except must-skip ranges) and nothing is written. With a
    :class:`SkipState`, the tiles it keeps are computed, the skip test runs at ``threshold`` (log2 units; a
    float or one per head) and the state advances to the next call.

    Shapes: query (B, Sq, H, D), key (B, Sk, Hkv, D), value (B, Sk, Hkv, Dv), H % Hkv == 0. Returns out
    (B, Sq, H, Dv) in the input dtype, and lse (B, H, Sq) float32 with ``return_softmax_lse=True``.

    Example::

        >>> q, k, v = (torch.randn(1, 300, 2, 64) for _ in range(3))
        >>> out = lite_attention(q, k, v)
        >>> ref = torch.nn.functional.scaled_dot_product_attention(*(x.transpose(1, 2) for x in (q, k, v)))
        >>> torch.allclose(out, ref.transpose(1, 2), atol=1e-5)
        True
    """
    out, lse, _ = run_attention(query, key, value, state, threshold=threshold, scale=scale,
                                must_do_list=must_do_list, must_skip_list=must_skip_list, use_int8=use_int8,
                                backend=backend)
    return (out, lse) if return_softmax_lse else out


def run_attention(query, key, value, state: SkipState | None, *, threshold, scale, must_do_list, must_skip_list,
                  use_int8, backend):
    """:func:`lite_attention` that also returns the fraction of key tiles skipped, as a 0-d float32 tensor on
    the inputs' device: ``float()`` of it waits for the call, so nothing on this path waits for the GPU."""
    prepared = _prepare(query, key, value, state, threshold=threshold, scale=scale, must_do_list=must_do_list,
                        must_skip_list=must_skip_list, use_int8=use_int8, write=state is not None)
    if prepared is None:
        return _empty_result(query, value)
    call, forced_bits = prepared
    chosen = select_backend(call, backend)
    out, lse, sparsity = _forward(chosen, call, query, key)
    if state is not None:
        state.advance(forced_bits)
        state.last_sparsity = sparsity
    if verbose_enabled():
        logger.info("liteattn %s: shape %s, sparsity %.3f", chosen.name, tuple(query.shape), float(sparsity))
    return out, lse, sparsity


@dataclass(frozen=True)
class TileGapProbe:
    """What :func:`probe_tile_gaps` saw: the call's output and, per tile, the gap the skip test compares."""

    out: torch.Tensor  # (B, Sq, H, Dv)
    lse: torch.Tensor  # (B, H, Sq) float32
    gaps: torch.Tensor | None  # float32 (B, H, q_tiles, k_tiles); None when the backend cannot report them
    forced_bits: torch.Tensor  # packed must-do tiles that are not must-skipped: always kept
    sparsity: torch.Tensor | float = 0.0  # fraction of key tiles the call skipped, as run_attention reports it
    call: AttentionCall | None = None  # the call that ran (None for empty inputs), reused by lookahead()
    backend: Backend | None = None  # the backend that ran it

    def keep_bits(self, threshold: torch.Tensor, query_tiles: torch.Tensor | None = None) -> torch.Tensor:
        """The keep bits the call would write at ``threshold`` ((H,) float32, log2 units); with
        ``query_tiles`` (indices), only the rows of those query tiles, in that order."""
        gaps = self.gaps if query_tiles is None else self.gaps[:, :, torch.as_tensor(query_tiles).to(self.gaps.device)]
        verdict = gaps > threshold.to(self.gaps.device).view(1, -1, 1, 1)
        return pack_keep_mask(verdict)

    def commit(self, state: SkipState, threshold: torch.Tensor) -> None:
        """Advance ``state`` as the probed call at ``threshold`` would have, without running it again.

        ``state`` must be the state that was probed, unchanged since. The call's output does not depend on
        the threshold, so ``out`` and ``lse`` are that call's; its written bits are ``keep_bits(threshold)``
        plus the forced tiles, exactly what the backend and :meth:`SkipState.advance` would produce.
        """
        if self.gaps is None:
            raise ValueError("this probe has no tile gaps (the backend cannot report them); run the call instead")
        bits = self.keep_bits(threshold.to(torch.float32).flatten().expand(self.gaps.shape[1]))
        if state.shape_key is None or state.write_bits.shape != bits.shape:
            raise ValueError("commit() needs the state that was probed")
        state.write_bits.copy_(bits)
        state.advance(self.forced_bits)
        state.last_sparsity = self.sparsity

    def lookahead(self, query_tiles=None) -> Lookahead:
        """The next call's output at candidate thresholds, on the rows of ``query_tiles`` (all when None),
        without a state: see :class:`~liteattn.lookahead.Lookahead`. Build it once per probe; each candidate
        (or group of candidates) then costs one backend call."""
        return Lookahead(self, query_tiles)


def probe_tile_gaps(query, key, value, state: SkipState, *, scale=None, must_do_list: Ranges = None,
                    must_skip_list: Ranges = None, use_int8=False, backend: str | None = None) -> TileGapProbe:
    """Run the call ``state`` would run next without changing the state, and report every computed tile's gap
    (the largest ``tile max - running max`` over its query tile's rows), so that the keep bits of any
    threshold follow without another call. The backend is chosen as for an ordinary call; if it cannot report
    gaps, ``gaps`` is None. Empty inputs are not probed (``gaps`` is None)."""
    prepared = _prepare(query, key, value, state, threshold=-math.inf, scale=scale, must_do_list=must_do_list,
                        must_skip_list=must_skip_list, use_int8=use_int8, write=False)
    if prepared is None:
        out, lse, _ = _empty_result(query, value)
        return TileGapProbe(out, lse, None, torch.zeros(1, dtype=torch.int32))
    call, forced_bits = prepared
    if forced_bits is None:
        forced_bits = torch.zeros(1, dtype=torch.int32, device=query.device)
    chosen = select_backend(call, backend)
    gaps = None
    if chosen.capabilities().tile_gaps:
        gaps = torch.empty(call.batch, call.num_heads, call.q_tiles, call.k_tiles, dtype=torch.float32,
                           device=query.device)
        call = replace(call, tile_gaps=gaps)
    out, lse, sparsity = _forward(chosen, call, query, key)
    return TileGapProbe(out, lse, gaps, forced_bits, sparsity, call, chosen)


def tile_gaps_available(query, key, value, state: SkipState | None, *, scale=None, must_do_list: Ranges = None,
                        must_skip_list: Ranges = None, use_int8=False, backend: str | None = None) -> bool:
    """Whether :func:`probe_tile_gaps` with these arguments would report gaps: the backend chosen for the call
    can fill them, and the inputs are not empty. Runs nothing and leaves ``state`` as it is."""
    # The stateless call with the state's tile shape is the same call, bits aside: the backend choice depends on
    # shapes, dtypes and tiles only, and nothing is allocated or reset.
    prepared = _prepare(query, key, value, None, threshold=-math.inf, scale=scale, must_do_list=must_do_list,
                        must_skip_list=must_skip_list, use_int8=use_int8, write=False)
    if prepared is None:
        return False
    if state is not None:  # the tile shape SkipState.prepare would give the state
        block_m, block_n = state.tile_shape(query.shape[-1])
        prepared = (replace(prepared[0], block_m=block_m, block_n=block_n), None)
    return bool(select_backend(prepared[0], backend).capabilities().tile_gaps)


def _prepare(query, key, value, state, *, threshold, scale, must_do_list, must_skip_list, use_int8, write):
    """Validate the arguments and build the backend call: ``(call, forced_bits)``, or None for empty inputs.
    ``forced_bits`` (packed must-do tiles that are not must-skipped) is None when there are no ranges."""
    check_qkv(query, key, value)
    batch, q_len, heads, head_dim = query.shape
    k_len = key.shape[1]
    scale = check_scale(scale, head_dim)
    thresholds = head_thresholds(threshold, heads, query.device)
    must_do = validate_ranges(must_do_list, k_len, "must_do_list")
    must_skip = validate_ranges(must_skip_list, k_len, "must_skip_list")
    if must_do and must_skip and (ranges_to_token_mask(must_do, k_len) & ranges_to_token_mask(must_skip, k_len)).any():
        raise ValueError("must_do_list and must_skip_list overlap; a token cannot be both forced and excluded")
    if q_len == 0 or k_len == 0:
        return None

    if state is not None:
        state.prepare(ShapeKey(batch, heads, q_len, k_len, head_dim, query.device))
        block_m, block_n = state.block_m, state.block_n
    else:
        block_m, block_n = default_tile_shape(head_dim)
    write_bits = state.write_bits if state is not None and write else None
    reverse = state.reverse if state is not None else False
    read_bits = state.read_bits if state is not None else None
    if not must_do and not must_skip:  # the common call: no mask arithmetic, nothing to fold in afterwards
        call = AttentionCall(query, key, value, scale, thresholds, block_m, block_n, read_bits, write_bits,
                             reverse, use_int8)
        return call, None

    do_tiles = ranges_to_tile_mask(must_do, k_len, block_n, query.device)
    skip_tiles = ranges_to_tile_mask(must_skip, k_len, block_n, query.device)
    forced_bits = pack_keep_mask(do_tiles & ~skip_tiles)
    skip_bits = pack_keep_mask(skip_tiles)
    if read_bits is not None:
        compute_bits = (read_bits | forced_bits) & ~skip_bits
    else:
        compute_bits = None
        if skip_tiles.any():
            shape = (batch, heads, num_tiles(q_len, block_m), skip_bits.shape[-1])
            compute_bits = pack_keep_mask(~skip_tiles).expand(shape).contiguous()
    call = AttentionCall(query, key, value, scale, thresholds, block_m, block_n, compute_bits, write_bits,
                         reverse, use_int8)
    return call, forced_bits


def _forward(backend, call: AttentionCall, query, key):
    """Run ``call`` on ``backend``: ``(out, lse, sparsity)``. A backend that counts the tiles it skips gets a
    zeroed counter when the call reads keep bits (only the call handed to it carries the counter)."""
    if call.compute_bits is not None and backend.capabilities().counts_skipped:
        call = replace(call, skipped_tiles=torch.zeros((), dtype=torch.int64, device=call.q.device))
    out, lse = backend.forward(call)
    if call.use_int8:
        lse = lse + _smoothing_offset(query, key, call.scale)
    return out, lse, _sparsity(call)


def _sparsity(call: AttentionCall) -> torch.Tensor:
    """Fraction of (query tile, key tile) pairs the call skips: a 0-d float32 tensor, computed on the device
    without waiting for it (a per-call host sync would stall every layer of a model behind the GPU)."""
    total = call.batch * call.num_heads * call.q_tiles * call.k_tiles
    if call.compute_bits is None or total == 0:
        return torch.zeros((), dtype=torch.float32, device=call.q.device)
    if call.skipped_tiles is not None:  # counted by the backend while it ran
        return call.skipped_tiles.div(total)
    kept = _popcount(call.compute_bits).sum(dtype=torch.float32)
    return kept.mul(-1.0 / total).add_(1.0)


def _smoothing_offset(query, key, scale):
    """``scale * q . mean(k)`` (B, H, Sq): what INT8's K smoothing removed from every score of a row.

    Backends return the LSE of the smoothed scores; adding this back gives the LSE of the true scores, so
    INT8 results merge with others through :func:`~liteattn.merge_attention`.
    """
    groups = query.shape[2] // key.shape[2]
    mean_k = key.float().mean(dim=1).repeat_interleave(groups, dim=1)  # (B, H, D)
    return torch.einsum("bqhd,bhd->bhq", query.float(), mean_k) * scale


def _popcount(words: torch.Tensor) -> torch.Tensor:
    return ((words.unsqueeze(-1) >> _bit_shifts(words.device)) & 1).sum(dim=(-1, -2))


@functools.cache
def _bit_shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(32, device=device, dtype=torch.int32)


def _empty_result(query, value):
    batch, q_len, heads = query.shape[:3]
    out = torch.zeros(batch, q_len, heads, value.shape[-1], dtype=query.dtype, device=query.device)
    lse = torch.full((batch, heads, q_len), -torch.inf, dtype=torch.float32, device=query.device)
    return out, lse, torch.zeros((), dtype=torch.float32, device=query.device)
