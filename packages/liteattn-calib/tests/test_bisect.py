import math

import pytest
import torch

from conftest import previous_bisect
from liteattn_calib.bisect import bisect_thresholds
from liteattn_calib.settings import CalibConfig


def smooth_error(scale):
    """error(t) = scale * 2^t per head: monotone in the threshold t, like skipping more tiles."""
    scale = torch.as_tensor(scale, dtype=torch.float64)
    return lambda t: scale * torch.exp2(t.double())


def test_endpoint_rules():
    config = CalibConfig(target_error=0.01, resolution=0)
    # head 0: error at 0 under target -> 0; head 1: error at -20 over target -> -20; head 2: bisected
    result = bisect_thresholds(smooth_error([0.005, 1e9, 1.0]), 3, config)
    assert result.thresholds[0] == 0.0
    assert result.thresholds[1] == -20.0
    assert -20 < result.thresholds[2] < 0
    err = 2.0 ** result.thresholds[2].item()
    assert 0.009 <= err <= 0.01  # met within 10%


def test_heads_bisect_together_with_their_own_brackets():
    config = CalibConfig(target_error=0.01, resolution=0)
    calls = []
    error = smooth_error([1.0, 100.0, 0.1])
    result = bisect_thresholds(lambda t: calls.append(t.clone()) or error(t), 3, config)
    assert result.rounds == len(calls) and result.evaluations == len(calls) + 1 <= 32
    assert calls[0].shape == (2, 3) and all(t.shape == (1, 3) for t in calls[1:])  # both endpoints, then halvings
    assert result.thresholds[0] > result.thresholds[1]  # the noisier head needs a lower threshold
    assert result.thresholds[2] > result.thresholds[0]
    assert (result.errors <= 0.01).all()


def test_max_iters_and_resolution_stop():
    step = lambda t: torch.where(t > -7.3, 1.0, 0.0).double()  # noqa: E731 - a window that can't be met
    capped = bisect_thresholds(step, 1, CalibConfig(max_iters=5, resolution=0))
    assert capped.evaluations == 2 + 5
    fine = bisect_thresholds(step, 1, CalibConfig(max_iters=30, resolution=0))
    assert fine.evaluations == 2 + 30 and -7.3 - 1e-4 < fine.thresholds[0] <= -7.3
    coarse = bisect_thresholds(step, 1, CalibConfig(resolution=1 / 64))
    assert coarse.evaluations < 20 and -7.3 - 1 / 64 <= coarse.thresholds[0] <= -7.3


@pytest.mark.parametrize("tight, loose", [(0.001, 0.01), (0.01, 0.011), (0.003, 0.3)])
def test_looser_target_never_lower_on_same_error(tight, loose):
    g = torch.Generator().manual_seed(1)
    levels = torch.sort(torch.rand(40, generator=g).double()).values
    edges = torch.linspace(-20, 0, 40).double()
    error = lambda t: levels[torch.searchsorted(edges, t.double()).clamp(max=39)]  # noqa: E731 - stepwise, monotone
    a = bisect_thresholds(error, 1, CalibConfig(target_error=tight))
    b = bisect_thresholds(error, 1, CalibConfig(target_error=loose))
    assert b.thresholds[0] >= a.thresholds[0]


def test_bad_bracket_rejected():
    with pytest.raises(ValueError, match="lower < upper"):
        CalibConfig(lower=0.0, upper=-1.0)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [1e-3, 0.02, 0.3, 0.99])
def test_rounds_choose_what_one_candidate_per_call_chose(seed, target):
    """Both endpoints in one round, then one halving per round: the thresholds and errors of the bisection that
    evaluated one candidate per call (which stopped after ``upper`` when every head met the target there)."""
    g = torch.Generator().manual_seed(seed)
    heads = 5
    levels = torch.sort(torch.rand(heads, 40, generator=g).double() ** 3, dim=-1).values  # monotone, per head
    edges = torch.linspace(-20, 0, 40).double()

    def error(t):  # (..., H) -> (..., H), each head its own step function
        index = torch.searchsorted(edges, t.double().contiguous()).clamp(max=39)
        return levels.gather(1, index.reshape(-1, heads).t()).t().reshape(t.shape)

    for resolution, max_iters in ((1 / 64, 30), (0, 30), (0, 4)):
        config = CalibConfig(target_error=target, resolution=resolution, max_iters=max_iters)
        thresholds, errors, evaluations = previous_bisect(error, heads, config)
        result = bisect_thresholds(error, heads, config)
        assert torch.equal(result.thresholds, thresholds) and torch.equal(result.errors, errors)
        assert result.rounds == result.evaluations - 1
        if resolution == 0:  # stops as soon as every head is done
            assert result.evaluations == max(evaluations, 2)
        else:  # the rounds to reach the resolution run without looking back: 20 / 2^11 <= 1/64
            assert result.evaluations == 2 + 11


@pytest.mark.parametrize("k", [2, 3, 7])
def test_several_candidates_per_round_keep_the_rules(k):
    error = smooth_error([0.005, 1e9, 1.0, 30.0])  # upper, lower, and two heads in between
    calls = []
    one = bisect_thresholds(error, 4, CalibConfig(target_error=0.01, resolution=0))
    many = bisect_thresholds(lambda t: calls.append(t.clone()) or error(t), 4,
                             CalibConfig(target_error=0.01, resolution=0, candidates_per_round=k))
    assert calls[0].shape == (2, 4) and all(t.shape == (k, 4) for t in calls[1:])
    assert (calls[1][1:, 2:] > calls[1][:-1, 2:]).all()  # evenly spaced, ascending (heads 0, 1 hold their answer)
    assert many.thresholds[0] == 0.0 and many.thresholds[1] == -20.0
    err = error(many.thresholds)
    assert ((0.009 <= err[2:]) & (err[2:] <= 0.01)).all()  # met within 10%, as with halvings
    assert many.rounds < one.rounds and many.evaluations == 2 + k * (many.rounds - 1)


