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

With ``resolution > 0`` the rounds after the endpoints are a fixed sequence of operations on a fixed set of
tensors (the brackets, the done flags, the answers so far): ``bisect_thresholds`` hands them, as one function
of those tensors, to ``run_fixed_rounds``. Running them eagerly still costs the host a few kernel launches per
operation, which on an H100 took longer than the GPU's share of a round; :mod:`liteattn_calib.graphs` runs them
instead as one replay of a captured CUDA graph. The function is pure (it never writes its inputs) so that a
captured graph can be replayed on new inputs copied into the tensors it was captured on.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .settings import CalibConfig

__all__ = ["BisectResult", "FixedRounds", "RoundsRunner", "bisect_thresholds"]

Evaluate = Callable[[torch.Tensor], torch.Tensor]  # thresholds float32 (C, H) -> errors (C, H), on one device
# (evaluate, lo, hi, done, chosen, chosen_err) -> (chosen, chosen_err): the rounds after the endpoints
FixedRounds = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# (rounds, (lo, hi, done, chosen, chosen_err)) -> rounds(evaluate', *state) for an evaluate' that gives the
# errors the bisection's own ``evaluate`` gives (a runner may bring its own, on tensors a graph reads)
RoundsRunner = Callable[[FixedRounds, tuple[torch.Tensor, ...]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BisectResult:
    thresholds: torch.Tensor  # float32 (H,): the chosen threshold per head
    errors: torch.Tensor  # float64 (H,): the error measured at the chosen threshold
    evaluations: int  # candidates evaluated (each is one threshold per head), both endpoints included
    rounds: int = 0  # calls of ``evaluate``: the endpoints share the first


def bisect_thresholds(evaluate: Evaluate, heads: int, config: CalibConfig, device: torch.device | str = "cpu", *,
                      run_fixed_rounds: RoundsRunner | None = None) -> BisectResult:
    """``evaluate(thresholds float32 (C, H) on device) -> errors (C, H) on device`` for C candidates; returns the
    chosen thresholds per head (on the CPU). ``run_fixed_rounds`` runs the rounds after the endpoints when
    ``resolution > 0`` (default: eagerly, with ``evaluate``); it must give what the eager run gives."""
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

    state = (lower.clone(), upper.clone(), done, chosen, chosen_err)  # lo, hi, done, chosen, chosen_err
    k = config.candidates_per_round
    if config.resolution == 0:
        chosen, chosen_err, ran = _rounds_until_done(evaluate, config, *state)
    else:
        ran = _rounds_to_resolution(config)
        fixed = _fixed_halvings if k == 1 else _fixed_k_rounds
        rounds_fn = functools.partial(fixed, config=config, rounds=ran)
        if run_fixed_rounds is None:
            chosen, chosen_err = rounds_fn(evaluate, *state)
        else:
            chosen, chosen_err = run_fixed_rounds(rounds_fn, state)
    return BisectResult(chosen.cpu(), chosen_err.cpu(), evaluations + k * ran, rounds + ran)


def _fixed_halvings(evaluate: Evaluate, lo, hi, done, chosen, chosen_err, *, config: CalibConfig,
                    rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rounds`` halvings, in as few operations as they allow (each is a kernel launch on a GPU).

    An open head's low end is its answer so far, so only ``lo`` moves; the heads the endpoints settled keep
    ``chosen``. A settled head's bracket is evaluated and ignored, and every open bracket halves each round,
    so all of them reach the resolution together at the last round: no per-round width test is needed.
    """
    settled = done
    for _ in range(rounds):
        lo, hi, done, chosen_err = _halving(evaluate, config, lo, hi, done, chosen_err)
    return torch.where(settled, chosen, lo), chosen_err


def _fixed_k_rounds(evaluate: Evaluate, lo, hi, done, chosen, chosen_err, *, config: CalibConfig,
                    rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rounds`` rounds of ``candidates_per_round`` points each."""
    steps = _round_steps(config.candidates_per_round, lo.device)
    for _ in range(rounds):
        done = done | (hi - lo <= config.resolution)
        lo, hi, done, chosen, chosen_err = _k_round(evaluate, config, steps, lo, hi, done, chosen, chosen_err)
    return chosen, chosen_err


def _rounds_until_done(evaluate: Evaluate, config: CalibConfig, lo, hi, done, chosen, chosen_err):
    """``resolution=0``: after each round the host reads whether every head is done (up to ``max_iters``
    rounds). Returns (chosen, chosen_err, rounds run)."""
    k, settled, ran = config.candidates_per_round, done, 0
    steps = _round_steps(k, lo.device) if k > 1 else None
    for _ in range(config.max_iters):
        if k > 1:
            done = done | (hi - lo <= config.resolution)
        if bool(done.all()):
            break
        ran += 1
        if k == 1:
            lo, hi, done, chosen_err = _halving(evaluate, config, lo, hi, done, chosen_err)
        else:
            lo, hi, done, chosen, chosen_err = _k_round(evaluate, config, steps, lo, hi, done, chosen, chosen_err)
    if k == 1:
        chosen = torch.where(settled, chosen, lo)
    return chosen, chosen_err, ran


def _halving(evaluate: Evaluate, config: CalibConfig, lo, hi, done, chosen_err):
    """One halving of every bracket; an open head whose midpoint meets the target moves its low end (its answer)
    there. Returns the new (lo, hi, done, chosen_err)."""
    target = config.target_error
    mid = (lo + hi) * 0.5
    err = evaluate(mid.unsqueeze(0))[0].double()
    ok = (err <= target) > done  # met the target, and still open
    lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    chosen_err = torch.where(ok, err, chosen_err)
    done = done | (ok & (err >= (1 - config.rel_tolerance) * target))
    return lo, hi, done, chosen_err


def _k_round(evaluate: Evaluate, config: CalibConfig, steps, lo, hi, done, chosen, chosen_err):
    """One round of k points that cut every bracket into k + 1 parts. Returns the new (lo, hi, done, chosen,
    chosen_err)."""
    k, target = config.candidates_per_round, config.target_error
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
    done = done | (moved & (lo_err >= (1 - config.rel_tolerance) * target))
    return lo, hi, done, chosen, chosen_err


def _round_steps(k: int, device) -> torch.Tensor:
    """(k, 1): where a round's k points sit in each bracket, as fractions of its width."""
    return (torch.arange(1, k + 1, dtype=torch.float32, device=device) / (k + 1)).unsqueeze(1)


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
