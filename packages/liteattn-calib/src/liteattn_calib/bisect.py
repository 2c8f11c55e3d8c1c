"""Per-head bisection of the skip threshold: every head keeps its own bracket, all heads share each evaluation.

The error of a threshold grows with the threshold (a higher threshold drops more tiles). Rules:

* error at ``upper`` within the target: the head takes ``upper`` (nothing to trade);
* error at ``lower`` above the target: the head takes ``lower`` (the safest value on offer);
* otherwise the bracket halves until the error at its low end is within ``rel_tolerance`` of the target,
  ``max_iters`` halvings have run, or the bracket is narrower than ``resolution``. The answer is always the
  low end: the largest threshold tried whose error met the target. With the same error function, a looser
  target therefore never yields a lower threshold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .settings import CalibConfig

__all__ = ["BisectResult", "bisect_thresholds"]


@dataclass(frozen=True)
class BisectResult:
    thresholds: torch.Tensor  # float32 (H,): the chosen threshold per head
    errors: torch.Tensor  # float64 (H,): the error measured at the chosen threshold
    evaluations: int  # calls of ``evaluate`` (each is one candidate for all heads)


def bisect_thresholds(evaluate: Callable[[torch.Tensor], torch.Tensor], heads: int,
                      config: CalibConfig) -> BisectResult:
    """``evaluate(thresholds float32 (H,)) -> errors (H,)``; returns the chosen thresholds per head."""
    target = config.target_error
    upper = torch.full((heads,), config.upper, dtype=torch.float32)
    lower = torch.full((heads,), config.lower, dtype=torch.float32)

    err_upper = evaluate(upper).double()
    chosen, chosen_err = upper.clone(), err_upper.clone()
    done = err_upper <= target
    evaluations = 1
    if done.all():
        return BisectResult(chosen, chosen_err, evaluations)

    # Heads already done sit at their answer: one threshold tensor serves every head in the same call.
    err_lower = evaluate(torch.where(done, chosen, lower)).double()
    evaluations += 1
    chosen = torch.where(done, chosen, lower)
    chosen_err = torch.where(done, chosen_err, err_lower)
    done = done | (err_lower > target) | (err_lower >= (1 - config.rel_tolerance) * target)

    lo, hi = lower.clone(), upper.clone()
    for _ in range(config.max_iters):
        done = done | (hi - lo <= config.resolution)
        if done.all():
            break
        mid = (lo + hi) / 2
        err = evaluate(torch.where(done, chosen, mid)).double()
        evaluations += 1
        ok = ~done & (err <= target)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(~done & ~ok, mid, hi)
        chosen = torch.where(ok, mid, chosen)
        chosen_err = torch.where(ok, err, chosen_err)
        done = done | (ok & (err >= (1 - config.rel_tolerance) * target))
    return BisectResult(chosen, chosen_err, evaluations)