@pytest.mark.parametrize("k", [1, 3])
def test_several_candidates_resolution_and_step_edge(k):
    step = lambda t: torch.where(t > -7.3, 1.0, 0.0).double()  # noqa: E731 - a window that can't be met
    result = bisect_thresholds(step, 1, CalibConfig(resolution=1 / 64, candidates_per_round=k))
    assert -7.3 - 1 / 64 <= result.thresholds[0] <= -7.3 and result.errors[0] == 0.0


def test_rounds_read_nothing_back():
    """On a GPU a read of a result waits for the queue: with resolution > 0 the bisection reads nothing, not even
    whether the first round settled every head (it runs the rounds the resolution needs)."""
    error = smooth_error([1.0, 100.0, 0.1])
    with torch.profiler.profile() as prof:
        result = bisect_thresholds(error, 3, CalibConfig(target_error=0.01))
        warm = bisect_thresholds(error, 3, CalibConfig(target_error=0.01), start=result.thresholds)
    reads = [e.name for e in prof.events() if e.name == "aten::_local_scalar_dense"]
    assert reads == [] and result.rounds == 1 + 11 and warm.rounds == 1 + 7


STEP_EDGE = -7.3


def step_error(t):
    """1 above the edge, 0 at or below it: the 10% window is empty, so the bisection runs to the resolution."""
    return torch.where(t > STEP_EDGE, 1.0, 0.0).double()


@pytest.mark.parametrize("start", [-7.0, -7.3, -7.6, -6.8])
def test_warm_start_inside_its_window_chooses_what_halving_the_range_chooses(start):
    config = CalibConfig()
    calls = []
    cold = bisect_thresholds(step_error, 1, config)
    warm = bisect_thresholds(lambda t: calls.append(t.clone()) or step_error(t), 1, config,
                             start=torch.tensor([start]))
    assert torch.equal(warm.thresholds, cold.thresholds) and torch.equal(warm.errors, cold.errors)
    assert calls[0].shape == (4, 1) and calls[0][0] == -20.0 and calls[0][-1] == 0.0
    window = calls[0][1:3, 0]
    assert window[0] <= STEP_EDGE < window[1] and window[1] - window[0] >= config.warm_window
    assert (warm.rounds, warm.evaluations) == (1 + 7, 4 + 7) and cold.rounds == 1 + 11


@pytest.mark.parametrize("start", [-15.0, -1.0, -20.0, 0.0, -math.inf])
def test_warm_start_outside_its_window_still_meets_the_target(start):
    result = bisect_thresholds(step_error, 1, CalibConfig(), start=torch.tensor([start]))
    assert result.errors[0] == 0.0 and STEP_EDGE - 20 / 2**7 <= result.thresholds[0] <= STEP_EDGE
    assert result.rounds == 1 + 7


def test_warm_start_keeps_the_endpoint_rules():
    error = smooth_error([0.005, 1e9, 1.0])
    result = bisect_thresholds(error, 3, CalibConfig(target_error=0.01), start=torch.tensor([-3.0, -3.0, -6.6]))
    assert result.thresholds[0] == 0.0 and result.thresholds[1] == -20.0
    assert 0.009 <= error(result.thresholds)[2] <= 0.01


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [1e-3, 0.02, 0.3])
def test_warm_start_on_random_step_errors(seed, target):
    """Per head: inside the window the answer is the cold one; outside it the answer still meets the target (or
    is ``lower``), on a grid of its own."""
    g = torch.Generator().manual_seed(seed)
    heads = 8
    levels = torch.sort(torch.rand(heads, 40, generator=g).double() ** 3, dim=-1).values
    edges = torch.linspace(-20, 0, 40).double()

    def error(t):
        index = torch.searchsorted(edges, t.double().contiguous()).clamp(max=39)
        return levels.gather(1, index.reshape(-1, heads).t()).t().reshape(t.shape)

    config = CalibConfig(target_error=target, rel_tolerance=0.0)  # no 10% stop: both run to the resolution
    cold = bisect_thresholds(error, heads, config)
    # Within a quarter of the window of the answer the window brackets it; 2 or more away it does not (unless
    # clamped to an endpoint).
    start = cold.thresholds + torch.tensor([0.1, -0.2, 0.3, -0.05, 2.5, -3.0, 4.0, -2.2])
    calls = []
    warm = bisect_thresholds(lambda t: calls.append(t.clone()) or error(t), heads, config, start=start)
    inside = (calls[0][1] <= cold.thresholds) & (cold.thresholds < calls[0][2])
    assert (inside[:4] | (cold.thresholds[:4] == 0)).all() and (~inside).any()
    assert torch.equal(warm.thresholds[inside], cold.thresholds[inside])
    met = warm.errors <= target
    assert (met | (warm.thresholds == -20.0)).all() and torch.equal(error(warm.thresholds), warm.errors)


def test_warm_start_off():
    start = torch.tensor([-7.0])
    for config in (CalibConfig(warm_start=False), CalibConfig(candidates_per_round=3),
                   CalibConfig(warm_window=20.0)):
        calls = []
        bisect_thresholds(lambda t, calls=calls: calls.append(t.clone()) or step_error(t), 1, config, start=start)
        assert calls[0].shape == (2, 1)


def test_warm_start_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match=r"start must hold one threshold or one per head \(3\); got 2"):
        bisect_thresholds(step_error, 3, CalibConfig(), start=torch.tensor([-7.0, -6.0]))
