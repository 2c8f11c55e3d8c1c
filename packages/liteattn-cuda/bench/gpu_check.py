"""Parity at odd shapes and timings of the cuda backend against FA3, cuDNN SDPA and FlexAttention, in one process.

    python packages/liteattn-cuda/bench/gpu_check.py --out DIR [--parity-only] [--no-flex] [--shapes H,S,D ...]

Writes DIR/cuda-gpu-check.json and prints a table last. Needs an sm_90 GPU and the built library
(installed, or LITEATTN_CUDA_LIB pointing at a development build).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import traceback

import torch

from liteattn.backend import AttentionCall
from liteattn.reference import masked_attention, reference_forward
from liteattn.skip_state import pack_keep_mask
from liteattn.testing import random_keep_mask
from liteattn.tiles import default_tile_shape
from liteattn_cuda import CudaBackend, fwd

RESULTS: dict = {"meta": {}, "parity": [], "timing": []}
PARITY_FACTOR = 2.0  # FA3's rule: max error <= 2x PyTorch's own low-precision error (+ a small atol)
ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3}


def log(*a):
    print(*a, flush=True)


def make_call(q, k, v, keep=None, reverse=False):
    D = q.shape[-1]
    bm, bn = default_tile_shape(D)
    th = torch.zeros(q.shape[2], dtype=torch.float32, device=q.device)
    cb = None if keep is None else pack_keep_mask(keep).to(q.device)
    return AttentionCall(q, k, v, 1 / math.sqrt(D), th, bm, bn, cb, None, reverse, False)


def dense_token_mask(keep, Sq, Sk, bm, bn):
    return keep.repeat_interleave(bm, dim=2)[:, :, :Sq].repeat_interleave(bn, dim=3)[..., :Sk]


def parity():
    be = CudaBackend()
    cases = [  # (B, Sq, Sk, H, Hkv, D, dtype, sparsity (None = no bitmask), reverse, empty_rows)
        (1, 4096, 4096, 4, 4, 128, torch.bfloat16, None, False, False),
        (2, 1000, 1717, 6, 2, 128, torch.float16, 0.5, True, False),
        (1, 2048, 3333, 4, 1, 64, torch.bfloat16, 0.75, False, False),
        (2, 777, 2049, 4, 4, 64, torch.float16, 0.5, True, True),
        (1, 1500, 1100, 4, 2, 256, torch.bfloat16, 0.5, False, False),
        (1, 513, 700, 2, 2, 256, torch.float16, None, True, False),
        (1, 1024, 1024, 2, 2, 128, torch.bfloat16, 0.25, False, True),
        (1, 1, 5, 2, 1, 128, torch.bfloat16, None, False, False),
        (3, 239, 113, 8, 8, 64, torch.bfloat16, 0.0, True, False),
        (1, 8192, 8192, 2, 1, 128, torch.float16, 0.9, False, False),
        # Dense calls at head dims with a dense geometry of their own: odd lengths, GQA, batch 2.
        (2, 1000, 1717, 6, 2, 128, torch.float16, None, True, False),
        (2, 777, 2049, 4, 2, 64, torch.bfloat16, None, False, False),
    ]
    for i, (B, Sq, Sk, H, Hkv, D, dt, sp, rev, empty) in enumerate(cases):
        rec = {"case": [B, Sq, Sk, H, Hkv, D, str(dt), sp, rev, empty]}
        try:
            g = torch.Generator(device="cuda").manual_seed(100 + i)
            q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt, generator=g)
            k = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt, generator=g)
            v = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt, generator=g)
            bm, bn = default_tile_shape(D)
            QT, KT = -(-Sq // bm), -(-Sk // bn)
            keep = None
            if sp is not None:
                keep = random_keep_mask(B, H, QT, KT, sp, seed=i)
                if empty:
                    keep[:, 0, 0] = False  # a query tile with no computed key tile: out 0, lse -inf
            call = make_call(q, k, v, keep, rev)
            assert be.unsupported_reason(call) is None, be.unsupported_reason(call)
            # Poison the outputs: every element must be written.
            out = torch.full((B, Sq, H, D), float("nan"), device="cuda", dtype=dt)
            lse = torch.full((B, H, Sq), float("nan"), device="cuda")
            fwd(q, k, v, out, lse, call.compute_bits, call.scale, bm, bn, rev)
            torch.cuda.synchronize()
            gold_o, gold_l = reference_forward(call, upcast=True)
            tok = None if keep is None else dense_token_mask(keep, Sq, Sk, bm, bn).cuda()
            low_o, _ = masked_attention(q, k, v, call.scale, tok, upcast=False)
            err = (out.double() - gold_o.double()).abs().max().item()
            low = (low_o.double() - gold_o.double()).abs().max().item()
            budget = PARITY_FACTOR * low + ATOL[dt]
            finite = gold_l > -math.inf
            lse_ok = torch.equal(finite, lse > -math.inf) and not torch.isnan(lse).any().item()
            lse_err = (lse[finite] - gold_l[finite].float()).abs().max().item() if finite.any() else 0.0
            rel = ((out.double() - gold_o.double()).norm() / gold_o.double().norm().clamp_min(1e-30)).item()
            # Backend path (allocates its own outputs) must agree bit for bit with the direct call.
            out2, lse2 = be.forward(call)
            same = torch.equal(out2, out) and torch.equal(lse2.nan_to_num(), lse.nan_to_num())
            ok = (not torch.isnan(out).any().item()) and err <= budget and lse_ok and lse_err <= 1e-3 and same
            rec.update(ok=ok, max_err=err, lowp_err=low, budget=budget, rel_err=rel, lse_err=lse_err,
                       lse_inf_match=lse_ok, backend_same=same)
        except Exception as exc:  # keep going: one failure should not hide the others
            rec.update(ok=False, error=f"{type(exc).__name__}: {exc}", tb=traceback.format_exc()[-1500:])
        RESULTS["parity"].append(rec)
        log("parity", json.dumps(rec)[:400])


def bench_ms(fn, est_ms=None, target_ms=1500.0):
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    if est_ms is None:
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        est_ms = (time.perf_counter() - t0) * 1e3
    iters = int(min(100, max(5, target_ms / max(est_ms, 1e-3))))
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times), min(times), max(times)


def timing(shapes, sparsities, use_flex):
    try:
        import fa3_fwd_interface
    except Exception as exc:  # baseline missing: record and go on
        fa3_fwd_interface = None
        log("fa3 unavailable:", exc)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    flex = None
    if use_flex:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention
        flex = torch.compile(flex_attention)
    for (H, S, D) in shapes:
        B = 1
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        bm, bn = default_tile_shape(D)
        QT, KT = -(-S // bm), -(-S // bn)
        flops_dense = 4.0 * B * H * S * S * D
        out = torch.empty_like(q)
        lse = torch.empty(B, H, S, device="cuda")
        row = {"shape": [B, H, S, D]}

        def rec(name, ms, frac=1.0):
            row[name] = {"ms": ms[0], "min": ms[1], "max": ms[2], "tflops": flops_dense * frac / ms[0] / 1e9}
            log(f"  ({H},{S},{D}) {name:14s} {ms[0]:9.3f} ms  {flops_dense * frac / ms[0] / 1e9:7.1f} TF/s(eff)")

        scale = 1 / math.sqrt(D)
        dense_est = flops_dense / 600e12 * 1e3
        rec("cuda_dense", bench_ms(lambda: fwd(q, k, v, out, lse, None, scale, bm, bn, False), dense_est))
        # Same, with the in-kernel skip test writing the state (bookkeeping cost at 0% sparsity).
        wbits = torch.empty(B, H, QT, -(-KT // 32), dtype=torch.int32, device="cuda")
        thr = torch.full((H,), -5.0, device="cuda")
        rec("cuda_dense_skiptest", bench_ms(lambda: fwd(q, k, v, out, lse, None, scale, bm, bn, False, wbits, thr),
                                            dense_est))
        if fa3_fwd_interface is not None:
            rec("fa3", bench_ms(lambda: fa3_fwd_interface.flash_attn_func(q, k, v), dense_est))
        qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
        try:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                rec("cudnn", bench_ms(lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt), dense_est))
        except Exception as exc:
            log("cudnn failed:", exc)
        for sp in sparsities:
            keep = random_keep_mask(B, H, QT, KT, sp, seed=7)
            frac = keep.float().mean().item()
            bits = pack_keep_mask(keep).cuda()
            rec(f"cuda_s{int(sp * 100)}", bench_ms(lambda: fwd(q, k, v, out, lse, bits, scale, bm, bn, False),
                                                   dense_est * frac), frac)
            row[f"cuda_s{int(sp * 100)}"]["kept"] = frac
            if flex is not None and S <= 32768 and D == 128:
                try:
                    kv_num = keep.sum(-1).to(torch.int32).cuda()
                    kv_idx = torch.argsort(keep.to(torch.int8), dim=-1, descending=True, stable=True)
                    kv_idx = kv_idx.to(torch.int32).cuda()
                    # Kept tiles passed as "full" blocks: Flex skips its per-element mask_mod on them,
                    # the fastest form of this mask it has.
                    bmask = BlockMask.from_kv_blocks(torch.zeros_like(kv_num), kv_idx, kv_num, kv_idx,
                                                     BLOCK_SIZE=(bm, bn), seq_lengths=(S, S))
                    rec(f"flex_s{int(sp * 100)}",
                        bench_ms(lambda: flex(qt, kt, vt, block_mask=bmask), dense_est * frac),
                        frac)
                except Exception as exc:
                    log("flex failed:", type(exc).__name__, str(exc)[:300])
        RESULTS["timing"].append(row)
        json.dump(RESULTS, open(os.path.join(OUT, f"{TAG}-gpu-check.json"), "w"), indent=1)
        del q, k, v, out, lse
        torch.cuda.empty_cache()


def table():
    for r in RESULTS["parity"]:
        log(("PASS " if r.get("ok") else "FAIL ") + str(r["case"]) +
            (f" err={r.get('max_err', 0):.2e} budget={r.get('budget', 0):.2e} lse={r.get('lse_err', 0):.1e}"
             if "max_err" in r else " " + r.get("error", "")[:200]))
    for row in RESULTS["timing"]:
        d = row["cuda_dense"]["ms"]
        parts = [f"{row['shape']}: dense {d:.2f} ms {row['cuda_dense']['tflops']:.0f} TF/s"]
        if "cuda_s0" in row:  # the skip-state kernel with every tile kept, and its skip test on top
            s0 = row["cuda_s0"]["ms"]
            parts.append(f"s0 / dense {s0 / d:.3f}, skip test / s0 {row['cuda_dense_skiptest']['ms'] / s0:.3f}")
        if "fa3" in row:
            parts.append(f"fa3 {row['fa3']['ms']:.2f} ({row['fa3']['ms'] / d:.3f}x)")
        if "cudnn" in row:
            parts.append(f"cudnn {row['cudnn']['ms']:.2f}")
        for key in sorted(k for k in row if k.startswith("cuda_s")):
            s = row[key]
            ideal = s["kept"] * d + 0.02 * d
            extra = f" flex {row['flex_' + key[5:]]['ms']:.2f} ({row['flex_' + key[5:]]['ms'] / s['ms']:.2f}x)" \
                if "flex_" + key[5:] in row else ""
            parts.append(f"{key} {s['ms']:.2f} (/ideal {s['ms'] / ideal:.2f}){extra}")
        log(" | ".join(parts))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--parity-only", action="store_true")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--no-parity", action="store_true")
    ap.add_argument("--tag", default="cuda")
    ap.add_argument("--shapes", nargs="*", default=["12,32760,128", "24,32768,128", "40,75600,128", "24,32768,64"])
    ap.add_argument("--sparsities", default="0,0.5,0.75,0.9")
    a = ap.parse_args()
    OUT, TAG = a.out, a.tag
    os.makedirs(OUT, exist_ok=True)
    p = torch.cuda.get_device_properties(0)
    RESULTS["meta"] = {"gpu": p.name, "torch": torch.__version__, "cuda": torch.version.cuda,
                       "date": time.strftime("%Y-%m-%d"), "sms": p.multi_processor_count}
    log(json.dumps(RESULTS["meta"]))
    if not a.no_parity:
        parity()
    json.dump(RESULTS, open(os.path.join(OUT, f"{TAG}-gpu-check.json"), "w"), indent=1)
    if not a.parity_only:
        shapes = [tuple(int(x) for x in s.split(",")) for s in a.shapes]
        timing(shapes, [float(x) for x in a.sparsities.split(",")], not a.no_flex)
    json.dump(RESULTS, open(os.path.join(OUT, f"{TAG}-gpu-check.json"), "w"), indent=1)
    table()
