"""Calibrate one attention call: find the per-head thresholds, leaving the layer's skip state untouched.

A is the attention that reads the inherited state. Its output does not depend on the threshold (the
threshold only decides what the call *writes*), so one call gives it. B, for a candidate threshold, is the
attention that reads the keep bits the call would write at that threshold, as the next denoising step would.

When the backend reports tile gaps (:func:`liteattn.functional.probe_tile_gaps`), the one call that gives A
also gives every candidate's keep bits, and each candidate costs one call (B). Otherwise a scratch copy of
the state runs the call at the candidate (writing its bits) before B: two calls per candidate. Both ways
produce the same bits. The committed call at the chosen thresholds is the caller's, so a run that loads the
chosen thresholds repeats the calibrated run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from liteattn.functional import probe_tile_gaps, run_attention
from liteattn.skip_state import SkipState

from .bisect import bisect_thresholds
from .metrics import per_head_error
from .settings import CalibConfig

__all__ = ["CallResult", "calibrate_call", "scratch_copy"]


@dataclass(frozen=True)
class CallResult:
    thresholds: torch.Tensor  # float32 (H,)
    errors: torch.Tensor  # float64 (H,), at the chosen thresholds
    evaluations: int


def scratch_copy(state: SkipState) -> SkipState:
    """An independent copy of a skip state (buffers included): calls on it never touch the original."""
    return state.clone()


def calibrate_call(query, key, value, state: SkipState, config: CalibConfig, **run_kwargs) -> CallResult:
    """Bisect the thresholds of one call. ``run_kwargs`` are :func:`liteattn.functional.run_attention`'s
    keyword arguments other than ``threshold`` (scale, must-do/skip lists, use_int8, backend)."""
    heads = query.shape[2]
    with torch.no_grad():
        probe = probe_tile_gaps(query, key, value, state, **run_kwargs)  # A is probe.out

    def evaluate(thresholds: torch.Tensor) -> torch.Tensor:
        scratch = scratch_copy(state)
        if probe.gaps is not None:  # the candidate's bits, read off the probe
            scratch.write_bits.copy_(probe.keep_bits(thresholds))
            scratch.advance(probe.forced_bits)
        else:  # the candidate's bits, written by running the call
            run_attention(query, key, value, scratch, threshold=thresholds, **run_kwargs)
        b, _, _ = run_attention(query, key, value, scratch, threshold=thresholds, **run_kwargs)
        return per_head_error(config.metric, probe.out, b)

    with torch.no_grad():
        result = bisect_thresholds(evaluate, heads, config)
    return CallResult(result.thresholds, result.errors, result.evaluations)
