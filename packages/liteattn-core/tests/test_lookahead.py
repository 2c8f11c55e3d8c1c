"""TileGapProbe.lookahead: the next call's output at candidate thresholds equals running that call on a scratch
state, for one candidate or several in one backend call."""

import math

import pytest
import torch

import liteattn
from liteattn.functional import probe_tile_gaps, run_attention
from liteattn.reference import ReferenceBackend
from liteattn.testing import video_qkv

# Must-do tiles 1 and 4.. (boundary, then mid-tile), must-skip mid-tile; tiles of 16 keys.
RANGES = {"must_do_list": [16, 32, 70, 75], "must_skip_list": [40, 50]}
THRESHOLDS = ([-6.0] * 4, [-9.0, -4.5, -1.0, -20.0], [0.0, -0.5, -math.inf, -3.0])


def _inputs(q_len=101, k_len=650):
    """Batch 2, 4 query heads on 2 key/value heads (GQA), odd lengths: the last query and key tiles are partial;
    650 keys are 41 key tiles, two bitmask words."""
    q, k, v = video_qkv(batch=2, frames=3, height=15, width=15, heads=4, kv_heads=2, head_dim=32, step=7)
    return q[:, :q_len].contiguous(), k[:, :k_len].contiguous(), v[:, :k_len].contiguous()


def _state(q, k, v, calls_before):
    state = liteattn.SkipState(16, 16)
    for _ in range(calls_before):
        liteattn.lite_attention(q, k, v, state, threshold=-5.0, **RANGES)
    if calls_before == 0:
        state.prepare(liteattn.skip_state.ShapeKey(q.shape[0], q.shape[2], q.shape[1], k.shape[1], q.shape[3],
                                                   q.device))
    return state


def _next_call_on_scratch(q, k, v, state, probe, thresholds, tiles, use_int8=False):
    """What calibration ran before the lookahead: the probed call's bits at ``thresholds`` on a scratch copy of
    the state (restricted to ``tiles``), then the next call on it."""
    scratch = state.clone() if tiles is None else state.select_query_tiles(tiles)
    scratch.write_bits.copy_(probe.keep_bits(thresholds, tiles))
    scratch.advance(probe.forced_bits)
    query = q if tiles is None else q[:, state.query_rows(tiles)]
    out, _, _ = run_attention(query, k, v, scratch, threshold=thresholds, scale=None, use_int8=use_int8,
                              backend=None, **RANGES)
    return out


@pytest.mark.parametrize("calls_before", [0, 1, 2])  # the next call visits descending, ascending, descending
@pytest.mark.parametrize("tiles", [None, [0, 3, 6], [2]])  # 7 query tiles; tile 6 is partial
def test_lookahead_equals_the_next_call_on_a_scratch_state(calls_before, tiles):
    q, k, v = _inputs()
    state = _state(q, k, v, calls_before)
    probe = probe_tile_gaps(q, k, v, state, **RANGES)
    lookahead = probe.lookahead(None if tiles is None else torch.tensor(tiles))
    rows = slice(None) if tiles is None else state.query_rows(tiles)
    assert torch.equal(lookahead.reference, probe.out[:, rows])
    for thresholds in map(torch.tensor, THRESHOLDS):
        expected = _next_call_on_scratch(q, k, v, state, probe, thresholds, tiles)
        assert torch.equal(lookahead(thresholds), expected)


def test_int8_lookahead_equals_the_next_call_on_a_scratch_state():
    q, k, v = _inputs()
    state = _state(q, k, v, 1)
    probe = probe_tile_gaps(q, k, v, state, use_int8=True, **RANGES)
    lookahead = probe.lookahead([0, 3, 6])
    candidates = torch.tensor(THRESHOLDS)
    together = lookahead(candidates)
    for c, thresholds in enumerate(candidates):
        expected = _next_call_on_scratch(q, k, v, state, probe, thresholds, [0, 3, 6], use_int8=True)
        assert torch.equal(lookahead(thresholds), expected) and torch.equal(together[:, :, :, c], expected)


