"""The captured-rounds path (liteattn_calib.graphs) on the CPU: when it is chosen, and, with a stand-in for the
CUDA graph, that re-using one capture on new inputs gives what the eager rounds give."""

import pytest
import torch
from pydantic import ValidationError

import liteattn
from liteattn.testing import video_qkv
from liteattn_calib import CalibConfig, calibrate_call
from liteattn_calib.graphs import ENV_SWITCH, RoundGraphs, graphs_enabled

RANGES = dict(must_do_list=[40, 48], must_skip_list=[96, 104])


class ReplayingCapture:
    """Stands in for a CUDA graph: the capture runs ``run`` once for its outputs, and each replay runs it again
    on the same tensors and writes the results into those outputs, as a graph's kernels would."""

    def __init__(self):
        self.captures, self.pools_given = 0, []

    def __call__(self, run, device, pool):
        self.captures += 1
        self.pools_given.append(pool)
        outputs = run()

        def replay():
            for out, new in zip(outputs, run()):
                out.copy_(new)

        return replay, outputs, f"pool of capture {self.captures}"


def failing_capture(run, device, pool):
    raise RuntimeError("operation not permitted when stream is capturing")


def _inputs(step, calls=1, heads=3):
    """A call's Q, K, V and a state that ``calls`` calls advanced (the visit direction flips with each)."""
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=heads, head_dim=32, step=step, num_steps=10, seed=step)
    state = liteattn.SkipState(16, 16)
    for _ in range(calls):
        liteattn.lite_attention(q, k, v, state, threshold=-12.0, **RANGES)
    return q, k, v, state


def _calibrate(step, config, graphs=None, calls=1):
    q, k, v, state = _inputs(step, calls)
    return calibrate_call(q, k, v, state, config, scale=None, use_int8=False, backend="reference",
                          round_graphs=graphs, **RANGES)


def _assert_same(a, b):
    assert torch.equal(a.thresholds, b.thresholds) and torch.equal(a.errors, b.errors)
    assert (a.evaluations, a.rounds) == (b.evaluations, b.rounds)


def test_config_and_environment_switch_graphs_off(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    assert CalibConfig().cuda_graph and graphs_enabled(CalibConfig())
    assert not graphs_enabled(CalibConfig(cuda_graph=False))
    for off in ("0", "false", " OFF ", "no"):
        monkeypatch.setenv(ENV_SWITCH, off)
        assert not graphs_enabled(CalibConfig())
    monkeypatch.setenv(ENV_SWITCH, "1")
    assert graphs_enabled(CalibConfig())


@pytest.mark.parametrize("value", ["0", "yes", 1, None])
def test_cuda_graph_must_be_a_bool(value):
    with pytest.raises(ValidationError, match="cuda_graph"):
        CalibConfig(cuda_graph=value)


def test_graphs_are_chosen_on_cuda_devices_only(monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    graphs, errors = RoundGraphs(), object()  # the errors are not looked at until rounds run
    assert graphs.runner(errors, CalibConfig(), torch.device("cuda", 0)) is not None
    assert graphs.runner(errors, CalibConfig(), "cuda") is not None
    assert graphs.runner(errors, CalibConfig(), "cpu") is None
    assert graphs.runner(errors, CalibConfig(cuda_graph=False), "cuda") is None
    assert graphs.runner(errors, CalibConfig(resolution=0), "cuda") is None  # those rounds read back each round
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert graphs.runner(errors, CalibConfig(), "cuda") is None


def test_a_cpu_calibration_never_captures():
    graphs = RoundGraphs(capture=failing_capture)
    config = CalibConfig(progress=False)
    _assert_same(_calibrate(6, config, graphs), _calibrate(6, config.model_copy(update={"cuda_graph": False})))
    assert graphs.captures == graphs.replays == 0


@pytest.mark.parametrize("update", [{}, {"candidates_per_round": 3}, {"metric": "cosine", "target_error": 1e-4},
                                    {"metric": "rmse", "target_error": 0.003, "sample_query_tiles": None}])
def test_captured_rounds_are_reused_on_new_inputs_and_equal_the_eager_rounds(update):
    config = CalibConfig(progress=False, **update)
    eager = config.model_copy(update={"cuda_graph": False})
    capture = ReplayingCapture()
    graphs = RoundGraphs(capture=capture, device_types=frozenset({"cpu"}))
    for step in (6, 9, 3):  # new Q, K, V, gaps and reference each time; the same layout and direction
        graphed = _calibrate(step, config, graphs)
        _assert_same(graphed, _calibrate(step, eager))
        assert graphed.rounds > 1 and graphed.thresholds.unique().numel() > 1
    assert capture.captures == graphs.captures == 1 and graphs.replays == 3


def test_a_graph_per_direction_over_shared_buffers():
    """The visit direction reaches the kernel as an argument: a graph each, reading the same buffers."""
    config = CalibConfig(progress=False)
    capture = ReplayingCapture()
    graphs = RoundGraphs(capture=capture, device_types=frozenset({"cpu"}))
    for calls in (1, 2, 1, 2):
        _assert_same(_calibrate(6 + calls, config, graphs, calls), _calibrate(6 + calls, config.model_copy(
            update={"cuda_graph": False}), calls=calls))
    assert graphs.captures == 2 and graphs.replays == 4 and len(graphs._buffers) == 1
    assert capture.pools_given == [None, "pool of capture 1"]  # the second graph shares the first one's pool
    graphs.clear()
    assert not graphs._graphs and not graphs._buffers


def test_a_failed_capture_warns_once_and_runs_eagerly():
    config = CalibConfig(progress=False)
    graphs = RoundGraphs(capture=failing_capture, device_types=frozenset({"cpu"}))
    with pytest.warns(RuntimeWarning, match="capturing the bisection rounds in a CUDA graph failed"):
        first = _calibrate(6, config, graphs)
    _assert_same(first, _calibrate(6, config.model_copy(update={"cuda_graph": False})))
    attempts = []
    graphs._capture = lambda run, device, pool: attempts.append(1)  # the failed key is not tried again
    _assert_same(_calibrate(9, config, graphs), _calibrate(9, config.model_copy(update={"cuda_graph": False})))
    assert not attempts and graphs.captures == graphs.replays == 0


def test_unknown_env_switch_value_names_the_variable(monkeypatch):
    monkeypatch.setenv(ENV_SWITCH, "maybe")
    with pytest.raises(ValueError, match=ENV_SWITCH):
        graphs_enabled(CalibConfig())
