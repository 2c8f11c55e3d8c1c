"""The packed keep-bitmask and the SkipState value."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import liteattn
from liteattn.skip_state import pack_keep_mask, unpack_keep_mask


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
