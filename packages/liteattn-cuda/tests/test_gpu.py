"""GPU parity of the cuda backend against the float64 reference, FA3's error rule (needs an sm_90 GPU)."""

import math

import pytest
import torch

import liteattn
from liteattn.backend import AttentionCall
from liteattn.reference import masked_attention, reference_forward
from liteattn.skip_state import pack_keep_mask, unpack_keep_mask
from liteattn.testing import assert_lse_close, assert_parity, random_keep_mask, rel_error, tile_agreement
from liteattn.tiles import default_tile_shape


def _has_sm90() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


requires_sm90 = pytest.mark.skipif(not _has_sm90(), reason="needs a CUDA device with sm_90")
pytestmark = [pytest.mark.gpu, requires_sm90]

CASES = [  # (B, Sq, Sk, H, Hkv, D, dtype, sparsity or None, reverse)
    (1, 1024, 1024, 2, 2, 128, torch.bfloat16, None, False),
    (2, 1000, 1717, 6, 2, 128, torch.float16, 0.5, True),
    (1, 239, 3333, 4, 1, 64, torch.bfloat16, 0.75, False),
    (2, 113, 777, 4, 4, 64, torch.float16, 0.5, True),
    (1, 1500, 1100, 4, 2, 256, torch.bfloat16, 0.5, False),
    (1, 1, 5, 2, 1, 256, torch.float16, None, True),
    # Dense calls (no skip state) run the dense geometry: 176-key tiles at D=128, 192-row tiles at D=64.
    (2, 1000, 1717, 6, 2, 128, torch.bfloat16, None, True),
    (1, 1, 5, 2, 1, 128, torch.float16, None, False),
    (2, 777, 2049, 4, 2, 64, torch.bfloat16, None, False),
]
# 64-row skip tiles at head dim 128 (FineSkipGeometry, chosen by block_m): (..., reverse, block_m). Partial last query
# and key tiles, GQA, both visit orders; the dense case runs the dense kernel whatever block_m says.
FINE_CASES = [
    (2, 1000, 1717, 6, 2, 128, torch.float16, 0.5, True, 64),
    (1, 1500, 1100, 4, 2, 128, torch.bfloat16, 0.75, False, 64),
    (1, 1024, 1024, 2, 2, 128, torch.bfloat16, None, False, 64),
]
SKIP_CASES = CASES[1:5] + FINE_CASES[:2]


def _tiles(case) -> tuple[int, int]:
    """The case's (block_m, block_n): the default of its head dim, with the case's own block_m where it names one."""
    block_m, block_n = default_tile_shape(case[5])
    return (case[9] if len(case) > 9 else block_m, block_n)


def _backend_and_inputs(case, seed):
    """The CUDA backend (or a skip saying why it cannot run here) and random BSHD inputs for ``case``."""
    B, Sq, Sk, H, Hkv, D, dtype, _, _ = case[:9]
    from liteattn_cuda import CudaBackend

    backend = CudaBackend()
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    torch.manual_seed(seed)
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=dtype)
    k = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dtype)
    v = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dtype)
    return backend, q, k, v


