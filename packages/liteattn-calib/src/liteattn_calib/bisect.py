"""Per-head bisection of the skip threshold: every head keeps its own bracket, all heads share each evaluation.

The error of a threshold grows with the threshold (a higher threshold drops more tiles). Rules:

* error at ``upper`` within the target: the head takes ``upper`` (nothing to trade);
* error at ``lower`` above the target: the head takes ``lower`` (the safest value on offer);
* otherwise the bracket shrinks until the error at its low end is within ``rel_tolerance`` of the target,
  ``max_iters`` rounds have run, or the bracket is narrower than ``resolution``. The answer is always the
  low end: the largest threshold tried whose error met the target (the error growing with the threshold).
  With the same error function, a looser target therefore never yields a lower threshold.

Each round asks ``evaluate`` for the errors of one or more candidates (one threshold per head each). The first
round carries both endpoints and, with a warm start, the two ends of a window around the head's previous
threshold (:func:`first_round_points`); it leaves each open head the bracket between the highest point that met
the target and the point above it. Each later round evaluates ``CalibConfig.candidates_per_round`` evenly spaced
points that cut the bracket into that many plus one parts (one point: a halving). The new bracket runs from the
highest point below the first one that misses the target to that point: k points per round shrink the bracket
by k + 1, so 3 points do in one round what two halvings do in two.

Warm start: a head's threshold moves little from one denoising step to the next, so the window (two cells of
the grid that halving ``[lower, upper]`` visits, centred on the previous threshold) usually brackets the answer
and the halvings start from its width instead of the whole range. The window's ends lie on that grid, so where
it brackets the answer the halvings visit the points, and choose the threshold, that halving the whole range
would. Where it does not (the threshold moved further than about half the window), the head goes on from the
part of the range beyond the window, and the same number of halvings leaves it a wider bracket: its answer
still meets the target, at a coarser resolution.

The bookkeeping runs on the errors' device. With ``resolution > 0`` the rounds are a fixed sequence of
operations on a fixed set of tensors, computed ahead from the resolution: nothing is read back to the host, so
a GPU never waits for it, and heads done early keep their answer through the remaining rounds.
``bisect_thresholds`` hands them, as one function of the first round's points, to ``run_fixed_rounds``;
:mod:`liteattn_calib.graphs` runs them as one replay of a captured CUDA graph. The function is pure (it never
writes its inputs) so that a captured graph can be replayed on new inputs copied into the tensors it was
captured on. With ``resolution=0`` every round reads back whether all heads are done.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .settings import CalibConfig

__all__ = ["BisectResult", "FixedRounds", "RoundsRunner", "bisect_thresholds", "first_round_points"]

Evaluate = Callable[[torch.Tensor], torch.Tensor]  # thresholds float32 (C, H) -> errors (C, H), on one device
# (evaluate, first_points) -> (chosen, chosen_err): every round of a bisection with resolution > 0
FixedRounds = Callable[..., tuple[torch.Tensor, torch.Tensor]]
# (rounds, (first_points,)) -> rounds(evaluate', first_points) for an evaluate' that gives the errors the
# bisection's own ``evaluate`` gives (a runner may bring its own, on tensors a graph reads)
RoundsRunner = Callable[[FixedRounds, tuple[torch.Tensor, ...]], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BisectResult:
    thresholds: torch.Tensor  # float32 (H,) on the evaluation's device: the chosen threshold per head
    errors: torch.Tensor  # float64 (H,) on the same device: the error measured at the chosen threshold
    evaluations: int  # candidates evaluated (each is one threshold per head), the first round's points included
    rounds: int = 0  # calls of ``evaluate``


def bisect_thresholds(evaluate: Evaluate, heads: int, config: CalibConfig, device: torch.device | str = "cpu", *,
                      start: torch.Tensor | None = None,
                      run_fixed_rounds: RoundsRunner | None = None) -> BisectResult:
    """``evaluate(thresholds float32 (C, H) on device) -> errors (C, H) on device`` for C candidates; returns the
    chosen thresholds per head, on ``device`` (nothing is read back with ``resolution > 0``). ``start`` (H,):
    the previous thresholds, for the warm start (used when ``config.warm_start``). ``run_fixed_rounds`` runs
    the rounds when ``resolution > 0`` (default: eagerly, with ``evaluate``); it must give what the eager run
    gives."""
    points, width = first_round_points(config, heads, device, start)
    k = config.candidates_per_round
    if config.resolution == 0:
        chosen, chosen_err, ran = _rounds_until_done(evaluate, config, points)
        return BisectResult(chosen, chosen_err, points.shape[0] + k * ran, 1 + ran)
    ran = _rounds_to_resolution(config, width)
    rounds_fn = functools.partial(_fixed_rounds, config=config, rounds=ran)
    if run_fixed_rounds is None:
        chosen, chosen_err = rounds_fn(evaluate, points)
    else:
        chosen, chosen_err = run_fixed_rounds(rounds_fn, (points,))
    return BisectResult(chosen, chosen_err, points.shape[0] + k * ran, 1 + ran)


def first_round_points(config: CalibConfig, heads: int, device, start: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, float]:
    """The first round's thresholds, float32 (P, H) ascending, and the widest bracket they leave a head that
    they bracket: ``[lower, upper]`` (P = 2), or with a warm start from ``start`` (H,) ``[lower, a, a + w,
    upper]`` (P = 4), the window ``[a, a + w]`` two cells of the halving grid wide around ``start``."""
    lower = torch.full((heads,), config.lower, dtype=torch.float32, device=device)
    upper = torch.full((heads,), config.upper, dtype=torch.float32, device=device)
    span = config.upper - config.lower
    cell = _warm_cell(config)
    if start is None or not config.warm_start or cell is None:
        return torch.stack([lower, upper]), span
    cells = round(span / cell)
    centre = torch.as_tensor(start, dtype=torch.float32).to(device).flatten()
    if centre.numel() not in (1, heads):
        raise ValueError(f"start must hold one threshold or one per head ({heads}); got {centre.numel()}")
    centre = centre.expand(heads)
    centre = centre.nan_to_num(nan=config.lower).clamp(config.lower, config.upper)  # -inf -> lower
    index = ((centre - config.lower) / cell).round().clamp(1, cells - 1)  # the grid point nearest the centre
    window_lo = config.lower + (index - 1) * cell
    return torch.stack([lower, window_lo, window_lo + 2 * cell, upper]), 2 * cell


def _warm_cell(config: CalibConfig) -> float | None:
    """The grid cell of the warm window: (upper - lower) / 2^m for the largest m whose two cells still span
    ``warm_window``; None when that is the whole range (no round to save) or with several candidates per round
    (their points do not lie on the halving grid)."""
    if config.candidates_per_round != 1:
        return None
    span = config.upper - config.lower
    level = math.floor(math.log2(2 * span / config.warm_window))
    return span / 2**level if level >= 2 else None


def _first_round(evaluate: Evaluate, config: CalibConfig, points: torch.Tensor):
    """Evaluate ``points`` (P, H) ascending, the endpoints first and last, and apply the endpoint rules; an open
    head's bracket runs from the highest point that met the target to the point above it (its answer so far is
    the bracket's low end). Returns (lo, hi, done, chosen, chosen_err)."""
    target = config.target_error
    err = evaluate(points).double()
    miss = err > target
    meets_upper, misses_lower = ~miss[-1], miss[0]
    last = points.shape[0] - 1
    first_miss = torch.where(miss.any(0), miss.to(torch.int64).argmax(0), last).clamp(1, last).unsqueeze(0)
    lo, hi = points.gather(0, first_miss - 1)[0], points.gather(0, first_miss)[0]
    lo_err = err.gather(0, first_miss - 1)[0]
    chosen = torch.where(meets_upper, points[-1], torch.where(misses_lower, points[0], lo))
    chosen_err = torch.where(meets_upper, err[-1], torch.where(misses_lower, err[0], lo_err))
    done = meets_upper | misses_lower | (lo_err >= (1 - config.rel_tolerance) * target)
    return lo, hi, done, chosen, chosen_err


