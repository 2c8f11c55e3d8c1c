"""Parity at real sizes and timings of the Triton backend on one GPU, in one process.

    python packages/liteattn-triton/bench/gpu_check.py --out DIR [--quick] [--parity-only] [--shapes ...]

Writes DIR/triton-gpu-check.json and prints a table last. Baselines (when importable): FA3 (fa3_fwd_interface),
FlexAttention with the same block mask, cuDNN SDPA.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

import torch
import triton
from triton.testing import do_bench

from liteattn.backend import AttentionCall
from liteattn.reference import reference_forward
from liteattn.skip_state import pack_keep_mask
from liteattn.testing import random_keep_mask, rel_error
from liteattn_triton.attention import triton_forward

RESULTS: dict = {"meta": {}, "parity": [], "timing": []}


OUT_DIR = "."


def dump():
    with open(os.path.join(OUT_DIR, "triton-gpu-check.json"), "w") as f:
        json.dump(RESULTS, f, indent=1)


def log(*a):
    print(*a, flush=True)


def make_call(q, k, v, bm, bn, keep=None, write=False, reverse=False, int8=False, thr=-5.0):
    B, Sq, H, D = q.shape
    QT, KT = -(-Sq // bm), -(-k.shape[1] // bn)
    W = -(-KT // 32)
    cb = None if keep is None else pack_keep_mask(keep).to(q.device)
    wb = torch.full((B, H, QT, W), 0x5A5A5A5A, dtype=torch.int32, device=q.device) if write else None
    th = torch.full((H,), thr, dtype=torch.float32, device=q.device)
    return AttentionCall(q, k, v, 1 / math.sqrt(D), th, bm, bn, cb, wb, reverse, int8)


def parity(quick: bool):
    cases = [  # (B, Sq, Sk, H, Hkv, D, dtype, sparsity, reverse, int8)
        (1, 4096, 4096, 4, 4, 128, torch.bfloat16, 0.5, False, False),
        (2, 3000, 3333, 4, 2, 64, torch.float16, 0.75, True, False),
        (1, 2048, 2100, 4, 1, 256, torch.bfloat16, 0.5, False, False),
        (1, 2048, 2048, 2, 2, 96, torch.float16, 0.0, True, False),
        (1, 2048, 2048, 2, 2, 32, torch.bfloat16, 0.5, False, False),
        (1, 4096, 4096, 4, 4, 128, torch.bfloat16, 0.0, False, True),
        (1, 3000, 3100, 4, 2, 64, torch.float16, 0.5, True, True),
    ]
    if quick:
        cases = cases[:2]
    for B, Sq, Sk, H, Hkv, D, dt, sp, rev, int8 in cases:
        bm, bn = (128, 128) if D <= 128 else (128, 64)
        torch.manual_seed(1)
        q = torch.randn(B, Sq, H, D, device="cuda", dtype=dt)
        k = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt)
        v = torch.randn(B, Sk, Hkv, D, device="cuda", dtype=dt)
        QT, KT = -(-Sq // bm), -(-Sk // bn)
        keep = random_keep_mask(B, H, QT, KT, sp, seed=3, device="cuda") if sp > 0 else None
        ref_call = make_call(q, k, v, bm, bn, keep, True, rev, int8)
        ro, rl = reference_forward(ref_call)
        golden = None
        if int8:  # error against the unquantised fp32 reference
            gcall = make_call(q, k, v, bm, bn, keep, False, rev, False)
            golden, _ = reference_forward(gcall)
        for desc, pers in ((True, None), (False, False)):
            if True:
                c = make_call(q, k, v, bm, bn, keep, True, rev, int8)
                try:
                    o, l = triton_forward(c, persistent=pers, use_desc=desc)
                    torch.cuda.synchronize()
                    fin = torch.isfinite(rl)
                    rec = dict(B=B, Sq=Sq, Sk=Sk, H=H, Hkv=Hkv, D=D, dtype=str(dt), sparsity=sp, reverse=rev,
                               int8=int8, desc=desc, persistent=pers,
                               out_rel_err=rel_error(o, ro), lse_max_err=(l[fin] - rl[fin]).abs().max().item(),
                               lse_inf_match=bool(torch.equal(torch.isinf(l), torch.isinf(rl))),
                               bits_equal_words=(c.write_bits == ref_call.write_bits).float().mean().item(),
                               nan=bool(torch.isnan(o).any()))
                    if golden is not None:
                        rec["int8_rel_err_vs_fp32"] = rel_error(o, golden)
                except Exception as e:  # keep going: one failing variant must not hide the others
                    rec = dict(D=D, dtype=str(dt), desc=desc, persistent=pers, int8=int8, error=repr(e)[:400])
                    traceback.print_exc()
                RESULTS["parity"].append(rec)
                log("parity", rec)


def bench(fn):
    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


def timing(shapes, sparsities, variants):
    try:
        sys.path.insert(0, "/tmp/site")
        import fa3_fwd_interface as fa3
    except Exception as e:
        fa3 = None
        log("no FA3:", repr(e)[:200])
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    flex = torch.compile(flex_attention, dynamic=False)

    for shape in shapes:
        _time_shape(*shape, sparsities, variants, fa3, flex, BlockMask)
        torch.cuda.empty_cache()


def _time_shape(B, H, S, D, sparsities, variants, fa3, flex, BlockMask):
    if True:
        dt = torch.bfloat16
        bm, bn = (128, 128) if D <= 128 else (128, 64)
        torch.manual_seed(0)
        q = torch.randn(B, S, H, D, device="cuda", dtype=dt)
        k = torch.randn(B, S, H, D, device="cuda", dtype=dt)
        v = torch.randn(B, S, H, D, device="cuda", dtype=dt)
        QT, KT = -(-S // bm), -(-S // bn)
        flops = 4 * B * H * S * S * D
        rows = []

        def rec(engine, s, ms, **kw):
            r = dict(shape=[B, H, S, D], engine=engine, sparsity=s, ms=ms,
                     tflops_dense_equiv=flops / ms * 1e-9, **kw)
            RESULTS["timing"].append(r)
            rows.append(r)
            dump()
            log(f"  {engine:32s} s={s:.2f} {ms:8.3f} ms  {flops / ms * 1e-9 * (1 - s):6.0f} TF/s(eff)")

        def safe(engine, s, fn):
            try:
                rec(engine, s, bench(fn))
            except Exception as e:
                traceback.print_exc()
                RESULTS["timing"].append(dict(shape=[B, H, S, D], engine=engine, sparsity=s, error=repr(e)[:400]))

        if fa3 is not None:
            rec("fa3", 0.0, bench(lambda: fa3.flash_attn_func(q, k, v)))
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            qt_, kt_, vt_ = (x.transpose(1, 2) for x in (q, k, v))
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                rec("cudnn", 0.0, bench(lambda: torch.nn.functional.scaled_dot_product_attention(qt_, kt_, vt_)))
        except Exception as e:
            log("no cudnn:", repr(e)[:200])

        for name, kw in variants:
            try:
                c = make_call(q, k, v, bm, bn)
                rec(f"triton-dense{name}", 0.0, bench(lambda c=c, kw=kw: triton_forward(c, **kw)))
            except Exception as e:
                traceback.print_exc()
                RESULTS["timing"].append(dict(shape=[B, H, S, D], engine=f"triton-dense{name}", error=repr(e)[:400]))
        # bookkeeping at 0% sparsity: all-ones compute bits, with / without the skip test
        ones = torch.ones(B, H, QT, KT, dtype=torch.bool, device="cuda")
        c = make_call(q, k, v, bm, bn, ones, True, thr=-5.0)
        safe("triton-allkept-skiptest", 0.0, lambda: triton_forward(c))
        safe("triton-allkept-noskiptest", 0.0, lambda: triton_forward(c, skip_test=False))
        ci = make_call(q, k, v, bm, bn, int8=True)
        safe("triton-int8-dense", 0.0, lambda: triton_forward(ci))
        for s in sparsities:
            keep = random_keep_mask(B, H, QT, KT, s, seed=7, device="cuda")
            c = make_call(q, k, v, bm, bn, keep, True, thr=-5.0)
            safe("triton-sparse", s, lambda c=c: triton_forward(c))
            safe("triton-sparse-nonpersistent", s, lambda c=c: triton_forward(c, persistent=False))
            if S % 128 == 0 and bn == 128:
                kvn = keep.sum(-1).to(torch.int32)
                kvi = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True).to(torch.int32)
                bmask = BlockMask.from_kv_blocks(torch.zeros_like(kvn), kvi, kvn, kvi, BLOCK_SIZE=128,
                                                 seq_lengths=(S, S))
                qt_, kt_, vt_ = (x.transpose(1, 2) for x in (q, k, v))
                try:
                    def run_flex(qt_=qt_, kt_=kt_, vt_=vt_, bmask=bmask):
                        return flex(qt_, kt_, vt_, block_mask=bmask)

                    rec("flex", s, bench(run_flex))
                except Exception as e:
                    traceback.print_exc()
                    log("flex failed", repr(e)[:300])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--parity-only", action="store_true")
    ap.add_argument("--shapes", default="1,24,32768,128;1,24,32768,64")
    ap.add_argument("--sparsities", default="0.5,0.75,0.9")
    args = ap.parse_args()
    global OUT_DIR
    OUT_DIR = args.out
    props = torch.cuda.get_device_properties(0)
    RESULTS["meta"] = dict(gpu=props.name, sms=props.multi_processor_count, torch=torch.__version__,
                           triton=triton.__version__, date=time.strftime("%Y-%m-%d"))
    log(RESULTS["meta"])
    t0 = time.time()
    parity(args.quick)
    log(f"parity done in {time.time() - t0:.1f}s")
    if not args.parity_only:
        shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes.split(";")]
        variants = [("-desc", dict(use_desc=True)), ("-ptr", dict(use_desc=False))]
        timing(shapes, [float(x) for x in args.sparsities.split(",")], variants)
    dump()
    log("\n== summary ==")
    for r in RESULTS["parity"]:
        if "error" in r:
            log("PARITY ERROR", r)
        else:
            log(f"parity D{r['D']} {r['dtype'][6:]} s{r['sparsity']} i8={r['int8']} desc={r['desc']} "
                f"pers={r['persistent']}: "
                f"out {r['out_rel_err']:.1e} lse {r['lse_max_err']:.1e} bits {r['bits_equal_words']:.4f}"
                + (f" vsfp32 {r['int8_rel_err_vs_fp32']:.1e}" if 'int8_rel_err_vs_fp32' in r else ""))
    for r in RESULTS["timing"]:
        if "error" in r:
            log("TIMING ERROR", r["engine"], r["error"][:200])
        else:
            log(f"{str(r['shape']):22s} {r['engine']:30s} s={r['sparsity']:.2f} {r['ms']:8.3f} ms")
    log(f"total {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
