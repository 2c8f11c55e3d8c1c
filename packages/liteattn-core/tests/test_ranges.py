"""must-do / must-skip token ranges: validation, tile conversion and exact tile accounting."""

import math

import pytest
import torch

import liteattn
from liteattn.tiles import ranges_to_tile_mask, validate_ranges

# (head_dim, q_len, k_len): every supported head dim, lengths that are not tile multiples
CASES = [(32, 130, 300), (64, 200, 513), (96, 129, 257), (128, 300, 640), (256, 77, 450)]


def test_ranges_become_tiles_with_floor_and_ceil():
    mask = ranges_to_tile_mask(validate_ranges([5, 64, 200, 201], 300, "r"), 300, 64)
    assert mask.tolist() == [True, False, False, True, False]


@pytest.mark.parametrize("bad, problem", [
    ([0, 10, 5, 20], "non-overlapping"),
    ([10, 20, 0, 5], "sorted"),
    ([0, 10, 20], "even length"),
    ([0, 400], "<= 300"),
    ([-1, 10], "0 <= start"),
    ([10, 10], "start < end"),
    ([0.5, 10], "integer"),
])
def test_bad_ranges_raise(bad, problem):
    q = torch.randn(1, 64, 1, 32)
    k = torch.randn(1, 300, 1, 32)
    with pytest.raises(ValueError, match="must_skip_list") as error:
        liteattn.lite_attention(q, k, k, must_skip_list=bad)
    assert problem in str(error.value)


def test_overlapping_must_do_and_must_skip_raise():
    q = torch.randn(1, 64, 1, 32)
    with pytest.raises(ValueError, match="overlap"):
        liteattn.lite_attention(q, q, q, must_do_list=[0, 10], must_skip_list=[5, 20])


@pytest.mark.parametrize("head_dim, q_len, k_len", CASES)
def test_must_do_and_must_skip_tile_accounting(monkeypatch, head_dim, q_len, k_len):
    monkeypatch.setenv("LITEATTN_DEBUG", "1")
    block_m, block_n = liteattn.default_tile_shape(head_dim)
    k_tiles = -(-k_len // block_n)
    q, k, v = (torch.randn(1, n, 2, head_dim) for n in (q_len, k_len, k_len))
    must_do = [block_n + 3, block_n + 5]  # mid-tile: forces tile 1
    must_skip = [k_len - 1, k_len]  # the last, partial tile
    attn = liteattn.LiteAttention(threshold=1e9)  # drop everything the rules allow
    attn(q, k, v, must_do_list=must_do, must_skip_list=must_skip)
    assert attn.last_sparsity == pytest.approx(1 / k_tiles)  # must-skip applies from the first call
    expected = torch.zeros(k_tiles, dtype=torch.bool)
    expected[[0, 1]] = True  # first visited tile + must-do
    assert torch.equal(attn.skip_state.keep_mask(), expected.expand(1, 2, -(-q_len // block_m), k_tiles))
    attn(q, k, v, must_do_list=must_do, must_skip_list=must_skip)  # descending: tile 1 is now met first
    assert attn.last_sparsity == pytest.approx(1 - 2 / k_tiles)


def test_everything_must_skipped_gives_zeros_and_minus_inf():
    q, k, v = (torch.randn(1, 100, 2, 32) for _ in range(3))
    out, lse = liteattn.lite_attention(q, k, v, must_skip_list=[0, 100], return_softmax_lse=True)
    assert torch.all(out == 0) and torch.all(lse == -math.inf)
    attn = liteattn.LiteAttention()
    out, lse = attn(q, k, v, must_skip_list=[0, 100], return_softmax_lse=True)
    assert not torch.isnan(out).any() and torch.all(lse == -math.inf) and attn.last_sparsity == 1.0
