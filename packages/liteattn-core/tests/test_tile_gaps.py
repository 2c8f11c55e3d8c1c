"""probe_tile_gaps: the keep bits of any threshold, read off one call that leaves the state alone."""

import math

import pytest
import torch

import liteattn
from liteattn.functional import probe_tile_gaps
from liteattn.testing import video_qkv


@pytest.mark.parametrize("calls_before", [0, 1])  # ascending and descending visits
def test_keep_bits_from_gaps_equal_the_written_state(calls_before):
    q, k, v = video_qkv(frames=2, height=8, width=12, heads=3, head_dim=32, step=8, num_steps=10)
    ranges = {"must_do_list": [40, 50], "must_skip_list": [150, 160]}
    state = liteattn.SkipState(32, 32)
    for _ in range(calls_before):
        liteattn.lite_attention(q, k, v, state, threshold=-6.0, **ranges)
    before = state.read_bits.clone() if calls_before else None
    probe = probe_tile_gaps(q, k, v, state, **ranges)
    assert state.call_count == calls_before  # the probe reads the state and writes nothing
    if before is not None:
        assert torch.equal(state.read_bits, before)
    for threshold in ([-12.0, -12.0, -12.0], [-6.0, -3.0, -1.0], [0.0, -0.5, -math.inf]):
        written = state.clone()
        out = liteattn.lite_attention(q, k, v, written, threshold=threshold, **ranges)
        expected = written.read_bits  # what the call wrote, must-do tiles included
        from_gaps = probe.keep_bits(torch.tensor(threshold)) | probe.forced_bits
        assert torch.equal(from_gaps, expected)
        assert torch.equal(out, probe.out)  # the output never depends on the threshold


def test_gaps_of_tiles_not_computed_are_minus_inf():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=10)
    state = liteattn.SkipState(32, 32)
    liteattn.lite_attention(q, k, v, state, threshold=-2.0)
    probe = probe_tile_gaps(q, k, v, state)
    dropped = ~state.keep_mask()
    assert dropped.any() and torch.all(probe.gaps[dropped] == -math.inf)
    assert torch.all(probe.gaps[~dropped] > -math.inf)


def test_backend_without_gaps_reports_none(monkeypatch):
    from liteattn import dispatch
    from liteattn.backend import Capabilities
    from liteattn.reference import ReferenceBackend

    class NoGaps(ReferenceBackend):
        name, priority = "nogaps", 99

        def capabilities(self):
            caps = super().capabilities()
            return Capabilities(caps.devices, caps.dtypes, caps.head_dims, caps.int8, caps.writes_state)

    registered = {"reference": ReferenceBackend, "nogaps": NoGaps}
    monkeypatch.setattr(dispatch, "_registered", lambda: registered)
    monkeypatch.setattr(dispatch, "_load", lambda name: registered[name]())
    q = torch.randn(1, 64, 2, 32)
    probe = probe_tile_gaps(q, q, q, liteattn.SkipState(32, 32))
    assert probe.gaps is None and probe.out.shape == q.shape
