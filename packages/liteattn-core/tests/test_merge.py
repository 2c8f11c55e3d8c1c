"""merge_attention and SeqParallelLiteAttention against attention over all keys."""

import math

import pytest
import torch

import liteattn
from conftest import sdpa
from liteattn.testing import assert_lse_close, rel_error


def test_merge_of_disjoint_key_sets_equals_full_attention():
    q, k, v = torch.randn(2, 90, 4, 32), torch.randn(2, 250, 2, 32), torch.randn(2, 250, 2, 48)
    parts = [(0, 40), (40, 170), (170, 250)]  # e.g. text keys, then video keys in two shards
    outs, lses = zip(*(liteattn.lite_attention(q, k[:, s:e], v[:, s:e], return_softmax_lse=True) for s, e in parts))
    out, lse = liteattn.merge_attention(outs, lses)
    _, full_lse = liteattn.lite_attention(q, k, v, return_softmax_lse=True)
    assert rel_error(out, sdpa(q, k, v)) < 1e-5
    assert_lse_close(lse, full_lse, atol=1e-4)


def test_merge_with_empty_parts():
    q = torch.randn(1, 20, 2, 16)
    out_a, lse_a = liteattn.lite_attention(q, q, q, return_softmax_lse=True)
    empty = (torch.zeros_like(out_a), torch.full_like(lse_a, -math.inf))
    out, lse = liteattn.merge_attention([out_a, empty[0]], [lse_a, empty[1]])
    assert torch.allclose(out, out_a) and torch.allclose(lse, lse_a)
    out, lse = liteattn.merge_attention([empty[0], empty[0]], [empty[1], empty[1]])
    assert torch.all(out == 0) and torch.all(lse == -math.inf)


def test_merge_rejects_mismatched_parts():
    out, lse = torch.zeros(1, 4, 2, 8), torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="lses"):
        liteattn.merge_attention([out], [])
    with pytest.raises(ValueError, match=r"lses\[0\]"):
        liteattn.merge_attention([out], [torch.zeros(1, 4, 2)])
    with pytest.raises(ValueError, match=r"outputs\[1\]"):
        liteattn.merge_attention([out, torch.zeros(1, 4, 2, 9)], [lse, lse])


def test_seq_parallel_equals_single_device():
    q, k, v = torch.randn(1, 128, 2, 32), torch.randn(1, 384, 2, 32), torch.randn(1, 384, 2, 32)
    parallel = liteattn.SeqParallelLiteAttention(3, threshold=-math.inf, block_m=32, block_n=32)
    shards = [slice(0, 128), slice(128, 256), slice(256, 384)]
    for _ in range(2):  # second call reads each split's own state
        parts = [parallel(q, k[:, s], v[:, s], i, return_softmax_lse=True) for i, s in enumerate(shards)]
        out, _ = liteattn.merge_attention(*zip(*parts))
        assert rel_error(out, sdpa(q, k, v)) < 1e-5
    assert all(split.skip_state.call_count == 2 for split in parallel.splits)


def test_seq_parallel_states_are_independent():
    q = torch.randn(1, 64, 2, 32)
    parallel = liteattn.SeqParallelLiteAttention(2, threshold=-2.0, block_m=32, block_n=32)
    parallel(q, q, q, 0)
    assert parallel.splits[1].skip_state.shape_key is None
    with pytest.raises(ValueError, match="split_idx"):
        parallel(q, q, q, 2)
    with pytest.raises(ValueError, match="num_splits"):
        liteattn.SeqParallelLiteAttention(0)
