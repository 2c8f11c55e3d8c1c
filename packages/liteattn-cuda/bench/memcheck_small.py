"""A small multi-step sparse run for compute-sanitizer (memcheck, racecheck): odd lengths, GQA, an empty query
tile, the skip test and tile gaps on, each step reading the bits the previous one wrote; the 16-bit kernel at
head dims 128, 64, 256 and the INT8 Q/K kernel at 128 and 64; each 16-bit case ends with a dense call (no skip
state: the dense geometry where a head dim has one); a last case has more work tiles than an SM count,
so that in a persistent build (LITEATTN_PERSISTENT=1) every CTA carries its K/V ring and Q barriers from one work
tile to the next. At head dims up to 64 the skip state's 64-row query tiles are one per consumer warpgroup: the
cases there also hold a CTA whose warpgroups keep nothing, one where only some do, and warpgroups past the last
query tile. Last, dense calls long enough in keys that the kernel splits their work tiles by key range
(tail_split.h) and merges the pieces, at head dims 128, 64 (dense geometry) and 256 (the skip-state kernel), each
beside a call reading a keep bitmask with an empty row (never split)."""
import math

import torch

from liteattn.skip_state import pack_keep_mask
from liteattn.tiles import default_tile_shape
from liteattn_cuda import _ops

torch.manual_seed(0)
sms = torch.cuda.get_device_properties(0).multi_processor_count
cases = [(128, torch.bfloat16, False, 2), (64, torch.float16, False, 2), (256, torch.bfloat16, False, 2),
         (128, torch.bfloat16, True, 2), (64, torch.float16, True, 2),
         # more work tiles (B*H*QT = 2 * 4 * 3 * ceil(sms / 6)) than CTAs: every CTA runs several
         (128, torch.bfloat16, False, 2 * (-(-sms // 6)))]
for D, dt, int8, B in cases:
    bm, bn = default_tile_shape(D)
    Sq, Sk, H, Hkv = 300, 333, 4, 2
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
    k = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt)
    v = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt)
    qt, kt = -(-Sq // bm), -(-Sk // bn)
    keep = torch.rand(B, H, qt, kt) < 0.6
    keep[0, 0, 0] = False  # a work tile with no kept key tile
    keep[0, 1, :3] = False  # 64-row tiles: the warpgroups of a whole CTA keep nothing
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, device="cuda")
    bits = pack_keep_mask(keep).cuda()
    gaps = torch.full((B, H, qt, kt), -math.inf, device="cuda")
    thresholds = torch.full((H,), -2.0, device="cuda")
    for step in range(3):
        wbits = torch.empty(B, H, qt, -(-kt // 32), dtype=torch.int32, device="cuda")
        if int8:
            q8, k8, q_scale, k_scale = _ops.quantize_qk(q, k, bm, bn)
            _ops.fwd_int8(q8, k8, v, out, lse, q_scale, k_scale, bits, 1 / math.sqrt(D), bm, bn, step % 2 == 1,
                          wbits, thresholds, gaps)
        else:
            _ops.fwd(q, k, v, out, lse, bits, 1 / math.sqrt(D), bm, bn, step % 2 == 1, wbits, thresholds, gaps)
        bits = wbits
    if not int8:
        _ops.fwd(q, k, v, out, lse, None, 1 / math.sqrt(D), bm, bn, False)
    torch.cuda.synchronize()
    print("sanitizer case ok", D, dt, "int8" if int8 else "16-bit", "batch", B, bool(torch.isfinite(out).all()))

for D, dt in ((128, torch.bfloat16), (64, torch.float16), (256, torch.bfloat16)):  # fewer work tiles than SMs
    bm, bn = default_tile_shape(D)
    q = torch.randn(2, 300, 4, D, device="cuda", dtype=dt)
    k = torch.randn(2, 3000, 2, D, device="cuda", dtype=dt)
    v = torch.randn(2, 3000, 2, D, device="cuda", dtype=dt)
    keep = torch.rand(2, 4, -(-300 // bm), -(-3000 // bn)) < 0.4
    keep[0, 0, 0] = False  # a work tile with no kept key tile: all its pieces are empty
    for bits in (None, pack_keep_mask(keep).cuda()):
        out = torch.empty_like(q)
        lse = torch.empty(2, 4, 300, device="cuda")
        _ops.fwd(q, k, v, out, lse, bits, 1 / math.sqrt(D), bm, bn, True)
        torch.cuda.synchronize()
        print("sanitizer case ok", D, dt, "dense, last wave split by keys" if bits is None else "keep bitmask",
              bool(torch.isfinite(out).all()))
