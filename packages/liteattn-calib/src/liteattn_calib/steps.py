"""Denoising-step tracking: the step advances when the sampler says so, never per forward call.

Under classifier-free guidance a step runs the model once on a doubled batch, or twice in a row; either way
every call between two advances belongs to the same step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm.auto import tqdm

__all__ = ["StepClock"]


class StepClock:
    """Current step, plus an optional progress bar over finished steps."""

    def __init__(self) -> None:
        self.current = 0
        self._finished: set[int] = set()
        self._bar: tqdm | None = None
        self.on_finish: Callable[[int], dict] | None = None  # step -> postfix for the progress bar

    def step(self) -> int:
        """Finish the current step and move to the next; returns the new step index."""
        self._finish(self.current)
        self.current += 1
        return self.current

    def set(self, step: int) -> None:
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0; got {step!r}")
        self.current = step

    @contextmanager
    def timestep(self, step: int) -> Iterator[int]:
        """Run the block at ``step`` (entering the same step twice, e.g. for two CFG passes, is allowed)."""
        self.set(step)
        yield step
        self._finish(step)

    def callback_on_step_end(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """diffusers' ``callback_on_step_end``: step ``step_index`` is done, the next call is step + 1."""
        self._finish(step_index)
        self.set(step_index + 1)
        return callback_kwargs

    def reset(self) -> None:
        self.current = 0
        self._finished.clear()
        if self._bar is not None:
            self._bar.reset()

    def start_progress(self, total: int | None, desc: str) -> None:
        if self._bar is None:
            self._bar = tqdm(total=total, desc=desc, unit="step", leave=True)

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _finish(self, step: int) -> None:
        if step in self._finished:
            return
        self._finished.add(step)
        if self._bar is not None:
            self._bar.update(1)
            if self.on_finish is not None:
                self._bar.set_postfix(self.on_finish(step), refresh=False)
