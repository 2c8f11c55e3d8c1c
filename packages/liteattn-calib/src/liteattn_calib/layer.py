"""One controlled attention layer: its skip states (one per call of a step) and what each step ran."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from liteattn import LiteAttention
from liteattn.skip_state import SkipState

from .calibrate import scratch_copy

__all__ = ["Layer"]


@dataclass
class Layer:
    """Bookkeeping of one :class:`~liteattn.LiteAttention` under a registry.

    A step may call the layer more than once (classifier-free guidance run as two sequential passes): call
    ``c`` of every step reads and writes its own skip state, so the conditional and unconditional passes never
    read each other's decisions. Call 0 uses the module's own state; later calls get copies made on demand.
    """

    name: str
    module: LiteAttention
    heads: int | None = None
    head_dim: int | None = None
    extra_states: list[SkipState] = field(default_factory=list)
    calls: dict[int, int] = field(default_factory=dict)  # step -> calls made so far
    # step -> what call 0 ran: "disabled" or its thresholds (a tensor, on the device for calibrated steps)
    used: dict[int, str | torch.Tensor] = field(default_factory=dict)
    chosen: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> calibrated thresholds (H,)
    errors: dict[int, torch.Tensor] = field(default_factory=dict)  # step -> calibration error per head
    sparsity: dict[int, list[float]] = field(default_factory=dict)  # step -> sparsity of each call

    def next_call(self, step: int) -> int:
        index = self.calls.get(step, 0)
        self.calls[step] = index + 1
        return index

    def state(self, call: int) -> SkipState:
        if call == 0:
            return self.module.skip_state
        while len(self.extra_states) < call:
            fresh = scratch_copy(self.module.skip_state)
            fresh.reset()
            self.extra_states.append(fresh)
        return self.extra_states[call - 1]

    def reset(self) -> None:
        """Start a new video: every state computes every tile at its next call."""
        self.module.reset_skip_state()
        for state in self.extra_states:
            state.reset()
        self.calls.clear()
