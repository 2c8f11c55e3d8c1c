"""Calibrate one attention call: find the per-head thresholds (and, on request, make the call at them).

A is the attention that reads the inherited state. Its output does not depend on the threshold (the
threshold only decides what the call *writes*), so one call gives it. B, for a candidate threshold, is the
attention that reads the keep bits the call would write at that threshold, as the next denoising step would.

When the backend reports tile gaps (:func:`liteattn.functional.probe_tile_gaps`), the one full call that gives
A also gives every candidate's keep bits, and B costs one call per bisection round
(:meth:`liteattn.functional.TileGapProbe.lookahead`, prepared once per call: a round launches a few kernels
besides the attention, and the errors stay on the device); the first round's points (both endpoints, and the
warm start's window) share one call.
The full call is also the call at the chosen thresholds: its output is A, and its written bits are the
chosen thresholds' keep bits, so committing it costs no further call. Otherwise each candidate costs two calls
(write the candidate's bits on a scratch copy of the state, then B; the first of them also gives A), and the
call at the chosen thresholds runs once more. Both ways produce the same bits.

On a CUDA device the bisection rounds run as one replay of a captured CUDA graph
(:mod:`liteattn_calib.graphs`, ``CalibConfig.cuda_graph``), kept across calls of the same layout.

With ``CalibConfig.sample_query_tiles``, candidates are evaluated on the rows of a fixed, evenly spaced sample
of query tiles only (:meth:`liteattn.SkipState.select_query_tiles`); A, its output and the state committed
stay those of the full call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from liteattn.functional import probe_tile_gaps, run_attention, tile_gaps_available
from liteattn.skip_state import ShapeKey, SkipState
from liteattn.tiles import num_tiles

from .bisect import bisect_thresholds
from .graphs import LookaheadErrors, RoundGraphs, shared_round_graphs
from .metrics import ErrorMeter, per_head_error
from .settings import CalibConfig

__all__ = ["CallResult", "calibrate_call", "sample_query_tiles", "scratch_copy"]


@dataclass(frozen=True)
class CallResult:
    thresholds: torch.Tensor  # float32 (H,), on the query's device (the CPU when candidates run as calls)
    errors: torch.Tensor  # float64 (H,), at the chosen thresholds, on the same device
    evaluations: int  # candidates evaluated (bisection iterations, the first round's points included)
    # The call at the chosen thresholds, with ``commit=True`` only (None otherwise):
    out: torch.Tensor | None = None  # (B, Sq, H, Dv)
    lse: torch.Tensor | None = None  # (B, H, Sq) float32
    sparsity: torch.Tensor | float | None = None
    rounds: int = 0  # bisection rounds; with tile gaps, one sampled attention call each


def scratch_copy(state: SkipState) -> SkipState:
    """An independent copy of a skip state (buffers included): calls on it never touch the original."""
    return state.clone()


def sample_query_tiles(q_tiles: int, count: int | None) -> torch.Tensor | None:
    """``count`` evenly spaced query tiles out of ``q_tiles`` (the middle of ``count`` equal strata), as int64
    indices; None when ``count`` is None or covers every tile. Deterministic: every candidate of a call, and
    every run, sees the same tiles."""
    if count is None or count >= q_tiles:
        return None
    return (torch.arange(count, dtype=torch.int64) * 2 + 1) * q_tiles // (2 * count)


def calibrate_call(
    query, key, value, state: SkipState, config: CalibConfig, *, commit: bool = False,
    round_graphs: RoundGraphs | None = None, start: torch.Tensor | None = None, **run_kwargs
) -> CallResult:
    """Bisect the thresholds of one call. ``run_kwargs`` are :func:`liteattn.functional.run_attention`'s
    keyword arguments other than ``threshold`` (scale, must-do/skip lists, use_int8, backend).

    With ``commit=False`` the state keeps its bits and call counter. With ``commit=True`` the call at the
    chosen thresholds is made as well: ``state`` advances exactly as that call advances it, and the result
    holds its ``out``, ``lse`` and ``sparsity``. With tile gaps this costs no further attention call.

    ``round_graphs`` keeps the captured CUDA graphs of the bisection rounds (default: the process-wide
    :func:`liteattn_calib.graphs.shared_round_graphs`); it is used on CUDA devices only. ``start`` (H,): the
    thresholds this layer chose at the previous step, where the warm start (``CalibConfig.warm_start``)
    centres its window. With tile gaps the result's thresholds and errors stay on the query's device, and
    with ``resolution > 0`` nothing in the call waits for the GPU.
    """
    with torch.no_grad():
        if tile_gaps_available(query, key, value, state, **run_kwargs):
            probe = probe_tile_gaps(query, key, value, state, **run_kwargs)
            if probe.gaps is not None:
                graphs = round_graphs if round_graphs is not None else shared_round_graphs()
                return _from_gaps(probe, state, config, commit, graphs, start)
        return _by_running(query, key, value, state, config, commit, run_kwargs, start)


def _from_gaps(probe, state: SkipState, config: CalibConfig, commit: bool, round_graphs: RoundGraphs,
               start: torch.Tensor | None) -> CallResult:
    """A is ``probe.out``; a candidate's bits are read off the gaps, and every round of the bisection (the first
    round's points, then each halving) is one sampled call of the probe's lookahead, measured on the device."""
    lookahead = probe.lookahead(sample_query_tiles(state.q_tiles, config.sample_query_tiles))
    # (C, H) -> errors (C, H), on the query's device
    evaluate = LookaheadErrors(lookahead, ErrorMeter(config.metric, lookahead.reference))
    device = lookahead.reference.device
    result = bisect_thresholds(evaluate, lookahead.heads, config, device=device, start=start,
                               run_fixed_rounds=round_graphs.runner(evaluate, config, device))
    if not commit:
        return CallResult(result.thresholds, result.errors, result.evaluations, rounds=result.rounds)
    probe.commit(state, result.thresholds)
    return CallResult(result.thresholds, result.errors, result.evaluations, probe.out, probe.lse, probe.sparsity,
                      rounds=result.rounds)


def _by_running(query, key, value, state: SkipState, config: CalibConfig, commit: bool, run_kwargs: dict,
                start: torch.Tensor | None) -> CallResult:
    """Without gaps: per candidate, a scratch state runs the call (writing the candidate's bits; the output of
    the first such call is A), then B reads them. Both calls run on the sampled query tiles."""
    tiles = _sample_for(query, key, state, config)
    if tiles is None:
        q_eval, base = query, state
    else:
        q_eval, base = query[:, state.query_rows(tiles)], state.select_query_tiles(tiles)
    reference = None

    def evaluate_one(thresholds: torch.Tensor) -> torch.Tensor:
        nonlocal reference
        scratch = scratch_copy(base)
        a, _, _ = run_attention(q_eval, key, value, scratch, threshold=thresholds, **run_kwargs)
        if reference is None:  # reads the inherited state like every write call: A, computed once
            reference = a
        b, _, _ = run_attention(q_eval, key, value, scratch, threshold=thresholds, **run_kwargs)
        return per_head_error(config.metric, reference, b)

    def evaluate(candidates: torch.Tensor) -> torch.Tensor:  # (C, H), one candidate after the other
        return torch.stack([evaluate_one(thresholds) for thresholds in candidates])

    result = bisect_thresholds(evaluate, query.shape[2], config, start=start)  # errors come to the CPU here
    if not commit:
        return CallResult(result.thresholds, result.errors, result.evaluations, rounds=result.rounds)
    out, lse, sparsity = run_attention(query, key, value, state, threshold=result.thresholds, **run_kwargs)
    return CallResult(result.thresholds, result.errors, result.evaluations, out, lse, sparsity, rounds=result.rounds)


def _sample_for(query, key, state: SkipState, config: CalibConfig) -> torch.Tensor | None:
    """The sampled query tiles of a call that runs its candidates, or None for every tile. Sampling needs the
    state's geometry: the state is fitted to the call's shape first, as the call itself would fit it."""
    batch, q_len, heads, head_dim = query.shape
    if config.sample_query_tiles is None or q_len == 0 or key.shape[1] == 0:
        return None
    if state.block_m is not None and config.sample_query_tiles >= num_tiles(q_len, state.block_m):
        return None  # every tile: leave the state as it is
    state.prepare(ShapeKey(batch, heads, q_len, key.shape[1], head_dim, query.device))
    return sample_query_tiles(state.q_tiles, config.sample_query_tiles)
