"""SM clock, power and throttle reasons while FA3, our dense call and the skip-state kernel alternate, on the same
inputs; or one call of one of them for Nsight Compute.

    python packages/liteattn-cuda/bench/clock_power.py clock H,S,D [--video STEP]
    ncu --profile-from-start off --clock-control none --set full -o REPORT \\
        python packages/liteattn-cuda/bench/clock_power.py ncu H,S,D {cuda,cuda-skip,cuda-s50,fa3}

`clock` runs FA3, our dense call and the skip-state kernel (skip test on, nothing skipped) for 4 s each
(``--seconds``), three times in turn, while `nvidia-smi` samples every 50 ms, and prints each phase's time per call
with the mean clock and power of its samples (the first second of a phase left out). An H100 at its power cap
throttles the clock by the energy a kernel spends, so two kernels of equal work can differ here, and so can one
kernel on two sets of inputs: random normal ones (the default), or with ``--video STEP`` the synthetic video
workload's inputs at that step of 20 (``liteattn.testing.video_qkv``; S must be frames x height x width = 21 x 30 x
52 = 32760).
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import threading
import time

import torch

from liteattn.skip_state import pack_keep_mask
from liteattn.testing import random_keep_mask
from liteattn.tiles import default_tile_shape
from liteattn_cuda import fwd

QUERY = "clocks.sm,power.draw,temperature.gpu,clocks_event_reasons.active"
VIDEO_GRID = (21, 30, 52)  # frames, height, width: bench/multistep.py's default grid


def video_inputs(H: int, S: int, D: int, step: int) -> tuple:
    """The synthetic video workload's bf16 Q, K, V at `step` of 20, as bench/multistep.py feeds them."""
    from liteattn.testing import video_qkv

    frames, height, width = VIDEO_GRID
    if S != frames * height * width:
        raise SystemExit(f"--video needs S = {frames} x {height} x {width} = {frames * height * width}, got {S}")
    return video_qkv(1, frames, height, width, H, D, step=step, num_steps=20, dtype=torch.bfloat16, device="cuda",
                     seed=step)


def engines(H: int, S: int, D: int, block_m: int | None = None, inputs: tuple | None = None) -> dict:
    """The calls both modes (and variant_timing.py) run, on one set of bf16 inputs (random normal unless given);
    ``block_m`` overrides the default tile's rows (for builds whose skip-state kernel has other tiles)."""
    import fa3_fwd_interface

    q, k, v = inputs or tuple(torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    bm, bn = default_tile_shape(D)
    bm = block_m or bm
    out, lse = torch.empty_like(q), torch.empty(1, H, S, device="cuda")
    QT, KT = -(-S // bm), -(-S // bn)
    written = torch.empty(1, H, QT, -(-KT // 32), dtype=torch.int32, device="cuda")
    thresholds = torch.full((H,), -5.0, device="cuda")
    scale = 1 / math.sqrt(D)
    runs = {"cuda": lambda: fwd(q, k, v, out, lse, None, scale, bm, bn, False),
            # the skip-state kernel with the skip test on and nothing skipped
            "cuda-skip": lambda: fwd(q, k, v, out, lse, None, scale, bm, bn, False, written, thresholds),
            "fa3": lambda: fa3_fwd_interface.flash_attn_func(q, k, v)}
    # random keep masks at tile sparsity 0.5, 0.75 and 0.9, no skip test
    for percent in (50, 75, 90):
        keep = pack_keep_mask(random_keep_mask(1, H, QT, KT, percent / 100, seed=7)).cuda()
        runs[f"cuda-s{percent}"] = lambda keep=keep: fwd(q, k, v, out, lse, keep, scale, bm, bn, False)
    return runs


def sample_clocks(runs: dict, shape: str, seconds: float = 4.0) -> None:
    smi = subprocess.Popen(["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "50"],
                           stdout=subprocess.PIPE, text=True)
    samples: list[tuple[float, list[str]]] = []

    def read() -> None:
        for line in smi.stdout:
            samples.append((time.time(), line.strip().split(", ")))

    threading.Thread(target=read, daemon=True).start()
    time.sleep(1.0)
    phases = []
    for name in ["fa3", "cuda", "cuda-skip"] * 3:
        start, calls = time.time(), 0
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        while time.time() - start < seconds:
            for _ in range(5):
                runs[name]()
            calls += 5
            torch.cuda.synchronize()
        end.record()
        torch.cuda.synchronize()
        phases.append((name, start + 1.0, time.time(), begin.elapsed_time(end) / calls))
    smi.terminate()
    for name, a, b, ms in phases:
        rows = [s for t, s in samples if a <= t <= b]
        clock = statistics.mean(float(r[0]) for r in rows)
        power = statistics.mean(float(r[1]) for r in rows)
        reasons = sorted({r[3] for r in rows})
        print(f"{shape} {name:9s} {ms:8.3f} ms/call  clock {clock:7.1f} MHz  power {power:6.1f} W  "
              f"temp {max(float(r[2]) for r in rows):.0f}  reasons {reasons}  samples {len(rows)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["clock", "ncu"])
    parser.add_argument("shape", help="H,S,D")
    parser.add_argument("engine", nargs="?", help="ncu mode: the one call to profile")
    parser.add_argument("--seconds", type=float, default=4.0, help="clock mode: length of each phase")
    parser.add_argument("--video", type=int, default=None, metavar="STEP",
                        help="the synthetic video workload's inputs at this step of 20 instead of random ones")
    args = parser.parse_args()
    try:
        H, S, D = (int(x) for x in args.shape.split(","))
    except ValueError:
        parser.error(f"shape must be three integers H,S,D; got {args.shape!r}")
    if args.seconds <= 1.5:  # each phase's first second is left out of its clock samples
        parser.error(f"--seconds must be > 1.5; got {args.seconds}")
    if args.video is not None and args.video < 0:
        parser.error(f"--video STEP must be >= 0; got {args.video}")
    runs = engines(H, S, D, inputs=None if args.video is None else video_inputs(H, S, D, args.video))
    if args.mode == "ncu" and args.engine not in runs:
        raise SystemExit(f"ncu mode needs an engine, one of {sorted(runs)}; got {args.engine!r}")
    shape = args.shape if args.video is None else f"{args.shape}@video{args.video}"
    for run in runs.values():  # compile and warm up outside the profiled / sampled region
        run()
    torch.cuda.synchronize()
    if args.mode == "clock":
        sample_clocks(runs, shape, args.seconds)
    else:
        torch.cuda.profiler.start()
        runs[args.engine]()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
