"""Time one build of the library beside FA3: dense calls, the skip-state kernel with the skip test on (nothing
skipped) and a random keep mask at s = 0.5, on the same inputs in one process. Build variants (e.g. with
``LITEATTN_CUDA_NVCC_FLAGS=-DLITEATTN_DENSE_PIN_ROW1=22``) cannot share a process, so run this once per build
(``LITEATTN_CUDA_LIB``) and alternate the builds; FA3's time in each process is the yardstick for clock drift.

    python packages/liteattn-cuda/bench/variant_timing.py NAME [--rounds 2] [--shapes H,S,D ...] >> variants.jsonl

Prints one JSON line per shape: the variant's name, the shape and the times in ms of each round.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
from gpu_check import bench_ms

from liteattn.skip_state import pack_keep_mask
from liteattn.testing import random_keep_mask
from liteattn.tiles import default_tile_shape
from liteattn_cuda import fwd


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=["12,32760,128", "24,32768,128"])
    args = ap.parse_args()
    import fa3_fwd_interface

    for shape in args.shapes:
        H, S, D = (int(x) for x in shape.split(","))
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        bm, bn = default_tile_shape(D)
        QT, KT = -(-S // bm), -(-S // bn)
        out, lse = torch.empty_like(q), torch.empty(1, H, S, device="cuda")
        scale = 1 / math.sqrt(D)
        est = 4.0 * H * S * S * D / 600e12 * 1e3
        written = torch.empty(1, H, QT, -(-KT // 32), dtype=torch.int32, device="cuda")
        thresholds = torch.full((H,), -5.0, device="cuda")
        half = pack_keep_mask(random_keep_mask(1, H, QT, KT, 0.5, seed=7)).cuda()
        calls = {
            "dense": (lambda: fwd(q, k, v, out, lse, None, scale, bm, bn, False), est),
            "fa3": (lambda: fa3_fwd_interface.flash_attn_func(q, k, v), est),
            "skip": (lambda: fwd(q, k, v, out, lse, None, scale, bm, bn, False, written, thresholds), est),
            "s50": (lambda: fwd(q, k, v, out, lse, half, scale, bm, bn, False), est / 2),
        }
        row: dict = {"v": args.name, "shape": shape}
        for _ in range(args.rounds):
            for name, (call, estimate) in calls.items():
                row.setdefault(name, []).append(bench_ms(call, estimate, 1000.0)[0])
        print(json.dumps(row), flush=True)
        del q, k, v, out, lse
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
