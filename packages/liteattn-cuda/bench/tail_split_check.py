"""Dense calls with and without the split of their last wave (include/liteattn/tail_split.h), beside FA3, in one
process on the same inputs; the variants alternate so that clock drift hits both.

    python packages/liteattn-cuda/bench/tail_split_check.py --out DIR [--rounds 3] [--shapes H,S,D ...]

Writes DIR/tail-split-check.json and prints a table last. Needs an sm_90 GPU and the built library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics

import torch
from gpu_check import bench_ms

from liteattn.tiles import default_tile_shape
from liteattn_cuda import fwd


def set_split(enabled: bool) -> None:
    os.environ["LITEATTN_CUDA_TAIL_SPLIT"] = "1" if enabled else "0"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--shapes", nargs="*", default=["12,32760,128", "24,32768,128", "40,75600,128", "24,32768,64"])
    args = ap.parse_args()
    try:
        import fa3_fwd_interface
    except Exception as exc:  # baseline missing: time ours alone
        fa3_fwd_interface = None
        print("fa3 unavailable:", exc, flush=True)
    rows = []
    for shape in args.shapes:
        H, S, D = (int(x) for x in shape.split(","))
        q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        bm, bn = default_tile_shape(D)
        out = torch.empty_like(q)
        lse = torch.empty(1, H, S, device="cuda")
        est = 4.0 * H * S * S * D / 600e12 * 1e3
        times: dict[str, list[float]] = {"split": [], "whole": [], "fa3": []}
        for _ in range(args.rounds):
            for name in ("split", "whole"):
                set_split(name == "split")
                times[name].append(bench_ms(lambda: fwd(q, k, v, out, lse, None, 1 / math.sqrt(D), bm, bn, False),
                                            est)[0])
            if fa3_fwd_interface is not None:
                times["fa3"].append(bench_ms(lambda: fa3_fwd_interface.flash_attn_func(q, k, v), est)[0])
        set_split(True)
        row = {"shape": [1, H, S, D], **{k: t for k, t in times.items() if t}}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del q, k, v, out, lse
        torch.cuda.empty_cache()
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "sms": torch.cuda.get_device_properties(0).multi_processor_count}
    with open(os.path.join(args.out, "tail-split-check.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    for row in rows:
        med = {k: statistics.median(row[k]) for k in ("split", "whole", "fa3") if k in row}
        line = (f"{row['shape']}: split {med['split']:.3f} ms, whole {med['whole']:.3f} ms "
                f"(split / whole {med['split'] / med['whole']:.3f})")
        if "fa3" in med:
            line += (f", fa3 {med['fa3']:.3f} ms: vs FA3 split {med['fa3'] / med['split']:.3f}x, "
                     f"whole {med['fa3'] / med['whole']:.3f}x")
        print(line, flush=True)


if __name__ == "__main__":
    main()