def _fixed_rounds(evaluate: Evaluate, points: torch.Tensor, *, config: CalibConfig,
                  rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first round, then ``rounds`` more, in as few operations as they allow (each is a kernel launch on a
    GPU)."""
    state = _first_round(evaluate, config, points)
    fixed = _fixed_halvings if config.candidates_per_round == 1 else _fixed_k_rounds
    return fixed(evaluate, *state, config=config, rounds=rounds)


def _fixed_halvings(evaluate: Evaluate, lo, hi, done, chosen, chosen_err, *, config: CalibConfig,
                    rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rounds`` halvings, in as few operations as they allow (each is a kernel launch on a GPU).

    An open head's low end is its answer so far, so only ``lo`` moves; the heads the first round settled keep
    ``chosen``. A settled head's bracket is evaluated and ignored, and every open bracket halves each round:
    no per-round width test is needed.
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


def _rounds_until_done(evaluate: Evaluate, config: CalibConfig, points: torch.Tensor):
    """``resolution=0``: after each round the host reads whether every head is done (up to ``max_iters``
    rounds after the first). Returns (chosen, chosen_err, rounds run after the first)."""
    lo, hi, done, chosen, chosen_err = _first_round(evaluate, config, points)
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


def _rounds_to_resolution(config: CalibConfig, width: float) -> int:
    """Rounds after the first until a bracket ``width`` wide is at most ``resolution`` wide (``max_iters`` at
    most): each round divides the width by ``candidates_per_round + 1``."""
    rounds = 0
    while width > config.resolution and rounds < config.max_iters:
        width /= config.candidates_per_round + 1
        rounds += 1
    return rounds
