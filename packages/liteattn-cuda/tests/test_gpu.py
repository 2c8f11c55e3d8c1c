"""GPU parity of the cuda backend against the float64 reference, FA3's error rule (needs an sm_90 GPU)."""

import math

import pytest
import torch

from liteattn.backend import AttentionCall
from liteattn.reference import masked_attention, reference_forward
from liteattn.skip_state import pack_keep_mask, unpack_keep_mask
from liteattn.testing import assert_lse_close, assert_parity, random_keep_mask, tile_agreement
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
]


def _backend_and_inputs(case, seed):
    """The CUDA backend (or a skip saying why it cannot run here) and random BSHD inputs for ``case``."""
    B, Sq, Sk, H, Hkv, D, dtype, _, _ = case
    from liteattn_cuda import CudaBackend

    backend = CudaBackend()
    if backend.unavailable_reason():
        pytest.skip(backend.unavailable_reason())
    torch.manual_seed(seed)
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=dtype)
    k = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dtype)
    v = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dtype)
    return backend, q, k, v


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(x) for x in c))
def test_parity(case):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case
    backend, q, k, v = _backend_and_inputs(case, seed=0)
    bm, bn = default_tile_shape(D)
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


@pytest.mark.parametrize("case", CASES[1:5], ids=lambda c: "-".join(str(x) for x in c))
def test_skip_test_matches_reference(case):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case
    backend, q, k, v = _backend_and_inputs(case, seed=1)
    bm, bn = default_tile_shape(D)
    QT, KT = -(-Sq // bm), -(-Sk // bn)
    keep = random_keep_mask(B, H, QT, KT, sparsity, seed=2)
    keep[0, 0, 0] = False
    bits = pack_keep_mask(keep).cuda()
    thresholds = torch.linspace(-3.0, 0.5, H, device="cuda")
    ours = torch.full_like(bits, 0x5A5A5A5A)
    ref = torch.full_like(bits, 0x5A5A5A5A)
    mk = lambda wb: AttentionCall(q, k, v, 1 / math.sqrt(D), thresholds, bm, bn, bits, wb, reverse)  # noqa: E731
    backend.forward(mk(ours))
    reference_forward(mk(ref))
    assert tile_agreement(ours, ref, KT) >= 0.995
    # Never a tile that was not computed, and the first visited tile of every computed row is needed.
    assert not (unpack_keep_mask(ours, KT) & ~keep.cuda()).any()


@pytest.mark.parametrize("case", CASES[1:5], ids=lambda c: "-".join(str(x) for x in c))
def test_tile_gaps_match_reference_and_written_bits(case):
    B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse = case
    backend, q, k, v = _backend_and_inputs(case, seed=2)
    bm, bn = default_tile_shape(D)
    QT, KT = -(-Sq // bm), -(-Sk // bn)
    keep = random_keep_mask(B, H, QT, KT, sparsity, seed=3)
    keep[0, 0, 0] = False
    bits = pack_keep_mask(keep).cuda()
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
