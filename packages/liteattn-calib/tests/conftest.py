"""Shared fixtures: a plain model of LiteAttention layers fed with the synthetic video workload."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from liteattn import LiteAttention, dispatch
from liteattn.backend import Capabilities
from liteattn.reference import ReferenceBackend
from liteattn.testing import video_qkv

# The reference backend runs many tiny ops; on a shared 2-core machine, threads fighting over them cost 5x.
torch.set_num_threads(1)

NUM_STEPS = 4
SHAPE = dict(frames=2, height=4, width=8, head_dim=16)  # 64 tokens: 4 x 4 tiles of 16


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = LiteAttention(block_m=16, block_n=16)
        self.norm = nn.Identity()


class PlainModel(nn.Module):
    """Each block attends the same synthetic Q/K/V: the step's workload, sharper with every step."""

    def __init__(self, layers: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(Block() for _ in range(layers))

    def forward(self, q, k, v):
        return torch.stack([block.attn(q, k, v) for block in self.blocks])


def workload(step: int, heads: int = 4, batch: int = 1, seed: int = 0):
    return video_qkv(batch=batch, heads=heads, step=step, num_steps=NUM_STEPS, seed=seed, **SHAPE)


def run_steps(model, registry, steps: int = NUM_STEPS, heads: int = 4):
    """One denoising loop; returns the outputs per step."""
    outs = []
    for i in range(steps):
        with registry.timestep(i):
            outs.append(model(*workload(i, heads)))
    return outs


@pytest.fixture
def model():
    torch.manual_seed(0)
    return PlainModel()


FAST = dict(progress=False, max_iters=12)


class ReferenceWithoutGaps(ReferenceBackend):
    """The reference, minus tile gaps: what calibration sees with a backend that cannot report them."""

    name, priority = "nogaps", 99

    def capabilities(self):
        caps = super().capabilities()
        return Capabilities(caps.devices, caps.dtypes, caps.head_dims, caps.int8, caps.writes_state)


@pytest.fixture
def nogaps_backend(monkeypatch):
    """Register :class:`ReferenceWithoutGaps` as backend ``"nogaps"`` next to the reference."""
    registered = {"reference": ReferenceBackend, "nogaps": ReferenceWithoutGaps}
    monkeypatch.setattr(dispatch, "_registered", lambda: registered)
    monkeypatch.setattr(dispatch, "_load", lambda name: registered[name]())
    return "nogaps"


def previous_bisect(evaluate, heads: int, config):
    """The bisection as it was when every candidate had a call of its own: ``evaluate(thresholds (H,)) ->
    errors (H,)``, the upper endpoint alone first. Returns (thresholds, errors, evaluations): the oracle that
    the rounds of :func:`liteattn_calib.bisect.bisect_thresholds` must reproduce."""
    target = config.target_error
    upper = torch.full((heads,), config.upper, dtype=torch.float32)
    lower = torch.full((heads,), config.lower, dtype=torch.float32)
    err_upper = evaluate(upper).double()
    chosen, chosen_err = upper.clone(), err_upper.clone()
    done = err_upper <= target
    evaluations = 1
    if done.all():
        return chosen, chosen_err, evaluations
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
    return chosen, chosen_err, evaluations
