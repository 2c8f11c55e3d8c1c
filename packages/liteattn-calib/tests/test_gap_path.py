"""Calibrating from tile gaps (one call per candidate) picks what running each candidate would pick."""

import torch

import liteattn
from liteattn.testing import video_qkv
from liteattn_calib import CalibConfig, calibrate_call


def _calibrate(backend):
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=3, head_dim=32, step=6, num_steps=10)
    state = liteattn.SkipState(16, 16)
    liteattn.lite_attention(q, k, v, state, threshold=-12.0, backend=backend)  # an inherited state
    before = state.read_bits.clone()
    result = calibrate_call(q, k, v, state, CalibConfig(target_error=0.01), scale=None, must_do_list=None,
                            must_skip_list=None, use_int8=False, backend=backend)
    assert torch.equal(state.read_bits, before) and state.call_count == 1  # calibration leaves the state
    return result


def test_gap_path_equals_two_call_path(nogaps_backend):
    with_gaps = _calibrate("reference")
    without_gaps = _calibrate(nogaps_backend)
    assert torch.equal(with_gaps.thresholds, without_gaps.thresholds)
    assert torch.equal(with_gaps.errors, without_gaps.errors)
    assert with_gaps.evaluations == without_gaps.evaluations > 1
    assert with_gaps.thresholds.unique().numel() > 1  # heads of different sharpness get different thresholds
