"""``liteattn.bench``: liteattn backends side by side with FA3, cuDNN / flash SDPA and FlexAttention.

One process, the same inputs for every engine (B S H D, non-causal), the same keep mask for every engine
that skips tiles. Run it as ``liteattn bench``, ``python -m liteattn.bench`` or ``python bench/harness.py``;
``docs/benchmarks.rst`` describes the flags and the output.

    >>> from liteattn.bench import BenchConfig, run, parse_shape
    >>> result = run(BenchConfig(engines=["reference"], shapes=[parse_shape("1x2x256x32")],
    ...                          sparsities=[0.0, 0.5], device="cpu", warmup_ms=1, rep_ms=1, progress=False))
    >>> sorted({r["engine"] for r in result["results"]})
    ['reference']
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .engines import BASELINES, Engine, EngineSkipped, Problem, make_engine
from .masks import MASK_KINDS, flex_block_mask, keep_mask, video_keep_mask
from .report import add_ratios, environment, markdown, write_results
from .runner import (
    DEFAULT_ENGINES,
    DEFAULT_SHAPES,
    DEFAULT_SPARSITIES,
    DTYPES,
    BenchConfig,
    Shape,
    parse_shape,
    run_sweep,
)
from .timing import median_time_ms, timer_name

__all__ = [
    "BASELINES",
    "BenchConfig",
    "Engine",
    "EngineSkipped",
    "MASK_KINDS",
    "Problem",
    "Shape",
    "add_ratios",
    "build_parser",
    "environment",
    "flex_block_mask",
    "keep_mask",
    "main",
    "make_engine",
    "markdown",
    "median_time_ms",
    "parse_shape",
    "run",
    "video_keep_mask",
    "write_results",
]


def run(config: BenchConfig, out: str | Path | None = None, argv: list[str] | None = None) -> dict:
    """Run a sweep; write JSON / markdown / plot into ``out`` when given. Returns the JSON payload
    (``environment``, ``config``, ``skipped_engines``, ``results``) plus ``paths`` when written."""
    rows, skipped = run_sweep(config)
    add_ratios(rows)
    device = config.resolved_device()
    env = environment(device, timer_name(device))
    config_dict = dataclasses.asdict(config)
    config_dict["shapes"] = [str(s) for s in config.shapes]
    config_dict["device"] = str(device)
    if argv is not None:
        config_dict["command"] = "liteattn bench " + " ".join(argv)
    payload = {"environment": env, "config": config_dict, "skipped_engines": skipped, "results": rows}
    if out is not None:
        payload["paths"] = {k: str(v) for k, v in write_results(Path(out), rows, env, skipped, config_dict).items()}
    return payload


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser(prog: str = "liteattn bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Time liteattn backends against FA3, cuDNN / flash SDPA "
                                     "and FlexAttention on the same inputs and keep masks.")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                        help="comma-separated: liteattn backends (reference, triton, cuda; NAME+test also runs the "
                             f"skip test and writes the state) and baselines {', '.join(BASELINES)} "
                             "(default: %(default)s)")
    parser.add_argument("--shapes", default=" ".join(DEFAULT_SHAPES), type=str,
                        help="BxHxSxD (or HxSxD), separated by spaces or semicolons (default: %(default)s)")
    parser.add_argument("--sparsities", default=",".join(str(s) for s in DEFAULT_SPARSITIES),
                        help="tile sparsities in [0, 1) (default: %(default)s)")
    parser.add_argument("--masks", default="random,video",
                        help=f"mask kinds, comma-separated from {MASK_KINDS} (default: %(default)s)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--warmup", type=float, default=25.0, help="warm-up budget per run in ms")
    parser.add_argument("--rep", type=float, default=100.0, help="timing budget per run in ms")
    parser.add_argument("--threshold", type=float, default=-10.0, help="skip threshold of NAME+test engines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip the fp32 accuracy check of each output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the engines and whether they can run here, then exit")
    parser.add_argument("--out", default=None, help="folder for results.json, results.md, time_vs_sparsity.png "
                        "(e.g. bench/results/h100-2026-11-23); without it the table is printed only")
    return parser


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    shapes = [parse_shape(s) for s in args.shapes.replace(";", " ").split()]
    sparsities = [float(s) for s in _csv(args.sparsities)]
    bad = [s for s in sparsities if not 0.0 <= s < 1.0]
    if bad:
        raise ValueError(f"sparsities must be in [0, 1); got {bad}")
    masks = _csv(args.masks)
    for kind in masks:
        if kind not in MASK_KINDS:
            raise ValueError(f"mask kinds must be from {MASK_KINDS}; got {kind!r}")
    return BenchConfig(engines=_csv(args.engines), shapes=shapes, sparsities=sparsities, masks=masks, dtype=args.dtype,
                       device=args.device, warmup_ms=args.warmup, rep_ms=args.rep, threshold=args.threshold,
                       seed=args.seed, check=not args.no_check, progress=not args.no_progress)


def _list_engines(args) -> int:
    from importlib.metadata import entry_points

    from ..dispatch import ENTRY_POINT_GROUP

    device = BenchConfig(device=args.device).resolved_device()
    backends = sorted({"reference", *(e.name for e in entry_points(group=ENTRY_POINT_GROUP))})
    names = list(dict.fromkeys([*backends, *DEFAULT_ENGINES, *BASELINES]))
    print(f"engines on {device} (liteattn backends also run as NAME+test):")
    for name in names:
        try:
            reason = make_engine(name).unavailable_reason(device)
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        print(f"  {name:<10} {'ok' if reason is None else reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``liteattn bench``: parse flags, run the sweep, print the markdown table, write results to ``--out``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        return _list_engines(args)
    try:
        config = config_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    payload = run(config, args.out, argv=list(sys.argv[1:] if argv is None else argv))
    print(markdown(payload["results"], payload["environment"], payload["skipped_engines"], payload["config"]))
    for kind, path in payload.get("paths", {}).items():
        print(f"wrote {kind}: {path}", file=sys.stderr)
    return 0 if any(r["status"] == "ok" for r in payload["results"]) else 1
