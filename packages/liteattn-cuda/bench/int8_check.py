"""INT8 Q/K vs 16-bit timings of the cuda backend (dense), with a quick accuracy check at each shape.

    python packages/liteattn-cuda/bench/int8_check.py [--out DIR] [--shapes H,S,D ...] [--dtype bf16|fp16]

Times, per (1, H, S, D) shape: the 16-bit kernel (fwd, a dense call), the 16-bit skip-state kernel reading an
all-ones keep bitmask (the INT8 kernel's own geometry), the INT8 kernel on pre-quantised inputs (fwd_int8), the
fused quantiser alone (quantize_qk) and INT8 end to end (quantize_qk + fwd_int8, what use_int8=True costs), and
prints the speed-up of INT8 over both 16-bit calls. Writes DIR/cuda-int8-check.json. Needs an sm_90 GPU and the
built library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
from gpu_check import bench_ms  # this folder: the same CUDA-event timing as the kernel round

from liteattn.tiles import default_tile_shape
from liteattn_cuda import _ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("LITEATTN_RESULTS", "."))
    ap.add_argument("--shapes", nargs="*", default=["12,32760,128", "24,32768,64"])
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    a = ap.parse_args()
    dtype = torch.bfloat16 if a.dtype == "bf16" else torch.float16
    p = torch.cuda.get_device_properties(0)
    res = {"meta": {"gpu": p.name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                    "dtype": a.dtype}, "rows": []}
    print(json.dumps(res["meta"]), flush=True)
    for spec in a.shapes:
        H, S, D = (int(x) for x in spec.split(","))
        B = 1
        g = torch.Generator(device="cuda").manual_seed(0)
        q, k, v = (torch.randn(B, S, H, D, device="cuda", dtype=dtype, generator=g) for _ in range(3))
        bm, bn = default_tile_shape(D)
        scale = 1 / math.sqrt(D)
        out = torch.empty_like(q)
        out8 = torch.empty_like(q)
        lse = torch.empty(B, H, S, device="cuda")
        lse8 = torch.empty(B, H, S, device="cuda")
        q8, k8, qs, ks = _ops.quantize_qk(q, k, bm, bn)
        flops = 4.0 * B * H * S * S * D
        q_tiles, k_tiles = -(-S // bm), -(-S // bn)
        all_kept = torch.full((B, H, q_tiles, -(-k_tiles // 32)), -1, dtype=torch.int32, device="cuda")

        def bf16():
            _ops.fwd(q, k, v, out, lse, None, scale, bm, bn, False)

        def bf16_skip_state():
            _ops.fwd(q, k, v, out, lse, all_kept, scale, bm, bn, False)

        def int8_kernel():
            _ops.fwd_int8(q8, k8, v, out8, lse8, qs, ks, None, scale, bm, bn, False)

        def quant():
            _ops.quantize_qk(q, k, bm, bn)

        def int8_e2e():
            q8_, k8_, qs_, ks_ = _ops.quantize_qk(q, k, bm, bn)
            _ops.fwd_int8(q8_, k8_, v, out8, lse8, qs_, ks_, None, scale, bm, bn, False)

        row = {"shape": [B, H, S, D]}
        for name, fn in (("bf16" if dtype == torch.bfloat16 else "fp16", bf16),
                         ("16bit_skip_state", bf16_skip_state), ("int8_kernel", int8_kernel),
                         ("quantize", quant), ("int8_e2e", int8_e2e)):
            med, mn, _ = bench_ms(fn)
            row[name] = {"ms": med, "min": mn, "tflops": flops / med / 1e9}
            print(f"  ({H},{S},{D}) {name:12s} {med:8.3f} ms (min {mn:.3f})  {flops / med / 1e9:7.1f} TF/s",
                  flush=True)
        # Accuracy at this shape: the INT8 output against the 16-bit kernel's (both from the same inputs).
        bf16()
        int8_kernel()
        torch.cuda.synchronize()
        rel = ((out8.float() - out.float()).norm() / out.float().norm()).item()
        cos = torch.nn.functional.cosine_similarity(out8.float().flatten(), out.float().flatten(), dim=0).item()
        base = row["bf16" if dtype == torch.bfloat16 else "fp16"]["ms"]
        row.update(rel_vs_16bit=rel, cos_vs_16bit=cos, speedup_kernel=base / row["int8_kernel"]["ms"],
                   speedup_e2e=base / row["int8_e2e"]["ms"],
                   speedup_kernel_vs_skip_state=row["16bit_skip_state"]["ms"] / row["int8_kernel"]["ms"],
                   nan=bool(torch.isnan(out8).any().item()))
        res["rows"].append(row)
        print(f"({H},{S},{D}): INT8 kernel {row['speedup_kernel']:.3f}x, INT8 end-to-end {row['speedup_e2e']:.3f}x "
              f"vs a dense {a.dtype} call; INT8 kernel {row['speedup_kernel_vs_skip_state']:.3f}x the {a.dtype} "
              f"skip-state kernel; rel err vs {a.dtype} kernel {rel:.2e}, cos {cos:.6f}", flush=True)
        del q, k, v, out, out8, q8, k8
        torch.cuda.empty_cache()
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "cuda-int8-check.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
