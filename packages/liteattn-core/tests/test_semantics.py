"""The skip-state contract of docs/semantics.rst, checked through the public API."""

import math

import pytest
import torch

import liteattn
from conftest import sdpa
from liteattn.testing import rel_error, video_qkv


def _random(q_len=256, k_len=256, heads=2, dim=32, batch=1):
    return (torch.randn(batch, q_len, heads, dim), torch.randn(batch, k_len, heads, dim),
            torch.randn(batch, k_len, heads, dim))


def test_first_call_computes_everything_and_writes_state():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=10)
    attn = liteattn.LiteAttention(threshold=-4.0, block_m=32, block_n=32)
    out = attn(q, k, v)
    assert attn.last_sparsity == 0.0
    assert rel_error(out, sdpa(q, k, v)) < 1e-5
    assert attn.skip_state.sparsity() > 0.0  # the next call will skip


def test_skip_all_keeps_exactly_the_first_visited_tile(monkeypatch):
    monkeypatch.setenv("LITEATTN_DEBUG", "1")
    q, k, v = _random(q_len=100, k_len=200)
    attn = liteattn.LiteAttention(threshold=1e9, block_m=32, block_n=32)  # no tile after the first passes
    attn(q, k, v)  # ascending: tile 0 is met first
    keep = attn.skip_state.keep_mask()
    assert keep[..., 0].all() and not keep[..., 1:].any()
    attn(q, k, v)  # descending over what is left: still tile 0 only
    keep = attn.skip_state.keep_mask()
    assert keep[..., 0].all() and not keep[..., 1:].any()
    assert attn.last_sparsity == pytest.approx(6 / 7)


def test_visit_direction_alternates(monkeypatch):
    monkeypatch.setenv("LITEATTN_DEBUG", "1")
    q, k, v = _random(q_len=64, k_len=128)
    state = liteattn.SkipState(32, 32)
    liteattn.lite_attention(q, k, v, state, threshold=-math.inf)  # call 0: ascending, keeps everything
    assert state.reverse
    liteattn.lite_attention(q, k, v, state, threshold=1e9)  # call 1: descending, so the last tile is first
    keep = state.keep_mask()
    assert keep[..., -1].all() and not keep[..., :-1].any()


def test_sparsity_never_decreases_and_error_stays_small():
    attn = liteattn.LiteAttention(threshold=-10.0, block_m=32, block_n=32)
    previous = 0.0
    for step in range(8):
        q, k, v = video_qkv(frames=4, height=8, width=8, heads=4, head_dim=32, step=step, num_steps=8)
        out = attn(q, k, v)
        assert attn.last_sparsity >= previous
        previous = attn.last_sparsity
        assert rel_error(out, sdpa(q, k, v)) < 1e-2
    assert previous > 0.2


def test_dropped_tiles_are_never_recomputed():
    attn = liteattn.LiteAttention(threshold=-3.0, block_m=32, block_n=32)
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=10)
    attn(q, k, v)
    dropped = ~attn.skip_state.keep_mask()
    for _ in range(3):  # even on unstructured inputs, where those tiles would matter
        attn(torch.randn_like(q), torch.randn_like(k), v)
        assert not attn.skip_state.keep_mask()[dropped].any()


def test_per_head_thresholds_differ():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=10)
    state = liteattn.SkipState(32, 32)
    liteattn.lite_attention(q, k, v, state, threshold=[-math.inf, -2.0])
    per_head = 1 - state.keep_mask().float().mean(dim=(0, 2, 3))
    assert per_head[0] == 0.0 and per_head[1] > 0.0


def test_disabled_skipping_is_dense_and_leaves_state():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=10)
    attn = liteattn.LiteAttention(threshold=-2.0, block_m=32, block_n=32)
    attn(q, k, v)
    before = attn.skip_state.read_bits.clone()
    attn.enable_skip_optimization(False)
    out = attn(q, k, v)
    assert rel_error(out, sdpa(q, k, v)) < 1e-5 and attn.last_sparsity == 0.0
    assert torch.equal(attn.skip_state.read_bits, before)
    attn.enable_skip_optimization(True)
    attn(q, k, v)
    assert attn.last_sparsity > 0.0


def test_reset_and_shape_change():
    attn = liteattn.LiteAttention(threshold=-2.0, block_m=32, block_n=32)
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=32, step=10)
    attn(q, k, v)
    assert attn.skip_state.sparsity() > 0
    attn.reset_skip_state()
    assert attn.skip_state.sparsity() == 0.0 and attn.skip_state.call_count == 0
    attn(q, k, v)
    with pytest.warns(UserWarning, match="skip state is reset"):
        attn(q[:, :100], k[:, :100], v[:, :100])
    assert attn.last_sparsity == 0.0 and attn.skip_state.shape_key.q_len == 100
    attn(torch.cat([q, q]), torch.cat([k, k]), torch.cat([v, v]))  # batch change: reset again, warned once only
    assert attn.skip_state.shape_key.batch == 2 and attn.last_sparsity == 0.0


def test_gqa_state_is_indexed_by_query_heads():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=4, kv_heads=2, head_dim=32, step=10)
    attn = liteattn.LiteAttention(threshold=-4.0, block_m=32, block_n=32)
    out = attn(q, k, v)
    assert attn.skip_state.keep_mask().shape == (1, 4, 4, 4)
    assert rel_error(out, sdpa(q, k, v)) < 1e-5


def test_cross_attention_lengths():
    q, k, v = _random(q_len=77, k_len=333)
    attn = liteattn.LiteAttention(threshold=-5.0, block_m=16, block_n=64)
    out, lse = attn(q, k, v, return_softmax_lse=True)
    assert out.shape == (1, 77, 2, 32) and lse.shape == (1, 2, 77) and lse.dtype == torch.float32
    assert attn.skip_state.keep_mask().shape == (1, 2, 5, 6)


def test_verbose_logs_sparsity(monkeypatch, caplog):
    monkeypatch.setenv("LITEATTN_VERBOSE", "1")
    with caplog.at_level("INFO", logger="liteattn"):
        liteattn.lite_attention(*_random(64, 64))
    assert "sparsity 0.000" in caplog.text
