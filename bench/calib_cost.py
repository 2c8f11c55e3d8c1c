"""Calibration cost: a calibration run against a normal run of the same layers and steps.

A few LiteAttention layers (one skip state each; layer l attends with a softmax scale of its own, so that the
layers differ in sharpness) run the synthetic video workload (``liteattn.testing.video_qkv``, sharper with
every step) for ``--steps`` denoising steps under a ``LiteAttentionRegistry``:

* ``normal``: mode ``const`` at ``--threshold``;
* ``calib``: mode ``calib`` at ``--target`` (the other calibration settings at their defaults);
* ``load``: mode ``load`` of the file the calibration wrote (the calibrated thresholds, no bisection).

Every mode runs once as a warm-up (kernel compilation, autotuning, and on CUDA the capture of the bisection
rounds' graphs, which the timed run re-uses), then once timed: wall clock around the whole run,
CUDA-synchronised. The backend's forward is counted, so the table also shows the attention calls per (layer,
step) that the host launched (a replayed graph's calls are not seen), and, for the calibration, the mean
bisection evaluations and rounds per (layer, step), read off each calibrated call's result. ``extra ms/round``
is (calib - load) over the rounds run: what a bisection round costs, host or GPU, whichever bounds it.
``--no-cuda-graph`` runs the rounds eagerly (``CalibConfig.cuda_graph=False``), to compare. Prints a table;
``--json`` also writes it with the device name, the torch / triton versions and the date. On an H100::

    python bench/calib_cost.py --backend cuda --json bench/results/calib-cost-h100.json
    python bench/calib_cost.py --backend cuda --no-cuda-graph --json bench/results/calib-cost-h100-eager.json

Without CUDA it runs the reference backend at a tiny size (a smoke check).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import torch

import liteattn
import liteattn_calib.registry
from liteattn.testing import video_qkv
from liteattn_calib import LiteAttentionRegistry
from liteattn_calib.bisect import first_round_points
from liteattn_calib.graphs import shared_round_graphs

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MODES = ("normal", "calib", "load")


class CallCounter:
    """Wraps a backend's forward: the query length and the number of query heads of every call, in order."""

    def __init__(self, backend):
        self.backend, self.q_lens, self.heads = backend, [], []
        forward = backend.forward

        def counted(call):
            self.q_lens.append(call.q_len)
            self.heads.append(call.num_heads)
            return forward(call)

        backend.forward = counted  # dispatch hands out one cached instance per backend

    def remove(self) -> None:
        vars(self.backend).pop("forward", None)


class CalibCounter:
    """Wraps the registry's ``calibrate_call``: the bisection evaluations and rounds of every calibrated call,
    which a counter of backend calls cannot see once the rounds replay as a CUDA graph, and per warm-started
    call the fraction of heads whose answer the window bracketed (read after the run)."""

    def __init__(self):
        self.evaluations, self.rounds, self._windows = [], [], []
        self.original = liteattn_calib.registry.calibrate_call

        def counted(query, key, value, state, config, **kwargs):
            result = self.original(query, key, value, state, config, **kwargs)
            self.evaluations.append(result.evaluations)
            self.rounds.append(result.rounds)
            points, _ = first_round_points(config, query.shape[2], result.thresholds.device, kwargs.get("start"))
            if points.shape[0] == 4:
                self._windows.append((points[1], points[2], result.thresholds))
            return result

        liteattn_calib.registry.calibrate_call = counted

    def warm_hits(self) -> float | None:
        """Fraction of warm-started (call, head) pairs whose threshold landed inside the window."""
        if not self._windows:
            return None
        hits = [((low <= t) & ((t < high) | (high == t.new_tensor(0.0)))).float().mean() for low, high, t in
                self._windows]
        return float(torch.stack(hits).mean())

    def clear(self) -> None:
        self.evaluations.clear()
        self.rounds.clear()
        self._windows.clear()

    def remove(self) -> None:
        liteattn_calib.registry.calibrate_call = self.original


def make_inputs(args, device) -> list[tuple[torch.Tensor, ...]]:
    """One (q, k, v) per step, built before any timing."""
    return [
        video_qkv(
            1,
            *args.grid,
            heads=args.heads,
            head_dim=args.head_dim,
            step=step,
            num_steps=args.steps,
            dtype=DTYPES[args.dtype],
            device=device,
            seed=step,
        )
        for step in range(args.steps)
    ]


