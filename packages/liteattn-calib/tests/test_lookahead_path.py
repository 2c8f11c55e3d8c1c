"""Calibrating through the probe's lookahead and a prepared error meter picks what one scratch-state call per
candidate picked, and a round reads nothing back but its errors."""

import pytest
import torch

import liteattn
from conftest import previous_bisect
from liteattn.functional import probe_tile_gaps, run_attention
from liteattn.testing import video_qkv
from liteattn_calib import CalibConfig, calibrate_call, per_head_error
from liteattn_calib.calibrate import sample_query_tiles
from liteattn_calib.metrics import ErrorMeter

RANGES = dict(must_do_list=[40, 48], must_skip_list=[96, 104])
TARGETS = {"rel_l1": 0.01, "cosine": 1e-4, "rmse": 0.003}


def _definition(metric, a, b):
    """The metrics as defined, per head, in float64."""
    a, b = (x.double().permute(2, 0, 1, 3).flatten(1) for x in (a, b))
    if metric == "rel_l1":
        return (a - b).abs().sum(-1) / a.abs().sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
    if metric == "cosine":
        return (1 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30)).clamp_min(0)
    return (a - b).pow(2).mean(-1).sqrt()


@pytest.mark.parametrize("metric", sorted(TARGETS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meter_agrees_with_the_definition_and_per_head_error(metric, dtype):
    g = torch.Generator().manual_seed(3)
    a = torch.randn(2, 37, 3, 8, generator=g).to(dtype)
    a[:, :, 2] = 0  # a head whose reference is 0
    candidates = [(a.double() + 0.1 * c * torch.randn(a.shape, generator=g)).to(dtype) for c in range(3)]
    candidates[0][:, :, 2] = 0
    meter = ErrorMeter(metric, a)
    together = meter(torch.stack(candidates, dim=3))  # (B, S, H, C, D) -> (C, H)
    assert together.shape == (3, 3) and together.dtype == torch.float64
    for c, b in enumerate(candidates):
        assert torch.equal(meter(b), together[c])
        assert torch.equal(per_head_error(metric, a, b), meter(b))
        assert torch.allclose(meter(b), _definition(metric, a, b), rtol=1e-12, atol=1e-15)
    assert meter(a)[:2].abs().max() < 1e-12 and meter(candidates[0])[2] == (0 if metric != "cosine" else 1)


def _inherited(calls):
    state = liteattn.SkipState(16, 16)
    for step in range(calls):
        liteattn.lite_attention(*video_qkv(frames=2, height=8, width=8, heads=3, head_dim=32, step=step + 4),
                                state, threshold=-12.0, **RANGES)
    return state


def _previous_calibration(q, k, v, state, config):
    """One scratch-state call per candidate, and the bisection that evaluated one candidate per call."""
    probe = probe_tile_gaps(q, k, v, state, **RANGES)
    tiles = sample_query_tiles(state.q_tiles, config.sample_query_tiles)
    rows = slice(None) if tiles is None else state.query_rows(tiles)

    def evaluate(thresholds):
        scratch = state.clone() if tiles is None else state.select_query_tiles(tiles)
        scratch.write_bits.copy_(probe.keep_bits(thresholds, tiles))
        scratch.advance(probe.forced_bits)
        b, _, _ = run_attention(q[:, rows], k, v, scratch, threshold=thresholds, scale=None, use_int8=False,
                                backend=None, **RANGES)
        return _definition(config.metric, probe.out[:, rows], b)

    return previous_bisect(evaluate, q.shape[2], config)


@pytest.mark.parametrize("metric", sorted(TARGETS))
@pytest.mark.parametrize("sample, calls", [(3, 1), (None, 2)])  # both visit directions
def test_lookahead_calibration_picks_what_a_call_per_candidate_picked(metric, sample, calls):
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=3, head_dim=32, step=6, num_steps=10)
    config = CalibConfig(target_error=TARGETS[metric], metric=metric, sample_query_tiles=sample, progress=False)
    thresholds, errors, evaluations = _previous_calibration(q, k, v, _inherited(calls), config)
    result = calibrate_call(q, k, v, _inherited(calls), config, scale=None, use_int8=False, backend=None,
                            **RANGES)
    assert torch.equal(result.thresholds, thresholds)
    assert torch.allclose(result.errors, errors, rtol=1e-12, atol=1e-15)
    # The rounds after the first run to the resolution without looking back (20 / 2^11 <= 1/64).
    assert result.evaluations == 2 + 11 and result.rounds == result.evaluations - 1
    assert thresholds.unique().numel() > 1 and evaluations > 2  # heads differ, and they were bisected


def test_a_round_reads_back_only_its_errors():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=3, head_dim=32, step=6, num_steps=10)
    probe = probe_tile_gaps(q, k, v, _inherited(1), **RANGES)
    lookahead = probe.lookahead(sample_query_tiles(8, 3))
    meter = ErrorMeter("rel_l1", lookahead.reference)
    candidates = torch.tensor([[0.0, -5.0, -9.0], [-20.0, -20.0, -20.0]])
    meter(lookahead(candidates))  # builds the call for two candidates
    with torch.profiler.profile() as prof:
        errors = meter(lookahead(candidates))
    assert not [e.name for e in prof.events() if e.name in ("aten::_local_scalar_dense", "aten::item")]
    assert errors.shape == (2, 3)
