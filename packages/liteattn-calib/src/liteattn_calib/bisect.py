"""Per-head bisection of the skip threshold: every head keeps its own bracket, all heads share each evaluation.

The error of a threshold grows with the threshold (a higher threshold drops more tiles). Rules:

* error at ``upper`` within the target: the head takes ``upper`` (nothing to trade);
* error at ``lower`` above the target: the head takes ``lower`` (the safest value on offer);
* otherwise the bracket shrinks until the error at its low end is within ``rel_tolerance`` of the target,
  ``max_iters`` rounds have run, or the bracket is narrower than ``resolution``. The answer is always the
  low end: the largest threshold tried whose error met the target (the error growing with the threshold).
  With the same error function, a looser target therefore never yields a lower threshold.

Each round asks ``evaluate`` for the errors of one or more candidates (one threshold per head each). The
bookkeeping runs on the errors' device: after the endpoints (read once, to stop when every head sits at one),
the rounds needed to narrow the bracket to ``resolution`` run without reading anything back, so a GPU never
waits for the host between rounds. Heads done early keep their answer through the remaining rounds. With
``resolution=0`` every round reads back whether all heads are done.

The first round carries both endpoints; each later round ``CalibConfig.candidates_per_round`` evenly spaced
points that cut the bracket into that many plus one parts (one point: a halving). The new
bracket runs from the highest point below the first one that misses the target to that point: k points per
round shrink the bracket by k + 1, so 3 points do in one round what two halvings do in two.
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
    evaluations: int  # candidates evaluated (each is one threshold per head), both endpoints included
    rounds: int = 0  # calls of ``evaluate``: the endpoints share the first


def bisect_thresholds(evaluate: Callable[[torch.Tensor], torch.Tensor], heads: int, config: CalibConfig,
                      device: torch.device | str = "cpu") -> BisectResult:
    """``evaluate(thresholds float32 (C, H) on device) -> errors (C, H) on device`` for C candidates; returns the
    chosen thresholds per head (on the CPU)."""
    target = config.target_error
    upper = torch.full((heads,), config.upper, dtype=torch.float32, device=device)
    lower = torch.full((heads,), config.lower, dtype=torch.float32, device=device)

    # Both endpoints in one round: a head's error depends on its own threshold only, so evaluating ``lower``
    # for heads that ``upper`` already satisfies changes nothing but the count.
    err_upper, err_lower = evaluate(torch.stack([upper, lower])).double()
    evaluations, rounds = 2, 1
    done = err_upper <= target
    chosen = torch.where(done, upper, lower)
    chosen_err = torch.where(done, err_upper, err_lower)
    done = done | (err_lower > target) | (err_lower >= (1 - config.rel_tolerance) * target)
    if bool(done.all()):
        return BisectResult(chosen.cpu(), chosen_err.cpu(), evaluations, rounds)

    lo, hi = lower.clone(), upper.clone()
    k = config.candidates_per_round
    window = (1 - config.rel_tolerance) * target
    if k == 1:
        return _halvings(evaluate, config, lo, hi, done, chosen, chosen_err, evaluations, rounds)
    steps = (torch.arange(1, k + 1, dtype=torch.float32, device=device) / (k + 1)).unsqueeze(1)  # (k, 1)
    for _ in range(_rounds_to_resolution(config)):
        done = done | (hi - lo <= config.resolution)
        if config.resolution == 0 and bool(done.all()):
            break
        evaluations += k
        rounds += 1
        # Heads already done sit at their answer: one threshold tensor serves every head in the same call.
        points = lo + steps * (hi - lo)  # (k, H), ascending
        err = evaluate(torch.where(done, chosen, points)).double()
        miss = err > target
        first_miss = torch.where(miss.any(0), miss.to(torch.int64).argmax(0), k)  # (H,): k when every point met it
        below = (first_miss - 1).clamp_min(0)
        moved = ~done & (first_miss > 0)  # some point met the target: the low end rises to the last one below
        new_lo = points.gather(0, below.unsqueeze(0))[0]
        lo_err = err.gather(0, below.unsqueeze(0))[0]
        hi = torch.where(~done & (first_miss < k), points.gather(0, first_miss.clamp_max(k - 1).unsqueeze(0))[0], hi)
        lo = torch.where(moved, new_lo, lo)
        chosen = torch.where(moved, new_lo, chosen)
        chosen_err = torch.where(moved, lo_err, chosen_err)
        done = done | (moved & (lo_err >= window))
    return BisectResult(chosen.cpu(), chosen_err.cpu(), evaluations, rounds)


def _halvings(evaluate, config: CalibConfig, lo, hi, done, chosen, chosen_err, evaluations: int,
              rounds: int) -> BisectResult:
    """The rounds of one candidate, in as few operations as they allow (each is a kernel launch on a GPU).

    An open head's low end is its answer so far, so only ``lo`` moves; the heads the endpoints settled keep
    ``chosen``. A settled head's bracket is evaluated and ignored, and every open bracket halves each round,
    so all of them reach the resolution together at the last round: no per-round width test is needed.
    """
    settled, target = done.clone(), config.target_error
    window = (1 - config.rel_tolerance) * target
    for _ in range(_rounds_to_resolution(config)):
        if config.resolution == 0 and bool(done.all()):
            break
        evaluations += 1
        rounds += 1
        mid = (lo + hi) * 0.5
        err = evaluate(mid.unsqueeze(0))[0].double()
        ok = (err <= target) > done  # met the target, and still open
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        chosen_err = torch.where(ok, err, chosen_err)
        done = done | (ok & (err >= window))
    chosen = torch.where(settled, chosen, lo)
    return BisectResult(chosen.cpu(), chosen_err.cpu(), evaluations, rounds)


def _rounds_to_resolution(config: CalibConfig) -> int:
    """Rounds after the endpoints until every bracket is at most ``resolution`` wide (``max_iters`` at most): each
    round divides the width by ``candidates_per_round + 1``."""
    if config.resolution == 0:
        return config.max_iters
    width, rounds = config.upper - config.lower, 0
    while width > config.resolution and rounds < config.max_iters:
        width /= config.candidates_per_round + 1
        rounds += 1
    return rounds
