"""The reference backend against torch's attention, its own math path and a scalar walk of the skip test."""

import math

import pytest
import torch

import liteattn
from conftest import sdpa
from liteattn.backend import AttentionCall
from liteattn.reference import LOG2E, masked_attention, reference_forward
from liteattn.skip_state import pack_keep_mask, unpack_keep_mask
from liteattn.testing import assert_lse_close, assert_parity, random_keep_mask, rel_error, video_qkv

# (batch, q_len, k_len, heads, kv_heads, head_dim): odd lengths, GQA, Sq != Sk
SHAPES = [
    (1, 113, 113, 2, 2, 64),
    (2, 239, 300, 4, 2, 32),
    (1, 256, 129, 3, 1, 96),
    (1, 130, 257, 2, 2, 128),
    (1, 65, 200, 2, 1, 256),
]


def _qkv(batch, q_len, k_len, heads, kv_heads, dim, dtype=torch.float32):
    return (torch.randn(batch, q_len, heads, dim).to(dtype), torch.randn(batch, k_len, kv_heads, dim).to(dtype),
            torch.randn(batch, k_len, kv_heads, dim).to(dtype))


@pytest.mark.parametrize("shape", SHAPES)
def test_dense_equals_sdpa_fp32(shape):
    q, k, v = _qkv(*shape)
    out, lse = liteattn.lite_attention(q, k, v, return_softmax_lse=True)
    assert rel_error(out, sdpa(q, k, v)) < 1e-5
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double().repeat_interleave(q.shape[2] // k.shape[2], 2))
    assert_lse_close(lse, torch.logsumexp(scores / math.sqrt(shape[-1]), dim=-1).float(), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_low_precision_meets_parity_rule(shape, dtype):
    q, k, v = _qkv(*shape, dtype=dtype)
    out = liteattn.lite_attention(q, k, v)
    golden, _ = masked_attention(q, k, v, q.shape[-1] ** -0.5, upcast=True)
    low_precision, _ = masked_attention(q, k, v, q.shape[-1] ** -0.5, upcast=False)
    assert out.dtype == dtype
    assert_parity("out", out, low_precision, golden.to(torch.float64))


@pytest.mark.parametrize("shape", SHAPES)
def test_threshold_minus_inf_never_skips(shape):
    q, k, v = _qkv(*shape)
    attn = liteattn.LiteAttention(threshold=-math.inf, block_m=32, block_n=32)
    for _ in range(3):
        out = attn(q, k, v)
        assert attn.last_sparsity == 0.0
    assert attn.skip_state.sparsity() == 0.0
    assert rel_error(out, sdpa(q, k, v)) < 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_online_softmax_equals_math_path_under_random_masks(seed):
    batch, q_len, k_len, heads, dim, block = 2, 150, 230, 2, 32, 32
    q, k, v = _qkv(batch, q_len, k_len, heads, heads, dim)
    keep = random_keep_mask(batch, heads, 5, 8, 0.6, seed=seed)
    keep[0, 0, 1] = False  # a query tile that computes nothing
    call = AttentionCall(q, k, v, dim ** -0.5, torch.full((heads,), -10.0), block, block, pack_keep_mask(keep),
                         reverse=bool(seed % 2))
    out, lse = reference_forward(call)
    token_mask = keep.repeat_interleave(block, 2)[:, :, :q_len].repeat_interleave(block, 3)[..., :k_len]
    expected, expected_lse = masked_attention(q, k, v, dim ** -0.5, token_mask)
    assert rel_error(out, expected) < 1e-5
    assert_lse_close(lse, expected_lse, atol=1e-4)
    assert torch.all(out[0, 32:64, 0] == 0) and torch.all(lse[0, 0, 32:64] == -math.inf)


def _scalar_skip_walk(call):
    """The skip test written row by row with plain loops: an independent statement of the spec."""
    scores = torch.einsum("bqhd,bkhd->bhqk", call.q.double(),
                          call.k.double().repeat_interleave(call.num_heads // call.num_kv_heads, 2))
    scores = scores * call.scale * LOG2E
    compute = unpack_keep_mask(call.compute_bits, call.k_tiles)
    needed = torch.zeros_like(compute)
    order = range(call.k_tiles - 1, -1, -1) if call.reverse else range(call.k_tiles)
    for b in range(call.batch):
        for h in range(call.num_heads):
            for i in range(call.q_tiles):
                rows = range(i * call.block_m, min((i + 1) * call.block_m, call.q_len))
                for r in rows:
                    running = -math.inf
                    for j in order:
                        if not compute[b, h, i, j]:
                            continue
                        tile_max = scores[b, h, r, j * call.block_n:(j + 1) * call.block_n].max().item()
                        if tile_max - running > call.thresholds[h].item():
                            needed[b, h, i, j] = True
                        running = max(running, tile_max)
    return needed


@pytest.mark.parametrize("reverse", [False, True])
def test_skip_test_matches_scalar_walk(reverse):
    q, k, v = video_qkv(frames=2, height=6, width=8, heads=2, head_dim=32, kv_heads=1, step=8, num_steps=10)
    keep = random_keep_mask(1, 2, 3, 6, 0.3, seed=1)
    call = AttentionCall(q, k, v, 32 ** -0.5, torch.tensor([-6.0, -3.0]), 32, 16, pack_keep_mask(keep),
                         torch.zeros(1, 2, 3, 1, dtype=torch.int32), reverse)
    reference_forward(call)
    written = unpack_keep_mask(call.write_bits, call.k_tiles)
    assert torch.equal(written, _scalar_skip_walk(call))
    assert 0 < written.sum() < keep.sum()  # the test both keeps and drops tiles here


def test_int8_reference_error_is_small():
    q, k, v = video_qkv(frames=2, height=8, width=8, heads=2, head_dim=64)
    k = k + 3.0  # a shared channel offset, which the K smoothing removes
    exact, exact_lse = liteattn.lite_attention(q, k, v, return_softmax_lse=True)
    quantised, lse = liteattn.lite_attention(q, k, v, use_int8=True, return_softmax_lse=True)
    assert rel_error(quantised, exact) < 2e-2
    assert_lse_close(lse, exact_lse, atol=5e-2)  # the LSE of the true scores, not of the smoothed ones
