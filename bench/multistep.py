"""A multi-step run of the synthetic video workload: what skipping saves over a denoising trajectory.

    python bench/multistep.py --backend cuda --steps 20 --grid 21,30,52 --heads 12 --json out.json

Each step feeds that step's Q/K/V (``liteattn.testing.video_qkv``, sharpening as the steps go) through one
``LiteAttention``-style skip state. Per step it records the call's time (median of three runs on copies of the
state), the time of a dense call (no state) on the same inputs, timed right next to it, the time of the backend
reading a keep bitmask that keeps every tile, skip test on (``all_kept``: the skip-state kernel at zero sparsity,
which may use narrower tiles than a dense call), the fraction of tiles the call skipped, and the sparsity the
reference backend's own trajectory reaches at that step (``--reference``). The summary compares the total time
with sum_t (1 - s_t) x dense_t, the ideal where skipped tiles cost nothing and kept ones cost what they cost in a
dense call. The dense call is timed per step because
its time moves with the inputs and with the GPU's clock over a run (on an H100, by up to ~10% between a cool
GPU's first calls and the same calls a few seconds into the run); ``dense_ms``, one dense time taken before
the run, and the ratio against it are reported as well, and so is the ratio against sum_t (1 - s_t) x
all_kept_t, which leaves out what a dense call gains from its own geometry.

A call's time is taken two ways: ``ms``, three calls enqueued back to back between two CUDA events, divided by
three (what a call costs inside a model, where the host prepares the next call while the GPU runs this one),
and ``ms_isolated``, the median of single calls each between its own events (host preparation included, as
the GPU idles through it). ``--row-counts FILE.npz`` saves, per step, the kept tiles of every
(batch, head, query tile) row, to study how the work is spread over the CTAs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics

import torch

import liteattn
from liteattn.backend import AttentionCall
from liteattn.dispatch import get_backend
from liteattn.functional import run_attention
from liteattn.skip_state import pack_keep_mask
from liteattn.testing import video_qkv


def timed(runs) -> float:
    """Median milliseconds over the thunks in ``runs``, each between its own CUDA events (wall clock on the
    CPU)."""
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


def timed_back_to_back(runs) -> float:
    """Mean milliseconds per thunk with all of ``runs`` enqueued between one pair of CUDA events."""
    if not torch.cuda.is_available():
        return timed(runs)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for fn in runs:
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / len(runs)


def tile_shape(head_dim: int, block_m: int | None) -> tuple[int, int]:
    """The run's (block_m, block_n): the default of the head dim, with its block_m replaced when one is given."""
    default_m, block_n = liteattn.default_tile_shape(head_dim)
    return (block_m or default_m, block_n)


