"""probe_tile_gaps: the keep bits of any threshold, read off one call that leaves the state alone."""

import math
import warnings

import pytest
import torch

import liteattn
from liteattn.functional import probe_tile_gaps, run_attention, tile_gaps_available
from liteattn.testing import video_qkv

RANGES = {"must_do_list": [40, 50], "must_skip_list": [150, 160]}


def _ranged_state_after(calls_before):
    """The synthetic inputs, their must-do / must-skip ranges, and a state that ran ``calls_before`` calls."""
    q, k, v = video_qkv(frames=2, height=8, width=12, heads=3, head_dim=32, step=8, num_steps=10)
    state = liteattn.SkipState(32, 32)
    for _ in range(calls_before):
        liteattn.lite_attention(q, k, v, state, threshold=-6.0, **RANGES)
    return q, k, v, RANGES, state


@pytest.mark.parametrize("calls_before", [0, 1])  # ascending and descending visits
def test_keep_bits_from_gaps_equal_the_written_state(calls_before):
    q, k, v, ranges, state = _ranged_state_after(calls_before)
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
    assert not tile_gaps_available(q, q, q, liteattn.SkipState(32, 32))
    probe = probe_tile_gaps(q, q, q, liteattn.SkipState(32, 32))
    assert probe.gaps is None and probe.out.shape == q.shape
    with pytest.raises(ValueError, match="no tile gaps"):
        probe.commit(liteattn.SkipState(32, 32), torch.zeros(2))


@pytest.mark.parametrize("calls_before", [0, 1, 2])
def test_commit_advances_the_state_as_the_call_would(calls_before):
    q, k, v, ranges, state = _ranged_state_after(calls_before)
    threshold = torch.tensor([-9.0, -4.5, -1.0])
    ran = state.clone()
    out, lse, sparsity = run_attention(
        q, k, v, ran, threshold=threshold, scale=None, use_int8=False, backend=None, **ranges
    )
    probe = probe_tile_gaps(q, k, v, state, **ranges)
    probe.commit(state, threshold)
    assert torch.equal(probe.out, out) and torch.equal(probe.lse, lse) and probe.sparsity == sparsity
    assert state.call_count == ran.call_count and state.last_sparsity == ran.last_sparsity
    assert torch.equal(state.read_bits, ran.read_bits) and torch.equal(state.write_bits, ran.write_bits)


def test_keep_bits_of_some_query_tiles():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=5)
    probe = probe_tile_gaps(q, k, v, liteattn.SkipState(32, 32))
    threshold = torch.tensor([-5.0, -2.0])
    assert torch.equal(probe.keep_bits(threshold, torch.tensor([1, 3])), probe.keep_bits(threshold)[:, :, [1, 3]])


def test_tile_gaps_available_runs_nothing():
    q = torch.randn(1, 64, 2, 32)
    state = liteattn.SkipState(32, 32)
    assert tile_gaps_available(q, q, q, state, backend="reference")
    assert state.shape_key is None  # not even fitted to the call
    assert not tile_gaps_available(q[:, :0], q, q, state)  # empty inputs are not probed


def test_tile_gaps_available_leaves_a_state_of_another_shape_alone():
    q = torch.randn(1, 64, 2, 32)
    state = liteattn.SkipState(32, 32)
    liteattn.lite_attention(q, q, q, state)
    key, bits = state.shape_key, state.read_bits.clone()
    longer = torch.randn(1, 96, 2, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "input shape changed" warning: nothing is reset
        assert tile_gaps_available(longer, longer, longer, state)
    assert state.shape_key == key and torch.equal(state.read_bits, bits)