def run_mode(mode: str, layers: dict, inputs, scales, args, counter: CallCounter, calibs: CalibCounter,
             path: Path) -> dict:
    for module in layers.values():
        module.reset_skip_state()
    registry = LiteAttentionRegistry(
        layers,
        "const" if mode == "normal" else mode,
        threshold=args.threshold if mode == "normal" else None,
        filename=path if mode == "load" else None,
        calib_config={"target_error": args.target, "progress": False, "sample_query_tiles": args.sample_query_tiles,
                      "candidates_per_round": args.candidates_per_round, "cuda_graph": not args.no_cuda_graph,
                      "warm_start": not args.no_warm_start,
                      **({} if args.resolution is None else {"resolution": args.resolution})},
    )
    counter.q_lens.clear()
    counter.heads.clear()
    calibs.clear()
    _sync()
    start = time.perf_counter()
    with torch.no_grad():
        for step, (q, k, v) in enumerate(inputs):
            with registry.timestep(step):
                for module, scale in zip(layers.values(), scales):
                    module(q, k, v, scale)
    _sync()
    seconds = time.perf_counter() - start
    means = registry.layer_means()
    if mode == "calib":
        registry.save(path, summary=False)
    registry.remove()
    layer_steps = len(layers) * len(inputs)
    full = sum(1 for n in counter.q_lens if n == inputs[0][0].shape[1])
    row = {
        "mode": mode,
        "seconds": seconds,
        "mean_sparsity": sum(s for _, s in means.values()) / len(means),
        "mean_threshold": sum(t for t, _ in means.values()) / len(means),
        "full_calls": full / layer_steps,
        "sampled_calls": (len(counter.q_lens) - full) / layer_steps,
        "calls": len(counter.q_lens) / layer_steps,
        "head_calls": sum(counter.heads) / args.heads / layer_steps,  # C candidates in one call count C
    }
    if mode == "calib":
        row["mean_iterations"] = sum(calibs.evaluations) / layer_steps  # candidates per (layer, step)
        row["mean_rounds"] = sum(calibs.rounds) / layer_steps
        row["total_rounds"] = sum(calibs.rounds)
        row["warm_hits"] = calibs.warm_hits()
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backend", default=None, help="triton, cuda or reference (default: triton on CUDA, reference on the CPU)"
    )
    parser.add_argument(
        "--grid",
        default=None,
        help="frames,height,width of the token grid (default 8,64,64 = 32768 tokens on CUDA; 2,16,16 on the CPU)",
    )
    parser.add_argument("--heads", type=int, default=None, help="default 12 on CUDA, 4 on the CPU")
    parser.add_argument("--head-dim", type=int, default=None, help="default 128 on CUDA, 32 on the CPU")
    parser.add_argument("--layers", type=int, default=None, help="default 4 on CUDA, 2 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="default 20 on CUDA, 4 on the CPU")
    parser.add_argument(
        "--block",
        type=int,
        default=None,
        help="square tiles of this size (default: the default tile shape on CUDA; 16 on the CPU, so that the "
        "sample is a part of the query tiles)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--threshold", type=float, default=-10.0, help="the normal run's constant threshold")
    parser.add_argument("--target", type=float, default=0.01, help="the calibration's target error")
    parser.add_argument("--sample-query-tiles", type=_sample, default=16, help="an int, or 'all'")
    parser.add_argument("--candidates-per-round", type=int, default=1, help="CalibConfig.candidates_per_round")
    parser.add_argument("--resolution", type=float, default=None, help="CalibConfig.resolution (default: its own)")
    parser.add_argument("--no-cuda-graph", action="store_true",
                        help="run the bisection rounds eagerly (CalibConfig.cuda_graph=False) instead of as a "
                        "captured CUDA graph")
    parser.add_argument("--no-warm-start", action="store_true",
                        help="bisect every step on the whole range (CalibConfig.warm_start=False)")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device == "cuda"
    if not gpu:  # the reference runs many tiny ops: on a few shared cores, competing threads only add noise
        torch.set_num_threads(1)
    args.backend = args.backend or ("triton" if gpu else "reference")
    args.grid = tuple(int(x) for x in args.grid.split(",")) if args.grid else ((8, 64, 64) if gpu else (2, 16, 16))
    args.heads = args.heads or (12 if gpu else 4)
    args.head_dim = args.head_dim or (128 if gpu else 32)
    args.layers = args.layers or (4 if gpu else 2)
    args.steps = args.steps or (20 if gpu else 4)
    args.block = args.block or (None if gpu else 16)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")

    backend = liteattn.get_backend(args.backend)
    tile_gaps = backend.capabilities().tile_gaps
    layers = {
        f"blocks.{i}.attn": liteattn.LiteAttention(backend=args.backend, block_m=args.block, block_n=args.block)
        for i in range(args.layers)
    }
    scales = [(0.8 + 0.4 * i / max(args.layers - 1, 1)) / math.sqrt(args.head_dim) for i in range(args.layers)]
    print(
        f"{args.backend} on {_device_name(device)}: {args.layers} layers x {args.steps} steps, "
        f"(1, {math.prod(args.grid)} tokens, {args.heads} heads, D={args.head_dim}) {args.dtype}, "
        f"tile gaps: {'yes' if tile_gaps else 'no'}; preparing inputs...",
        flush=True,
    )
    inputs = make_inputs(args, device)
    counter, calibs = CallCounter(backend), CalibCounter()
    graphs = shared_round_graphs()
    graphs.clear()
    rows, warm_up = {}, {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "calib.toml"
            for mode in MODES:  # warm-up (load reads the file that calib writes)
                warm_up[mode] = run_mode(mode, layers, inputs, scales, args, counter, calibs, path)
            captures = graphs.captures
            for mode in MODES:
                rows[mode] = run_mode(mode, layers, inputs, scales, args, counter, calibs, path)
    finally:
        counter.remove()
        calibs.remove()
    calib = rows["calib"]
    for row in rows.values():
        row["ratio"] = row["seconds"] / rows["normal"]["seconds"]
    calib["extra_ms_per_round"] = 1e3 * (calib["seconds"] - rows["load"]["seconds"]) / max(calib["total_rounds"], 1)
    calib["graph_captures"], calib["graph_replays"] = captures, graphs.replays
    print(_table(rows))
    hits = "-" if calib["warm_hits"] is None else f"{100 * calib['warm_hits']:.1f}%"
    print(f"calib / load = {calib['seconds'] / rows['load']['seconds']:.2f}; extra ms/round = "
          f"{calib['extra_ms_per_round']:.3f} over {calib['total_rounds']} rounds; warm start "
          f"{'off' if args.no_warm_start else 'on'}, heads inside their window: {hits}")
    print(f"bisection rounds: {'eager' if args.no_cuda_graph else 'CUDA graph (eager off CUDA)'}; graphs captured "
          f"in the warm-up: {captures}, replays: {graphs.replays}; warm-up calib run (compilation and captures "
          f"included): {warm_up['calib']['seconds']:.3f} s")
    if args.json:
        meta = {
            "date": str(datetime.date.today()),
            "device": _device_name(device),
            "torch": torch.__version__,
            "triton": _version("triton"),
            "liteattn": liteattn.__version__,
            "backend": args.backend,
            "tile_gaps": tile_gaps,
            "tokens": math.prod(args.grid),
            "grid": args.grid,
            "heads": args.heads,
            "head_dim": args.head_dim,
            "layers": args.layers,
            "steps": args.steps,
            "block": args.block,
            "dtype": args.dtype,
            "threshold": args.threshold,
            "target": args.target,
            "sample_query_tiles": args.sample_query_tiles,
            "candidates_per_round": args.candidates_per_round,
            "resolution": args.resolution,
            "cuda_graph": not args.no_cuda_graph,
            "warm_start": not args.no_warm_start,
        }
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": list(rows.values())}, f, indent=1)
    return 0


def _table(rows: dict) -> str:
    lines = [
        f"{'run':<7} {'time s':>8} {'ratio':>6} {'sparsity':>8} {'threshold':>9} {'full/call':>9} "
        f"{'sampled/call':>12} {'iterations':>10} {'rounds':>6}"
    ]
    for row in rows.values():
        iterations = f"{row['mean_iterations']:.2f}" if "mean_iterations" in row else "-"
        rounds = f"{row['mean_rounds']:.2f}" if "mean_rounds" in row else "-"
        lines.append(
            f"{row['mode']:<7} {row['seconds']:>8.3f} {row['ratio']:>6.2f} {row['mean_sparsity']:>8.3f} "
            f"{row['mean_threshold']:>9.2f} {row['full_calls']:>9.2f} {row['sampled_calls']:>12.2f} "
            f"{iterations:>10} {rounds:>6}"
        )
    return "\n".join(lines)


def _sample(text: str) -> int | None:
    return None if text == "all" else int(text)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
