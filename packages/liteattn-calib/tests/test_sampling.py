"""The cost of a calibrated call: candidates on a sample of query tiles, the committed call read off the probe."""

import pytest
import torch
from pydantic import ValidationError

import liteattn
from conftest import FAST, NUM_STEPS, PlainModel, run_steps, workload
from liteattn.functional import run_attention
from liteattn.reference import ReferenceBackend
from liteattn.testing import video_qkv
from liteattn_calib import CalibConfig, LiteAttentionRegistry, calibrate_call, read_file
from liteattn_calib.calibrate import sample_query_tiles

RANGES = dict(must_do_list=[40, 48], must_skip_list=[96, 112])  # forced and excluded key tiles
Q_TILES = 8  # 128 rows in tiles of 16


def _inputs():
    return video_qkv(frames=2, height=8, width=8, heads=3, head_dim=32, step=6, num_steps=10)


def _inherited_state(backend=None):
    state = liteattn.SkipState(16, 16)
    liteattn.lite_attention(
        *video_qkv(frames=2, height=8, width=8, heads=3, head_dim=32, step=5, num_steps=10),
        state,
        threshold=-12.0,
        backend=backend,
        **RANGES,
    )
    return state


def _calibrate(state, sample, target=0.01, backend=None, commit=False):
    config = CalibConfig(target_error=target, sample_query_tiles=sample, progress=False)
    return calibrate_call(
        *_inputs(), state, config, commit=commit, scale=None, use_int8=False, backend=backend, **RANGES
    )


@pytest.fixture
def calls(monkeypatch):
    """The query length of every reference forward, in order."""
    seen = []
    forward = ReferenceBackend.forward

    def counting(self, call):
        seen.append(call.q_len)
        return forward(self, call)

    monkeypatch.setattr(ReferenceBackend, "forward", counting)
    return seen


def test_sample_of_every_tile_is_no_sample():
    baseline = _calibrate(_inherited_state(), None)
    assert baseline.evaluations > 2 and baseline.thresholds.unique().numel() > 1
    for sample in (Q_TILES, Q_TILES + 5, 1000):
        result = _calibrate(_inherited_state(), sample)
        assert torch.equal(result.thresholds, baseline.thresholds)
        assert torch.equal(result.errors, baseline.errors)
        assert result.evaluations == baseline.evaluations


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7])
def test_sampled_tiles_are_evenly_spaced_and_fixed(count):
    tiles = sample_query_tiles(Q_TILES, count)
    assert tiles.tolist() == sorted(set(tiles.tolist())) and len(tiles) == count
    assert 0 <= tiles[0] and tiles[-1] < Q_TILES
    assert torch.equal(tiles, sample_query_tiles(Q_TILES, count))
    assert sample_query_tiles(Q_TILES, Q_TILES) is None and sample_query_tiles(Q_TILES, None) is None
    assert sample_query_tiles(256, 16).tolist() == list(range(8, 256, 16))


@pytest.mark.parametrize("sample", [2, 3])
def test_sampled_thresholds_are_monotone_in_the_target(sample):
    previous = None
    for target in (0.001, 0.005, 0.02, 0.1):
        thresholds = _calibrate(_inherited_state(), sample, target=target).thresholds
        if previous is not None:
            assert (thresholds >= previous).all(), f"target {target}: {thresholds.tolist()} < {previous.tolist()}"
        previous = thresholds
    assert previous.max() > -20


@pytest.mark.parametrize("sample", [None, 3])
@pytest.mark.parametrize("gaps", [True, False])
def test_committed_state_is_the_call_at_the_chosen_thresholds(sample, gaps, request):
    backend = None if gaps else request.getfixturevalue("nogaps_backend")
    state = _inherited_state(backend)
    before = state.clone()
    result = _calibrate(state, sample, backend=backend, commit=True)
    out, lse, sparsity = run_attention(
        *_inputs(), before, threshold=result.thresholds, scale=None, use_int8=False, backend=backend, **RANGES
    )
    assert torch.equal(result.out, out) and torch.equal(result.lse, lse) and result.sparsity == sparsity
    assert state.call_count == before.call_count == 2 and state.last_sparsity == before.last_sparsity
    assert torch.equal(state.read_bits, before.read_bits) and torch.equal(state.write_bits, before.write_bits)


def test_gap_path_equals_two_call_path_on_a_sample(nogaps_backend):
    with_gaps = _calibrate(_inherited_state(), 3)
    without_gaps = _calibrate(_inherited_state(nogaps_backend), 3, backend=nogaps_backend)
    assert torch.equal(with_gaps.thresholds, without_gaps.thresholds)
    assert torch.allclose(with_gaps.errors, without_gaps.errors, rtol=1e-5, atol=1e-9)
    assert with_gaps.evaluations == without_gaps.evaluations


def test_with_gaps_one_full_call_and_one_sampled_call_per_round(calls):
    state = _inherited_state()
    calls.clear()
    result = _calibrate(state, 3, commit=True)
    # The probe (passed on and committed), then B of each round: the two endpoints share the first.
    assert calls == [128] + [3 * 16] * result.rounds and result.evaluations == result.rounds + 1


def test_without_gaps_two_sampled_calls_per_candidate_then_the_call(calls, nogaps_backend):
    state = _inherited_state(nogaps_backend)
    calls.clear()  # the nogaps backend subclasses the reference: its calls are counted too
    result = _calibrate(state, 3, backend=nogaps_backend, commit=True)
    assert calls == [48] * (2 * result.evaluations) + [128]


def test_registry_step_costs_one_full_call_plus_sampled_candidates(calls):
    model = PlainModel(layers=1)
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=dict(FAST, sample_query_tiles=2))
    for step in range(NUM_STEPS):  # 64 rows in tiles of 16; a sample of 2 tiles is 32 rows
        calls.clear()
        with registry.timestep(step):
            model(*workload(step))
        assert calls[0] == 64 and calls[1:] == [32] * (len(calls) - 1)
        assert len(calls) > 2, f"step {step}: {calls}"


def test_sampled_calibration_reloads_exactly(tmp_path):
    model = PlainModel()
    config = dict(FAST, sample_query_tiles=2)
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=config, disabled_steps=1)
    outs = run_steps(model, registry)
    path = registry.save(tmp_path / "sampled.toml", summary=False)
    registry.remove()
    assert read_file(path).calibration.sample_query_tiles == 2
    loaded = LiteAttentionRegistry.from_model(model, mode="load", filename=path)
    loaded.reset()
    for i, out in enumerate(run_steps(model, loaded)):
        assert torch.equal(out, outs[i]), f"step {i} differs after reload"


def test_every_tile_is_not_recorded_in_the_file(tmp_path):
    model = PlainModel(layers=1)
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=dict(FAST, sample_query_tiles=None))
    run_steps(model, registry, steps=1)
    path = registry.save(tmp_path / "all.toml", summary=False)
    assert "sample_query_tiles" not in path.read_text() and read_file(path).calibration.sample_query_tiles is None


@pytest.mark.parametrize("bad", [0, -3, True, 2.5, "16"])
def test_bad_sample_setting_is_named(bad):
    with pytest.raises(ValidationError, match=r"sample_query_tiles must be None \(every query tile\) or an int >= 1"):
        CalibConfig(sample_query_tiles=bad)
