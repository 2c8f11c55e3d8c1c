"""Experiment (reverted): the skip-state kernel with 128 x 176 tiles at head dim 128 against 128 x 128; parity
against the reference at 176-key tiles, then timings beside FA3 and the dense kernel.

    python packages/liteattn-cuda/bench/wide_tiles.py parity
    python packages/liteattn-cuda/bench/wide_tiles.py NAME H,S,D ...
"""
import json, math, sys, statistics
import torch
from liteattn.backend import AttentionCall
from liteattn.reference import masked_attention, reference_forward
from liteattn.skip_state import pack_keep_mask, unpack_keep_mask
from liteattn.testing import random_keep_mask, video_qkv, tile_agreement
from liteattn_cuda import fwd
sys.path.insert(0, "packages/liteattn-cuda/bench")
from gpu_check import bench_ms

def parity():
    ok_all = True
    cases = [(1, 4096, 4096, 4, 4, torch.bfloat16, None, False), (2, 1000, 1717, 6, 2, torch.float16, 0.5, True),
             (1, 3000, 2999, 4, 1, torch.bfloat16, 0.75, False), (1, 1, 5, 2, 1, torch.bfloat16, None, False),
             (1, 8192, 8192, 2, 1, torch.float16, 0.9, True)]
    for i, (B, Sq, Sk, H, Hkv, dt, sp, rev) in enumerate(cases):
        g = torch.Generator(device="cuda").manual_seed(10 + i)
        q = torch.randn(B, Sq, H, 128, device="cuda", dtype=dt, generator=g)
        k = torch.randn(B, Sk, Hkv, 128, device="cuda", dtype=dt, generator=g)
        v = torch.randn(B, Sk, Hkv, 128, device="cuda", dtype=dt, generator=g)
        QT, KT = -(-Sq // 128), -(-Sk // 176)
        keep = None if sp is None else random_keep_mask(B, H, QT, KT, sp, seed=i)
        cb = None if keep is None else pack_keep_mask(keep).cuda()
        th = torch.linspace(-8, -2, H, device="cuda")
        W = -(-KT // 32)
        wb, wb_ref = (torch.zeros(B, H, QT, W, dtype=torch.int32, device="cuda") for _ in range(2))
        call = AttentionCall(q, k, v, 128 ** -0.5, th, 128, 176, cb, wb_ref, rev)
        out = torch.full_like(q, float("nan")); lse = torch.full((B, H, Sq), float("nan"), device="cuda")
        fwd(q, k, v, out, lse, cb, call.scale, 128, 176, rev, wb, th)
        torch.cuda.synchronize()
        gold_o, gold_l = reference_forward(call, upcast=True)
        tok = None if keep is None else keep.repeat_interleave(128, 2)[:, :, :Sq].repeat_interleave(176, 3)[..., :Sk].cuda()
        low_o, _ = masked_attention(q, k, v, call.scale, tok, upcast=False)
        err = (out.double() - gold_o.double()).abs().max().item()
        low = (low_o.double() - gold_o.double()).abs().max().item()
        budget = 2 * low + (8e-3 if dt == torch.bfloat16 else 1e-3)
        lse_err = (lse - gold_l).abs().max().item()
        agree = tile_agreement(wb, wb_ref, KT)
        ok = err <= budget and lse_err < 1e-3 and agree >= 0.995
        ok_all &= ok
        print("parity176", json.dumps(dict(case=[B, Sq, Sk, H, Hkv, str(dt), sp, rev], err=err, budget=budget,
                                            lse_err=lse_err, agree=agree, exact=torch.equal(wb, wb_ref), ok=ok)), flush=True)
    # margins: the video workload, 3 steps, exact state
    return ok_all

def timing(name, shapes, rounds):
    import fa3_fwd_interface
    for shape in shapes:
        H, S, D = (int(x) for x in shape.split(","))
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        out, lse = torch.empty_like(q), torch.empty(1, H, S, device="cuda")
        th = torch.full((H,), -5.0, device="cuda")
        calls = {"dense": lambda: fwd(q, k, v, out, lse, None, D ** -0.5, 128, 128, False),
                 "fa3": lambda: fa3_fwd_interface.flash_attn_func(q, k, v)}
        for bn in ((128, 176) if D == 128 else (128,)):
            QT, KT = -(-S // 128), -(-S // bn)
            wb = torch.empty(1, H, QT, -(-KT // 32), dtype=torch.int32, device="cuda")
            calls[f"skip{bn}"] = lambda bn=bn, wb=wb: fwd(q, k, v, out, lse, None, D ** -0.5, 128, bn, False, wb, th)
            bits = pack_keep_mask(random_keep_mask(1, H, QT, KT, 0.5, seed=7)).cuda()
            calls[f"s50_{bn}"] = lambda bn=bn, bits=bits: fwd(q, k, v, out, lse, bits, D ** -0.5, 128, bn, False)
        est = 4.0 * H * S * S * D / 600e12 * 1e3
        row = {"v": name, "shape": shape}
        for _ in range(rounds):
            for key, c in calls.items():
                row.setdefault(key, []).append(bench_ms(c, est * (0.5 if key.startswith("s50") else 1), 800.0)[0])
        print("timing", json.dumps(row), flush=True)
        del q, k, v, calls
        torch.cuda.empty_cache()

if __name__ == "__main__":
    if sys.argv[1] == "parity":
        print("parity ok" if parity() else "PARITY FAILED")
    else:
        timing(sys.argv[1], sys.argv[2:], 2)
