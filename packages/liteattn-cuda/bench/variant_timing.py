"""Time one build of the library beside FA3: dense calls, the skip-state kernel with the skip test on (nothing
skipped) and random keep masks (s = 0.5 by default), on the same inputs in one process. Build variants (e.g. with
``LITEATTN_CUDA_NVCC_FLAGS=-DLITEATTN_DENSE_PIN_ROW1=22``) cannot share a process, so run this once per build
(``LITEATTN_CUDA_LIB``) and alternate the builds; FA3's time in each process is the yardstick for clock drift.

    python packages/liteattn-cuda/bench/variant_timing.py NAME [--rounds 2] [--shapes H,S,D ...] >> variants.jsonl

Prints one JSON line per shape: the variant's name, the shape and the times in ms of each round.
"""

from __future__ import annotations

import argparse
import json

import torch
from clock_power import engines
from gpu_check import bench_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", nargs="*", default=["12,32760,128", "24,32768,128"])
    ap.add_argument("--sparsities", nargs="*", type=int, default=[50], choices=[50, 75, 90],
                    help="tile sparsities (percent) of the random keep masks to time")
    ap.add_argument("--block-m", type=int, default=None, help="query tile rows of the skip-state kernel's calls")
    args = ap.parse_args()

    for shape in args.shapes:
        H, S, D = (int(x) for x in shape.split(","))
        torch.manual_seed(0)
        runs = engines(H, S, D, args.block_m)
        est = 4.0 * H * S * S * D / 600e12 * 1e3
        calls = {"dense": (runs["cuda"], est), "fa3": (runs["fa3"], est), "skip": (runs["cuda-skip"], est)}
        for percent in args.sparsities:
            calls[f"s{percent}"] = (runs[f"cuda-s{percent}"], est * (1 - percent / 100))
        row: dict = {"v": args.name, "shape": shape}
        for _ in range(args.rounds):
            for name, (call, estimate) in calls.items():
                row.setdefault(name, []).append(bench_ms(call, estimate, 1000.0)[0])
        print(json.dumps(row), flush=True)
        del runs
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
