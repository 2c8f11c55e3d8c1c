"""On a CUDA device: the bisection rounds captured in a CUDA graph choose exactly what the eager rounds choose,
and a second call with new inputs of the same shape replays the same graph (``-m gpu``; skipped without CUDA)."""

import pytest
import torch

import liteattn
from liteattn.testing import video_qkv
from liteattn_calib import CalibConfig, calibrate_call
from liteattn_calib.graphs import ENV_SWITCH, RoundGraphs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

# (backend, dtype, head_dim, block): the reference at a small size; the kernels at their own tile shapes.
CASES = [("reference", torch.float32, 32, 16), ("triton", torch.bfloat16, 128, None),
         ("cuda", torch.bfloat16, 128, None)]


def _available(backend: str) -> None:
    try:
        reason = liteattn.get_backend(backend).unavailable_reason()
    except Exception as exc:  # noqa: BLE001 - not installed, or its extension does not load
        pytest.skip(f"backend {backend!r}: {exc}")
    if reason:
        pytest.skip(f"backend {backend!r}: {reason}")


def _calibrate(case, step, config, graphs=None):
    backend, dtype, head_dim, block = case
    grid = dict(frames=2, height=8, width=8) if backend == "reference" else dict(frames=4, height=32, width=32)
    q, k, v = video_qkv(heads=4, head_dim=head_dim, step=step, num_steps=10, seed=step, dtype=dtype, device="cuda",
                        **grid)
    state = liteattn.SkipState(block, block)
    liteattn.lite_attention(q, k, v, state, threshold=-12.0, backend=backend)  # an inherited state
    return calibrate_call(q, k, v, state, config, scale=None, use_int8=False, backend=backend,
                          must_do_list=None, must_skip_list=None, round_graphs=graphs)


@pytest.mark.parametrize("candidates", [1, 3])
@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
def test_graphed_rounds_equal_eager_rounds_and_are_reused(case, candidates, monkeypatch):
    monkeypatch.delenv(ENV_SWITCH, raising=False)
    _available(case[0])
    config = CalibConfig(progress=False, candidates_per_round=candidates, sample_query_tiles=4)
    eager = config.model_copy(update={"cuda_graph": False})
    graphs = RoundGraphs()
    for step in (6, 8):  # the second call: new Q, K, V of the same shape
        graphed = _calibrate(case, step, config, graphs)
        expected = _calibrate(case, step, eager, graphs)
        assert torch.equal(graphed.thresholds, expected.thresholds)
        assert torch.equal(graphed.errors, expected.errors)
        assert (graphed.evaluations, graphed.rounds) == (expected.evaluations, expected.rounds)
        assert graphed.rounds > 1, "every head settled at an endpoint: nothing was replayed"
    assert graphs.captures == 1 and graphs.replays == 2
