"""A multi-step run of the synthetic video workload: what skipping saves over a denoising trajectory.

    python bench/multistep.py --backend cuda --steps 20 --grid 21,30,52 --heads 12 --json out.json

Each step feeds that step's Q/K/V (``liteattn.testing.video_qkv``, sharpening as the steps go) through one
``LiteAttention``-style skip state. Per step it records the call's time (median of three runs on copies of the
state), the fraction of tiles the call skipped, and the sparsity the reference backend's own trajectory reaches
at that step (``--reference``). The summary compares the total time with sum_t (1 - s_t) x dense time, the
ideal where skipped tiles cost nothing and kept ones cost what they cost in a dense call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics

import torch

import liteattn
from liteattn.functional import run_attention
from liteattn.testing import video_qkv


def timed(runs) -> float:
    """Median milliseconds over the thunks in ``runs`` (CUDA events on the GPU, wall clock on the CPU)."""
    times = []
    for fn in runs:
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            import time

            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def trajectory(backend, inputs, threshold, *, time_calls: bool):
    """Run every step through one skip state; per step (sparsity skipped by the call, ms or None)."""
    state, rows = liteattn.SkipState(), []
    kwargs = dict(threshold=threshold, scale=None, must_do_list=None, must_skip_list=None, use_int8=False,
                  backend=backend)
    for q, k, v in inputs:
        ms = None
        if time_calls:  # copies made before the clock starts: each timed call reads the same state
            copies = [state.clone() for _ in range(3)]
            ms = timed([lambda q=q, k=k, v=v, c=c: run_attention(q, k, v, c, **kwargs) for c in copies])
        _, _, skipped = run_attention(q, k, v, state, **kwargs)
        rows.append((skipped, ms))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--grid", default="21,30,52", help="frames,height,width tokens (21x30x52 = 32760)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=-6.0)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--reference", action="store_true", help="also run the reference backend's trajectory")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    frames, height, width = (int(x) for x in args.grid.split(","))
    inputs = [video_qkv(1, frames, height, width, heads=args.heads, head_dim=args.head_dim, step=t,
                        num_steps=args.steps, dtype=dtype, device=device, seed=t) for t in range(args.steps)]
    q, k, v = inputs[0]
    warm = liteattn.SkipState()  # compile / load every kernel variant the run uses before any clock starts
    for _ in range(2):
        liteattn.lite_attention(q, k, v, warm, threshold=args.threshold, backend=args.backend)
    liteattn.lite_attention(q, k, v, backend=args.backend)
    dense_ms = timed([lambda: liteattn.lite_attention(q, k, v, backend=args.backend)] * 5)
    ours = trajectory(args.backend, inputs, args.threshold, time_calls=True)
    reference = None
    if args.reference:
        as_fp32 = [tuple(x.float() for x in step) for step in inputs]
        reference = [s for s, _ in trajectory("reference", as_fp32, args.threshold, time_calls=False)]

    total = sum(ms for _, ms in ours)
    ideal = sum((1 - s) * dense_ms for s, _ in ours)
    steps = []
    for t, (s, ms) in enumerate(ours):
        row = {"step": t, "sparsity": s, "ms": ms, "ideal_ms": (1 - s) * dense_ms}
        if reference is not None:
            row["reference_sparsity"] = reference[t]
        steps.append(row)
        ref = f"  reference {reference[t]:.4f} ({100 * (s - reference[t]):+.2f} pp)" if reference else ""
        print(f"step {t:2d}  sparsity {s:.4f}  {ms:8.3f} ms  ideal {(1 - s) * dense_ms:8.3f} ms{ref}", flush=True)
    summary = {"dense_ms": dense_ms, "total_ms": total, "ideal_ms": ideal, "total_over_ideal": total / ideal,
               "speedup_over_dense": args.steps * dense_ms / total}
    if reference is not None:
        summary["max_sparsity_gap_pp"] = max(abs(a["sparsity"] - a["reference_sparsity"]) for a in steps) * 100
    print(json.dumps(summary))
    if args.json:
        meta = {"date": str(datetime.date.today()), "device": torch.cuda.get_device_name() if device == "cuda"
                else "cpu", "torch": torch.__version__, "backend": args.backend, "tokens": frames * height * width,
                "heads": args.heads, "head_dim": args.head_dim, "threshold": args.threshold, "dtype": args.dtype,
                "steps": args.steps}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "steps": steps}, f, indent=1)
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    raise SystemExit(main())