@pytest.mark.parametrize("calls_before", [0, 1])
def test_candidates_in_one_call_equal_separate_calls(calls_before, monkeypatch):
    q, k, v = _inputs()
    state = _state(q, k, v, calls_before)
    probe = probe_tile_gaps(q, k, v, state, **RANGES)
    lookahead = probe.lookahead(torch.tensor([1, 4, 6]))
    heads = []
    forward = ReferenceBackend.forward

    def counting(self, call):
        heads.append(call.num_heads)
        return forward(self, call)

    monkeypatch.setattr(ReferenceBackend, "forward", counting)
    candidates = torch.tensor(THRESHOLDS)  # (C = 3, H = 4)
    together = lookahead(candidates)
    assert heads == [12] and together.shape == (2, 16 + 16 + 5, 4, 3, 32)
    for c, thresholds in enumerate(candidates):
        separate = lookahead(thresholds)
        assert torch.equal(together[:, :, :, c], separate)
        bits = lookahead.compute_bits(candidates).unflatten(1, (4, 3))[:, :, c]
        assert torch.equal(bits, lookahead.compute_bits(thresholds))


def test_compute_bits_are_the_keep_bits_plus_the_forced_tiles():
    q, k, v = _inputs()
    state = _state(q, k, v, 1)
    probe = probe_tile_gaps(q, k, v, state, **RANGES)
    lookahead = probe.lookahead()
    for thresholds in map(torch.tensor, THRESHOLDS):
        assert torch.equal(lookahead.compute_bits(thresholds), probe.keep_bits(thresholds) | probe.forced_bits)


def test_a_candidate_reads_nothing_back_to_the_host():
    q, k, v = _inputs()
    probe = probe_tile_gaps(q, k, v, _state(q, k, v, 1), **RANGES)
    lookahead = probe.lookahead(torch.tensor([1, 4]))
    candidates = torch.tensor(THRESHOLDS[:2])
    lookahead(candidates)  # builds the call for two candidates
    with torch.profiler.profile() as prof:
        lookahead(candidates)
    assert not [e.name for e in prof.events() if e.name in ("aten::_local_scalar_dense", "aten::item")]


def test_lookahead_needs_gaps_and_valid_tiles(monkeypatch):
    q, k, v = _inputs()
    probe = probe_tile_gaps(q, k, v, _state(q, k, v, 1))
    for tiles in ([2, 1], [0, 7], [], [0.5]):
        with pytest.raises(ValueError, match="query tiles must be"):
            probe.lookahead(tiles)
    monkeypatch.setattr(ReferenceBackend, "capabilities", lambda self: liteattn.Capabilities(
        frozenset({"cpu"}), frozenset({torch.float32}), frozenset({32})))
    without_gaps = probe_tile_gaps(q, k, v, _state(q, k, v, 1))
    with pytest.raises(ValueError, match="no tile gaps"):
        without_gaps.lookahead()


def test_a_lookahead_on_other_buffers_computes_what_their_contents_give():
    """What a captured graph relies on: a twin reading buffers of the same layout, refreshed after the buffers
    take another probe's contents, gives that probe's lookahead, for one candidate and several."""
    q, k, v = _inputs()
    first = probe_tile_gaps(q, k, v, _state(q, k, v, 1), **RANGES).lookahead([0, 3, 6])
    q2, k2, v2 = (x + 0.5 * torch.randn_like(x) for x in (q, k, v))
    second = probe_tile_gaps(q2, k2, v2, _state(q2, k2, v2, 1), **RANGES).lookahead([0, 3, 6])
    assert first.constants() == second.constants()
    buffers = {name: t.clone() for name, t in first.buffers().items()}
    twin = first.on_buffers(buffers)
    candidates = torch.tensor(THRESHOLDS)
    assert torch.equal(twin(candidates), first(candidates)) and torch.equal(twin(candidates[1]), first(candidates[1]))
    for name, t in second.buffers().items():
        buffers[name].copy_(t)
    twin.refresh()
    assert torch.equal(twin(candidates), second(candidates)) and torch.equal(twin(candidates[1]), second(candidates[1]))
    assert twin.reference is None and twin.heads == first.heads
    with pytest.raises(ValueError, match="shapes, strides"):
        first.on_buffers({**buffers, "q": buffers["q"][:, :-1]})