@pytest.mark.parametrize("case", CASES + FINE_CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_parity(case):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case[:9]
    backend, q, k, v = _backend_and_inputs(case, seed=0)
    bm, bn = _tiles(case)
    keep = None
    if sparsity is not None:
        keep = random_keep_mask(B, H, -(-Sq // bm), -(-Sk // bn), sparsity, seed=1)
        keep[0, 0, 0] = False  # one query tile computes nothing
    bits = None if keep is None else pack_keep_mask(keep).cuda()
    call = AttentionCall(q, k, v, 1 / math.sqrt(D), torch.zeros(H, device="cuda"), bm, bn, bits, None, reverse)
    assert backend.unsupported_reason(call) is None
    out, lse = backend.forward(call)
    gold_out, gold_lse = reference_forward(call, upcast=True)
    token_mask = None
    if keep is not None:
        token_mask = keep.repeat_interleave(bm, 2)[:, :, :Sq].repeat_interleave(bn, 3)[..., :Sk].cuda()
    low_out, _ = masked_attention(q, k, v, call.scale, token_mask, upcast=False)
    assert_parity("out", out, low_out, gold_out)
    assert_lse_close(lse, gold_lse)


# Dense calls whose last wave the kernel splits by keys (include/liteattn/tail_split.h): (B, Sq, Sk, H, Hkv, D,
# dtype, reverse), with more work tiles than an H100 has SMs, the last partial wave small enough to split. Head dims
# 64 and 128 run the dense geometry, 256 the skip-state kernel without a keep bitmask.
TAIL_SPLIT_CASES = [
    (1, 5120, 4096, 4, 2, 128, torch.bfloat16, False),
    (1, 5000, 4001, 4, 4, 128, torch.float16, True),
    (1, 7600, 4000, 4, 1, 64, torch.bfloat16, False),
    (2, 3840, 3000, 4, 2, 64, torch.float16, True),
    (1, 4300, 2000, 4, 2, 256, torch.bfloat16, False),
    (1, 4300, 2001, 4, 4, 256, torch.float16, True),
]
DENSE_TILES = {128: (128, 176), 64: (192, 128)}  # DenseGeometry in include/liteattn/kernel_traits.cuh


def _tail_split_plan(num_tiles: int, num_k_tiles: int, num_sms: int) -> tuple[int, int]:
    """(whole work tiles, pieces per later tile), as plan_tail_split in include/liteattn/tail_split.h decides."""
    tail = num_tiles % num_sms
    splits = min(num_sms // tail, num_k_tiles // 4, 16) if tail else 1
    return (num_tiles - tail, splits) if splits >= 2 else (num_tiles, 1)


@pytest.mark.parametrize("case", TAIL_SPLIT_CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_dense_tail_split_merges_to_the_unsplit_result(case, monkeypatch):
    """The split tiles' rows match the reference and the unsplit kernel's within rounding; the other rows are the
    unsplit kernel's bit for bit (the same code ran them)."""
    B, Sq, Sk, H, Hkv, D, dtype, reverse = case
    backend, q, k, v = _backend_and_inputs((B, Sq, Sk, H, Hkv, D, dtype, None, reverse), seed=4)
    bm, bn = default_tile_shape(D)
    call = AttentionCall(q, k, v, 1 / math.sqrt(D), torch.zeros(H, device="cuda"), bm, bn, None, None, reverse)
    split_out, split_lse = backend.forward(call)
    monkeypatch.setenv("LITEATTN_CUDA_TAIL_SPLIT", "0")
    whole_out, whole_lse = backend.forward(call)

    kernel_m, kernel_n = DENSE_TILES.get(D, (bm, bn))
    q_tiles = -(-Sq // kernel_m)
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count
    num_whole, splits = _tail_split_plan(B * H * q_tiles, -(-Sk // kernel_n), sms)
    assert splits > 1, "the case must exercise a split on this GPU"
    # Work tile t = (b * H + h) * QT + m; per (b, h) the rows of its split tiles.
    tile_of_row = (torch.arange(B * H).view(B, H, 1) * q_tiles + torch.arange(Sq).view(1, 1, Sq) // kernel_m).cuda()
    split_rows = tile_of_row >= num_whole  # (B, H, Sq)
    rows_bshd = split_rows.permute(0, 2, 1)  # (B, Sq, H)
    assert torch.equal(split_out[~rows_bshd], whole_out[~rows_bshd])
    assert torch.equal(split_lse[~split_rows], whole_lse[~split_rows])
    assert not torch.equal(split_lse[split_rows], whole_lse[split_rows])  # the pieces ran: rounding differs
    assert (split_lse - whole_lse).abs().max().item() <= 1e-5
    assert rel_error(split_out, whole_out) <= 2e-3

    gold_out, gold_lse = reference_forward(call, upcast=True)
    low_out, _ = masked_attention(q, k, v, call.scale, None, upcast=False)
    assert_parity("out", split_out, low_out, gold_out)
    assert_lse_close(split_lse, gold_lse)


@pytest.mark.parametrize("writes_state", [False, True], ids=["keep-bitmask", "skip-state"])
def test_sparse_calls_never_split(writes_state, monkeypatch):
    """Calls that read a keep bitmask, with or without the skip test, run whole work tiles (a skip test needs each
    row's keys in one visit order; a bitmask alone measured no faster split): outputs, LSE and written bits do not
    depend on the tail split, on a shape whose dense call splits."""
    case = (1, 5000, 4001, 4, 2, 128, torch.bfloat16, None, False)
    backend, q, k, v = _backend_and_inputs(case, seed=6)
    bm, bn = default_tile_shape(128)
    keep = pack_keep_mask(random_keep_mask(1, 4, -(-5000 // bm), -(-4001 // bn), 0.5, seed=7)).cuda()
    results = []
    for split in ("1", "0"):
        monkeypatch.setenv("LITEATTN_CUDA_TAIL_SPLIT", split)
        written = torch.zeros_like(keep) if writes_state else None
        call = AttentionCall(q, k, v, 128 ** -0.5, torch.full((4,), -6.0, device="cuda"), bm, bn, keep, written)
        results.append((*backend.forward(call), written))
    for a, b in zip(*results):
        assert (a is None and b is None) or torch.equal(a, b)


def _skip_case(case, seed):
    """Inputs of a skip-test case and a random keep mask (seed + 1) whose first row computes nothing:
    ``(backend, q, k, v, keep (B, H, QT, KT) bool on the CPU, its packed bits on the GPU)``."""
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case[:9]
    backend, q, k, v = _backend_and_inputs(case, seed=seed)
    bm, bn = _tiles(case)
    keep = random_keep_mask(B, H, -(-Sq // bm), -(-Sk // bn), sparsity, seed=seed + 1)
    keep[0, 0, 0] = False
    return backend, q, k, v, keep, pack_keep_mask(keep).cuda()


@pytest.mark.parametrize("case", SKIP_CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_skip_test_matches_reference(case):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case[:9]
    backend, q, k, v, keep, bits = _skip_case(case, seed=1)
    bm, bn = _tiles(case)
    KT = keep.shape[-1]
    thresholds = torch.linspace(-3.0, 0.5, H, device="cuda")
    ours = torch.full_like(bits, 0x5A5A5A5A)
    ref = torch.full_like(bits, 0x5A5A5A5A)
    mk = lambda wb: AttentionCall(q, k, v, 1 / math.sqrt(D), thresholds, bm, bn, bits, wb, reverse)  # noqa: E731
    backend.forward(mk(ours))
    reference_forward(mk(ref))
    assert tile_agreement(ours, ref, KT) >= 0.995
    # Never a tile that was not computed, and the first visited tile of every computed row is needed.
    assert not (unpack_keep_mask(ours, KT) & ~keep.cuda()).any()


@pytest.mark.parametrize("case", SKIP_CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_tile_gaps_match_reference_and_written_bits(case):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case[:9]
    backend, q, k, v, keep, bits = _skip_case(case, seed=2)
    bm, bn = _tiles(case)
    QT, KT = keep.shape[-2:]
    thresholds = torch.linspace(-4.0, 0.0, H, device="cuda")
    written = torch.full_like(bits, 0x5A5A5A5A)
    gaps = torch.full((B, H, QT, KT), 123.0, device="cuda")  # poisoned: every entry must be written
    ref_gaps = torch.empty_like(gaps)
    backend.forward(AttentionCall(q, k, v, 1 / math.sqrt(D), thresholds, bm, bn, bits, written, reverse,
                                  tile_gaps=gaps))
    reference_forward(AttentionCall(q, k, v, 1 / math.sqrt(D), thresholds, bm, bn, bits, None, reverse,
                                    tile_gaps=ref_gaps), upcast=True)
    assert torch.equal(torch.isneginf(gaps), ~keep.cuda())  # -inf exactly on the tiles not computed
    assert torch.equal(torch.isposinf(gaps), torch.isposinf(ref_gaps))  # +inf on each row's first tile
    finite = torch.isfinite(ref_gaps)
    assert (gaps[finite] - ref_gaps[finite]).abs().max().item() <= 1e-3
    # The gaps give the written bits exactly, at the call's thresholds.
    assert torch.equal(pack_keep_mask((gaps > thresholds.view(1, H, 1, 1)).cpu()), written.cpu())


@pytest.mark.parametrize("use_int8", [False, True])
@pytest.mark.parametrize("case", SKIP_CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_skipped_tile_count_matches_the_keep_bits(case, use_int8):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case[:9]
    if use_int8 and (D not in (64, 128) or _tiles(case) != default_tile_shape(D)):
        pytest.skip("int8 Q/K is built for head dims 64 and 128, in the default tiles")
    backend, q, k, v, keep, bits = _skip_case(case, seed=3)
    bm, bn = _tiles(case)
    skipped = torch.zeros((), dtype=torch.int64, device="cuda")
    backend.forward(AttentionCall(q, k, v, 1 / math.sqrt(D), torch.zeros(H, device="cuda"), bm, bn, bits, None,
                                  reverse, use_int8, skipped_tiles=skipped))
    assert skipped.item() == keep.numel() - keep.sum().item()
    # Through core: the sparsity a stateful call reports comes from the counter and equals the bits' own count.
    state = liteattn.SkipState(bm, bn)
    liteattn.lite_attention(q, k, v, state, backend="cuda", use_int8=use_int8)
    state.read_bits.copy_(bits)
    liteattn.lite_attention(q, k, v, state, backend="cuda", use_int8=use_int8)
    assert state.last_sparsity == pytest.approx(1 - keep.sum().item() / keep.numel(), abs=1e-6)


# -- INT8 Q/K (use_int8) ------------------------------------------------------------------------------------
INT8_REL_ERR = 2e-2  # the bound against the fp32 reference
INT8_CASES = [  # (B, Sq, Sk, H, Hkv, D, dtype, sparsity or None, reverse)
    (1, 1024, 1024, 2, 2, 128, torch.bfloat16, None, False),
    (2, 1000, 1717, 6, 2, 128, torch.float16, 0.5, True),
    (2, 239, 3333, 4, 1, 64, torch.bfloat16, 0.75, False),
    (2, 113, 777, 4, 4, 64, torch.float16, None, True),
    (1, 1, 5, 2, 1, 128, torch.bfloat16, None, False),
]


def _int8_ids(c):
    return "-".join(str(x) for x in c)


@pytest.mark.parametrize("case", INT8_CASES, ids=_int8_ids)
def test_int8_quantiser_matches_liteattn_quant(case):
    """The fused CUDA quantiser against liteattn.quant: scales within a few ulps (an H100 run showed Q's differ
    from torch's in the last bit), values within one int8 step (K's channel mean is also summed in another
    order than torch's), almost all equal."""
    from liteattn.quant import quantize_k, quantize_q
    from liteattn_cuda import _ops

    B, Sq, Sk, H, Hkv, D, dtype, _, _ = case
    _, q, k, _ = _backend_and_inputs(case, seed=3)
    k = k + 2.0  # a shared channel offset, which the smoothing removes
    bm, bn = default_tile_shape(D)
    q8, k8, q_scale, k_scale = _ops.quantize_qk(q, k, bm, bn)
    ref_q8, ref_q_scale = quantize_q(q, bm)
    ref_k8, ref_k_scale = quantize_k(k, bn)
    torch.testing.assert_close(q_scale, ref_q_scale, rtol=1e-6, atol=0)
    torch.testing.assert_close(k_scale, ref_k_scale, rtol=1e-5, atol=0)
    for ours, ref in ((q8, ref_q8), (k8, ref_k8)):
        diff = (ours.int() - ref.int()).abs()
        assert diff.max().item() <= 1
        assert diff.float().mean().item() < 1e-3


@pytest.mark.parametrize("case", INT8_CASES, ids=_int8_ids)
def test_int8_parity(case):
    """use_int8 through lite_attention: out within 2e-2 relative error (cosine >= 0.999) of the float64 attention
    of the unquantised inputs, LSE (with core's smoothing offset added back) close to the true LSE; the backend's
    own lse matches the reference's simulated-INT8 lse of the smoothed scores."""
    import liteattn

    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case
    backend, q, k, v = _backend_and_inputs(case, seed=4)
    k = k + 1.0  # a shared channel offset: core's smoothing offset must put it back into the LSE
    bm, bn = default_tile_shape(D)
    scale = 1 / math.sqrt(D)
    # Dense through the public API (no state: every key tile).
    out, lse = liteattn.lite_attention(q, k, v, use_int8=True, backend="cuda", return_softmax_lse=True)
    gold_call = AttentionCall(q.float(), k.float(), v.float(), scale, torch.zeros(H, device="cuda"), bm, bn)
    gold_out, gold_lse = reference_forward(gold_call, upcast=True)
    rel = (out.double() - gold_out.double()).norm() / gold_out.double().norm()
    cos = torch.nn.functional.cosine_similarity(out.double().flatten(), gold_out.double().flatten(), dim=0)
    assert rel.item() <= INT8_REL_ERR, rel.item()
    assert cos.item() >= 0.999, cos.item()
    assert_lse_close(lse, gold_lse.float(), atol=3e-2)

    # Sparse / reversed through the backend: against the reference's exact simulation of the same INT8 call.
    keep = None
    if sparsity is not None:
        keep = random_keep_mask(B, H, -(-Sq // bm), -(-Sk // bn), sparsity, seed=5)
        keep[0, 0, 0] = False  # one query tile computes nothing: out 0, lse -inf
    bits = None if keep is None else pack_keep_mask(keep).cuda()
    call = AttentionCall(q, k, v, scale, torch.zeros(H, device="cuda"), bm, bn, bits, None, reverse, True)
    assert backend.unsupported_reason(call) is None
    out8, lse8 = backend.forward(call)
    sim_out, sim_lse = reference_forward(call, upcast=True)  # INT8 simulated exactly, lse of smoothed scores
    assert_lse_close(lse8, sim_lse.float(), atol=2e-3)
    assert (out8.double() - sim_out.double()).norm() / sim_out.double().norm().clamp_min(1e-30) <= 1e-2
    if keep is not None:
        gold_sparse, _ = reference_forward(AttentionCall(q.float(), k.float(), v.float(), scale,
                                                         torch.zeros(H, device="cuda"), bm, bn, bits, None, reverse),
                                           upcast=True)
        assert rel_error(out8, gold_sparse) <= INT8_REL_ERR


@pytest.mark.parametrize("case", INT8_CASES[:4], ids=_int8_ids)
def test_int8_skip_test_matches_reference(case):
    """write_bits of the INT8 kernel against the reference run with use_int8 (same quantised scores)."""
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case
    backend, q, k, v = _backend_and_inputs(case, seed=6)
    bm, bn = default_tile_shape(D)
    QT, KT = -(-Sq // bm), -(-Sk // bn)
    keep = random_keep_mask(B, H, QT, KT, 0.5 if sparsity is None else sparsity, seed=7)
    keep[0, 0, 0] = False
    bits = pack_keep_mask(keep).cuda()
    thresholds = torch.linspace(-3.0, 0.5, H, device="cuda")
    ours = torch.full_like(bits, 0x5A5A5A5A)
    ref = torch.full_like(bits, 0x5A5A5A5A)
    mk = lambda wb: AttentionCall(q, k, v, 1 / math.sqrt(D), thresholds, bm, bn, bits, wb, reverse, True)  # noqa: E731
    backend.forward(mk(ours))
    reference_forward(mk(ref))
    assert tile_agreement(ours, ref, KT) >= 0.995
    assert not (unpack_keep_mask(ours, KT) & ~keep.cuda()).any()


def test_int8_unsupported_head_dim_reason():
    from liteattn_cuda import CudaBackend

    q = torch.randn(1, 128, 2, 256, device="cuda", dtype=torch.bfloat16)
    call = AttentionCall(q, q, q, 1 / 16, torch.zeros(2, device="cuda"), 128, 64, use_int8=True)
    reason = CudaBackend().unsupported_reason(call)
    assert reason is not None and "int8" in reason
