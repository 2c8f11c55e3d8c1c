"""What a calibration aims for (:class:`CalibConfig`) and what one (module, step) runs with (:data:`StepEntry`)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["CALIBRATE", "DISABLED", "CalibConfig", "StepEntry", "entry_label", "normalize_entry"]

DISABLED = "disabled"  # dense, through the same kernels, the skip state untouched
CALIBRATE = "calibrate"  # bisect the threshold at this (module, step); never stored in a file

# One (module, step): dense, one threshold for all heads, or one threshold per head (log2 units, <= 0).
StepEntry = Literal["disabled"] | float | tuple[float, ...]


class CalibConfig(BaseModel):
    """Settings of a calibration run.

    The threshold of each (module, step, head) is bisected on ``[lower, upper]`` (log2 units) until the error
    between A (attention reading the inherited skip state) and B (attention reading the state the candidate
    threshold writes) lies in ``[(1 - rel_tolerance) * target_error, target_error]``, or after ``max_iters``
    bisection steps, or once the bracket is narrower than ``resolution`` (the error of a tiled skip test is
    a step function of the threshold, so the 10% window is often empty and the last halvings only chase the
    step's edge; ``resolution=0`` turns this stop off). The chosen threshold is the largest one tried whose
    error is within the target.

    ``sample_query_tiles`` (default 16) evaluates each candidate on that many evenly spaced query tiles only
    (the same tiles for every candidate of a call): B runs on their query rows and the error is measured
    against A's rows of the same tiles, so a candidate costs ``sample_query_tiles / q_tiles`` of a full call.
    ``None``, or a value at least the call's number of query tiles, evaluates every tile.

    ``candidates_per_round`` (k) thresholds are evaluated per bisection round, in one backend call: the bracket
    shrinks by k + 1 per round instead of 2. A round of k candidates costs less than k rounds of one where the
    sampled call is bound by reading K and V (its k copies of a head share them) and by the host's round
    trip; where it is bound by the tensor cores it costs about k.

    ``warm_start`` (default True): where the same module was calibrated at the previous step, the first
    round also evaluates a window at least ``warm_window`` wide (log2 units) around that step's threshold; when
    it brackets the answer (a threshold moves little from one step to the next) the halvings start from its
    width instead of ``upper - lower``: 7 rounds instead of 11 at the defaults, with the threshold that halving
    the whole range chooses. A head whose threshold left the window is bisected on the rest of the range in as
    many rounds, so it gets a threshold that meets the target at a coarser resolution. It applies with one
    candidate per round (the points of several do not lie on the halving grid).

    ``cuda_graph`` (default True): on a CUDA device, with ``resolution > 0``, the bisection rounds run as one
    replay of a captured CUDA graph instead of a few kernel launches per operation (on an H100 that saved
    about 0.1 ms of launch overhead per round). The result is the same; a graph is captured once per layout
    and settings and re-used by later calls. ``False``, or the environment variable
    ``LITEATTN_CALIB_CUDA_GRAPH=0``, runs them eagerly; so does any capture that fails (with a warning).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_error: float = Field(0.01, gt=0)
    metric: Literal["rel_l1", "cosine", "rmse"] = "rel_l1"
    rel_tolerance: float = Field(0.1, ge=0, lt=1)
    max_iters: int = Field(30, ge=0)
    resolution: float = Field(1 / 64, ge=0)
    lower: float = -20.0
    upper: float = 0.0
    sample_query_tiles: int | None = 16
    candidates_per_round: int = Field(1, ge=1, le=15)
    warm_start: bool = Field(True, strict=True)
    warm_window: float = Field(1.0, gt=0)
    num_steps: int | None = Field(None, ge=1, description="Steps of the run, for the progress bar only")
    progress: bool = True
    cuda_graph: bool = Field(True, strict=True)  # strict: a string such as "0" would otherwise read as False

    @field_validator("sample_query_tiles", mode="before")
    @classmethod
    def _sample(cls, value):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"sample_query_tiles must be None (every query tile) or an int >= 1; got {value!r}")
        return value

    @model_validator(mode="after")
    def _bracket(self) -> CalibConfig:
        if not (math.isfinite(self.lower) and self.lower < self.upper <= 0):
            raise ValueError(f"need a finite lower < upper <= 0 (log2 units); got [{self.lower}, {self.upper}]")
        return self


def normalize_entry(value, where: str) -> StepEntry:
    """Turn a user's value (``"disabled"``, a number, or a sequence of numbers) into a :data:`StepEntry`."""
    if isinstance(value, str):
        if value != DISABLED:
            raise ValueError(f"{where}: expected a number, a list of numbers or {DISABLED!r}; got {value!r}")
        return DISABLED
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _check_threshold(float(value), where)
    try:
        values = tuple(float(_check_number(x, where)) for x in value)
    except TypeError:
        raise ValueError(f"{where}: expected a number, a list of numbers or {DISABLED!r}; got {value!r}") from None
    if not values:
        raise ValueError(f"{where}: a per-head threshold list cannot be empty")
    return tuple(_check_threshold(x, where) for x in values)


def entry_label(entry: StepEntry) -> str:
    if entry == DISABLED:
        return DISABLED
    if isinstance(entry, tuple):
        return "[" + ", ".join(f"{x:g}" for x in entry) + "]"
    return f"{entry:g}"


def _check_number(x, where: str):
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise ValueError(f"{where}: per-head thresholds must be numbers; got {x!r}")
    return x


def _check_threshold(x: float, where: str) -> float:
    if math.isnan(x) or x > 0:
        raise ValueError(f"{where}: thresholds are log2 units <= 0 (or -inf); got {x}")
    return x
