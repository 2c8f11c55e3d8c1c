"""Calibrate one attention call: find the per-head thresholds, leaving the layer's skip state untouched.

A is the attention that reads the inherited state. Its output does not depend on the threshold (the
threshold only decides what the call *writes*), so one call gives it. For a candidate threshold, a scratch
copy of the state runs the call (writing the candidate's keep bits) and then a second call reads those bits,
as the next denoising step would: that second output is B. The committed call at the chosen thresholds is
the caller's, so a run that loads the chosen thresholds repeats the calibrated run exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from liteattn.functional import run_attention
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
    reference: list[torch.Tensor] = []  # A, from the first candidate's call

    def evaluate(thresholds: torch.Tensor) -> torch.Tensor:
        scratch = scratch_copy(state)
        a, _, _ = run_attention(query, key, value, scratch, threshold=thresholds, **run_kwargs)
        if not reference:
            reference.append(a)
        b, _, _ = run_attention(query, key, value, scratch, threshold=thresholds, **run_kwargs)
        return per_head_error(config.metric, reference[0], b)

    with torch.no_grad():
        result = bisect_thresholds(evaluate, heads, config)
    return CallResult(result.thresholds, result.errors, result.evaluations)
