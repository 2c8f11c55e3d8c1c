"""The packed keep-bitmask and the SkipState value."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import liteattn
from liteattn.skip_state import ShapeKey, SkipState, pack_keep_mask, unpack_keep_mask
from liteattn.testing import video_qkv


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 100), st.integers(0, 2**32 - 1))
def test_pack_round_trip(k_tiles, seed):
    mask = torch.rand(2, 3, k_tiles, generator=torch.Generator().manual_seed(seed)) < 0.5
    bits = pack_keep_mask(mask)
    assert bits.dtype == torch.int32 and bits.shape == (2, 3, -(-k_tiles // 32))
    assert torch.equal(unpack_keep_mask(bits, k_tiles), mask)


def test_bit_layout_is_lsb_first():
    mask = torch.zeros(40, dtype=torch.bool)
    mask[[0, 31, 33]] = True
    assert pack_keep_mask(mask).tolist() == [1 - 2**31, 2]


@pytest.mark.parametrize("k_len", [1, 31 * 16, 32 * 16, 33 * 16, 64 * 16, 100 * 16 - 3])
def test_fresh_state_keeps_every_tile_with_the_packed_layout(k_len):
    state = SkipState(16, 16)
    state.prepare(ShapeKey(2, 3, 40, k_len, 32, torch.device("cpu")))
    k_tiles = -(-k_len // 16)
    assert torch.equal(state.read_bits, pack_keep_mask(torch.ones(2, 3, 3, k_tiles, dtype=torch.bool)))
    assert not state.write_bits.any()


def test_state_views_agree():
    q = torch.randn(1, 100, 2, 32)
    state = liteattn.SkipState(32, 32)
    assert "uninitialised" in str(state)
    liteattn.lite_attention(q, q, q, state, threshold=-1.0)
    dense = state.to_dense()
    keep = state.keep_mask()
    assert dense.shape == (1, 2, 100, 100)
    assert torch.equal(dense[:, :, ::32, ::32], keep)
    assert abs(state.sparsity() - (1 - keep.float().mean().item())) < 1e-9
    assert "32x32" in str(state) and "descending" in str(state)


def test_clone_is_independent():
    q = torch.randn(1, 100, 2, 32)
    state = liteattn.SkipState(32, 32)
    liteattn.lite_attention(q, q, q, state, threshold=-1.0)
    copy = state.clone()
    liteattn.lite_attention(torch.randn_like(q), q, q, copy, threshold=-0.1)
    assert copy.call_count == 2 and state.call_count == 1
    assert copy.read_bits.data_ptr() != state.read_bits.data_ptr()


@pytest.mark.parametrize("calls_before", [1, 2])  # ascending and descending visits
def test_selected_query_tiles_run_as_in_the_full_call(calls_before):
    """A call on the rows of some query tiles, with their slice of the state, reads, computes and writes
    what the full call does for those tiles (the last, partial tile included)."""
    q, k, v = video_qkv(frames=2, height=8, width=9, heads=3, head_dim=32, step=6, num_steps=10)  # 144 rows
    ranges = {"must_do_list": [40, 50], "must_skip_list": [100, 110]}
    state = liteattn.SkipState(32, 16)
    for _ in range(calls_before):
        liteattn.lite_attention(q, k, v, state, threshold=-4.0, **ranges)
    tiles = [0, 2, 4]  # tile 4 holds rows 128..143 only
    selected = state.select_query_tiles(tiles)
    rows = state.query_rows(tiles)
    assert rows.tolist() == [*range(0, 32), *range(64, 96), *range(128, 144)]
    assert selected.q_tiles == 3 and selected.call_count == state.call_count
    assert torch.equal(selected.read_bits, state.read_bits[:, :, tiles])

    full = state.clone()
    out = liteattn.lite_attention(q, k, v, full, threshold=-6.0, **ranges)
    part = liteattn.lite_attention(q[:, rows], k, v, selected, threshold=-6.0, **ranges)
    assert torch.equal(part, out[:, rows])
    assert torch.equal(selected.read_bits, full.read_bits[:, :, tiles])  # what each wrote
    assert state.call_count == calls_before  # the selection is a copy


def test_select_query_tiles_rejects_bad_indices():
    q = torch.randn(1, 100, 2, 32)
    state = liteattn.SkipState(32, 32)
    with pytest.raises(RuntimeError, match="has not seen a call"):
        state.select_query_tiles([0])
    liteattn.lite_attention(q, q, q, state)
    for bad in ([], [2, 1], [0, 0], [4], [-1], [0.5]):
        with pytest.raises(ValueError, match="query tiles"):
            state.select_query_tiles(bad)
        with pytest.raises(ValueError, match="query tiles"):
            state.query_rows(bad)


@pytest.mark.parametrize("k_len", [5 * 16, 32 * 16, 33 * 16, 70 * 16 + 7])
def test_fresh_state_keeps_every_tile_and_writes_nothing(k_len):
    state = SkipState(16, 16)
    state.prepare(ShapeKey(2, 3, 100, k_len, 32, torch.device("cpu")))
    every_tile = torch.ones(2, 3, state.q_tiles, state.k_tiles, dtype=torch.bool)
    assert torch.equal(state.read_bits, pack_keep_mask(every_tile))  # no bit past the last key tile
    assert state.read_bits.dtype == torch.int32 and not state.write_bits.any()
