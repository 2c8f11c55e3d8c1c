"""A small multi-step sparse run for compute-sanitizer (memcheck, racecheck): odd lengths, GQA, an empty query
tile, the skip test and tile gaps on, each step reading the bits the previous one wrote."""
import math

import torch

from liteattn.skip_state import pack_keep_mask
from liteattn_cuda import fwd

torch.manual_seed(0)
for D, dt in ((128, torch.bfloat16), (64, torch.float16), (256, torch.bfloat16)):
    bn = 64 if D > 128 else 128
    B, Sq, Sk, H, Hkv = 2, 300, 333, 4, 2
    q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
    k = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt)
    v = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt)
    keep = torch.rand(B, H, -(-Sq // 128), -(-Sk // bn)) < 0.6
    keep[0, 0, 0] = False
    out = torch.empty_like(q)
    lse = torch.empty(B, H, Sq, device="cuda")
    kt = -(-Sk // bn)
    bits = pack_keep_mask(keep).cuda()
    gaps = torch.full((B, H, -(-Sq // 128), kt), -math.inf, device="cuda")
    for step in range(3):
        wbits = torch.empty(B, H, -(-Sq // 128), -(-kt // 32), dtype=torch.int32, device="cuda")
        fwd(q, k, v, out, lse, bits, 1 / math.sqrt(D), 128, bn, step % 2 == 1, wbits,
            torch.full((H,), -2.0, device="cuda"), gaps)
        bits = wbits
    torch.cuda.synchronize()
    print("memcheck shape ok", D, dt, bool(torch.isfinite(out).all()))