def all_kept_call(q, k, v, threshold: float, block_m: int | None) -> AttentionCall:
    """A backend call that reads a keep bitmask keeping every tile and writes the next one (skip test on)."""
    (batch, q_len, heads, head_dim), k_len = q.shape, k.shape[1]
    block_m, block_n = tile_shape(head_dim, block_m)
    keep = torch.ones(batch, heads, -(-q_len // block_m), -(-k_len // block_n), dtype=torch.bool)
    bits = pack_keep_mask(keep).to(q.device)
    thresholds = torch.full((heads,), threshold, dtype=torch.float32, device=q.device)
    return AttentionCall(q, k, v, head_dim ** -0.5, thresholds, block_m, block_n, bits, torch.empty_like(bits))


def trajectory(backend, inputs, threshold, *, time_calls: bool, row_counts: list | None = None,
               block_m: int | None = None):
    """Run every step through one skip state (of ``block_m`` rows per query tile, default: the head dim's); per step
    (sparsity skipped by the call, ms, ms isolated, dense ms on the same inputs, ms with every tile kept), the times
    None without ``time_calls``."""
    state, rows = liteattn.SkipState(*tile_shape(inputs[0][0].shape[-1], block_m)), []
    kwargs = dict(threshold=threshold, scale=None, must_do_list=None, must_skip_list=None, use_int8=False,
                  backend=backend)
    for q, k, v in inputs:
        ms = isolated = dense = all_kept = None
        if time_calls:  # copies made before the clock starts: each timed call reads the same state
            runs = [lambda q=q, k=k, v=v, c=c: run_attention(q, k, v, c, **kwargs)
                    for c in [state.clone() for _ in range(3)]]
            ms = timed_back_to_back(runs)
            dense = timed_back_to_back([lambda q=q, k=k, v=v: liteattn.lite_attention(q, k, v, backend=backend)] * 3)
            call = all_kept_call(q, k, v, threshold, block_m)
            all_kept = timed_back_to_back([lambda c=call: get_backend(backend).forward(c)] * 3)
            runs = [lambda q=q, k=k, v=v, c=c: run_attention(q, k, v, c, **kwargs)
                    for c in [state.clone() for _ in range(3)]]
            isolated = timed(runs)
        if row_counts is not None:
            row_counts.append(state.keep_mask().sum(-1).cpu().numpy() if state.shape_key else None)
        _, _, skipped = run_attention(q, k, v, state, **kwargs)
        rows.append((float(skipped), ms, isolated, dense, all_kept))
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
    parser.add_argument("--row-counts", default=None, help="save the kept tiles per row and step here (.npz)")
    parser.add_argument("--block-m", type=int, default=None, help="query tile rows of the skip state (default: the "
                        "head dim's; the cuda backend also takes 64 at head dim 128)")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    frames, height, width = (int(x) for x in args.grid.split(","))
    inputs = [video_qkv(1, frames, height, width, heads=args.heads, head_dim=args.head_dim, step=t,
                        num_steps=args.steps, dtype=dtype, device=device, seed=t) for t in range(args.steps)]
    q, k, v = inputs[0]
    # Compile / load every kernel variant the run uses before any clock starts.
    warm = liteattn.SkipState(*tile_shape(args.head_dim, args.block_m))
    for _ in range(2):
        liteattn.lite_attention(q, k, v, warm, threshold=args.threshold, backend=args.backend)
    liteattn.lite_attention(q, k, v, backend=args.backend)
    dense_ms = timed_back_to_back([lambda: liteattn.lite_attention(q, k, v, backend=args.backend)] * 5)
    counts = [] if args.row_counts else None
    ours = trajectory(args.backend, inputs, args.threshold, time_calls=True, row_counts=counts, block_m=args.block_m)
    if counts is not None:
        import numpy as np

        np.savez_compressed(args.row_counts, **{f"step{t}": c for t, c in enumerate(counts) if c is not None})
    reference = None
    if args.reference:
        as_fp32 = [tuple(x.float() for x in step) for step in inputs]
        reference = [row[0] for row in trajectory("reference", as_fp32, args.threshold, time_calls=False,
                                                  block_m=args.block_m)]

    total = sum(row[1] for row in ours)
    total_isolated = sum(row[2] for row in ours)
    total_dense = sum(row[3] for row in ours)
    ideal = sum((1 - s) * dense for s, _, _, dense, _ in ours)
    ideal_all_kept = sum((1 - s) * all_kept for s, _, _, _, all_kept in ours)
    ideal_one_dense = sum((1 - row[0]) * dense_ms for row in ours)
    steps = []
    for t, (s, ms, isolated, dense, all_kept) in enumerate(ours):
        row = {"step": t, "sparsity": s, "ms": ms, "ms_isolated": isolated, "dense_ms": dense,
               "ideal_ms": (1 - s) * dense, "all_kept_ms": all_kept}
        if reference is not None:
            row["reference_sparsity"] = reference[t]
        steps.append(row)
        ref = f"  reference {reference[t]:.4f} ({100 * (s - reference[t]):+.2f} pp)" if reference else ""
        print(f"step {t:2d}  sparsity {s:.4f}  {ms:8.3f} ms ({isolated:8.3f} isolated)  dense {dense:8.3f} ms  "
              f"ideal {(1 - s) * dense:8.3f} ms  ratio {ms / ((1 - s) * dense):5.3f}  all kept {all_kept:8.3f} ms{ref}",
              flush=True)
    summary = {"dense_ms": dense_ms, "total_ms": total, "ideal_ms": ideal, "total_over_ideal": total / ideal,
               "speedup_over_dense": total_dense / total, "total_isolated_ms": total_isolated,
               "isolated_over_ideal": total_isolated / ideal, "dense_per_step_total_ms": total_dense,
               "ideal_one_dense_ms": ideal_one_dense, "total_over_ideal_one_dense": total / ideal_one_dense,
               "ideal_all_kept_ms": ideal_all_kept, "total_over_ideal_all_kept": total / ideal_all_kept}
    if reference is not None:
        summary["max_sparsity_gap_pp"] = max(abs(a["sparsity"] - a["reference_sparsity"]) for a in steps) * 100
    print(json.dumps(summary))
    if args.json:
        meta = {"date": str(datetime.date.today()), "device": torch.cuda.get_device_name() if device == "cuda"
                else "cpu", "torch": torch.__version__, "backend": args.backend, "tokens": frames * height * width,
                "heads": args.heads, "head_dim": args.head_dim, "threshold": args.threshold, "dtype": args.dtype,
                "steps": args.steps, "tiles": list(tile_shape(args.head_dim, args.block_m))}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "summary": summary, "steps": steps}, f, indent=1)
    return 0 if math.isfinite(total) else 1


if __name__ == "__main__":
    raise SystemExit(main())
