"""The sweep: shapes x (dense, then mask kinds x sparsities) x engines, in one process on the same inputs."""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from dataclasses import dataclass, field

import torch

from ..testing import rel_error
from ..tiles import default_tile_shape, num_tiles
from .engines import Engine, EngineSkipped, Problem, make_engine
from .masks import keep_mask, mask_sparsity
from .timing import median_time_ms

__all__ = ["BenchConfig", "Shape", "parse_shape", "run_sweep"]

DEFAULT_SHAPES = ("1x12x32760x128", "1x24x32768x128", "1x40x75600x128", "1x24x32768x64")
DEFAULT_SPARSITIES = (0.0, 0.5, 0.75, 0.9)
# baselines first: a kernel that corrupts the CUDA context cannot take their numbers down with it
DEFAULT_ENGINES = ("fa3", "cudnn", "flash", "flex", "triton", "cuda")
# errors after which the CUDA context is unusable: the sweep stops and keeps what it has
_FATAL_CUDA_ERRORS = ("illegal memory access", "unspecified launch failure", "device-side assert",
                      "illegal instruction", "misaligned address")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
CHECK_TILES = 3  # query tiles (first, middle, last) checked against an fp32 masked attention


@dataclass(frozen=True)
class Shape:
    batch: int
    heads: int
    seq: int
    head_dim: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.heads}x{self.seq}x{self.head_dim}"

    @property
    def flops(self) -> float:
        """Dense forward FLOPs, 4 * B * H * Sq * Sk * D (QK^T and PV)."""
        return 4.0 * self.batch * self.heads * self.seq * self.seq * self.head_dim


def parse_shape(text: str) -> Shape:
    """``BxHxSxD`` (or ``HxSxD`` with B = 1; commas also separate)."""
    parts = [int(p) for p in text.replace(",", "x").replace("(", "").replace(")", "").split("x") if p.strip()]
    if len(parts) == 3:
        parts = [1, *parts]
    if len(parts) != 4 or min(parts) < 1:
        raise ValueError(f"shape must be BxHxSxD or HxSxD with positive sizes; got {text!r}")
    return Shape(*parts)


@dataclass
class BenchConfig:
    engines: list[str] = field(default_factory=lambda: list(DEFAULT_ENGINES))
    shapes: list[Shape] = field(default_factory=lambda: [parse_shape(s) for s in DEFAULT_SHAPES])
    sparsities: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITIES))
    masks: list[str] = field(default_factory=lambda: ["random", "video"])
    dtype: str = "bf16"
    device: str | None = None  # None: cuda when available
    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    threshold: float = -10.0  # for NAME+test engines
    seed: int = 0
    check: bool = True  # compare every output with an fp32 masked attention on a few query tiles
    progress: bool = True

    def resolved_device(self) -> torch.device:
        if self.device:
            return torch.device(self.device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, unit="run", dynamic_ncols=True, file=sys.stderr)
        except ImportError:
            pass

    class _Plain:
        def __init__(self):
            self.count = 0

        def update(self, n=1):
            self.count += n
            if enabled:
                _log(f"[{self.count}/{total}]")

        def set_description(self, text):
            pass

        def close(self):
            pass

    return _Plain()


def _check_rows(q_len: int, block_m: int) -> list[int]:
    tiles = num_tiles(q_len, block_m)
    return sorted({0, tiles // 2, tiles - 1})[:CHECK_TILES]


def _golden(problem: Problem, tiles: list[int]) -> torch.Tensor:
    """fp32 attention of the query rows of ``tiles`` over the keys the keep mask keeps: (B, rows, H, Dv)."""
    q, k, v = problem.q, problem.k, problem.v
    q_len, k_len = q.shape[1], k.shape[1]
    rows = torch.cat([torch.arange(t * problem.block_m, min((t + 1) * problem.block_m, q_len)) for t in tiles])
    rows = rows.to(q.device)
    groups = q.shape[2] // k.shape[2]
    outs = []
    for h in range(q.shape[2]):
        qh = q[:, rows, h].float()  # (B, R, D)
        kh, vh = k[:, :, h // groups].float(), v[:, :, h // groups].float()
        scores = qh @ kh.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, R, Sk)
        if problem.keep is not None:
            tile_keep = problem.keep[:, h][:, torch.as_tensor(tiles, device=problem.keep.device)]  # (B, T, KT)
            token_keep = tile_keep.repeat_interleave(problem.block_n, -1)[..., :k_len]
            counts = [min((t + 1) * problem.block_m, q_len) - t * problem.block_m for t in tiles]
            token_keep = torch.cat([token_keep[:, i:i + 1].expand(-1, c, -1) for i, c in enumerate(counts)], 1)
            scores = scores.masked_fill(~token_keep.to(scores.device), -math.inf)
        outs.append(torch.softmax(scores, -1) @ vh)
    return torch.stack(outs, dim=2), rows


def run_sweep(config: BenchConfig) -> tuple[list[dict], dict[str, str]]:
    """Run the sweep; returns (rows, skipped engines with their reasons).

    A row: ``shape, engine, mask, target_sparsity, sparsity, status ("ok" | "failed" | "skipped"),
    time_ms, tflops, reason, rel_err`` (ratios are added by :func:`liteattn.bench.report.add_ratios`).
    """
    device = config.resolved_device()
    dtype = DTYPES[config.dtype]
    engines: list[Engine] = []
    skipped: dict[str, str] = {}
    for name in config.engines:
        try:
            engine = make_engine(name)
            reason = engine.unavailable_reason(device)
        except Exception as error:  # a broken engine must not stop the sweep
            reason = f"{type(error).__name__}: {error}"
        if reason:
            skipped[name] = reason
            _log(f"liteattn bench: skipping {name}: {reason}")
        else:
            engines.append(engine)

    points = [(0.0, "dense")] + [(s, kind) for kind in config.masks for s in config.sparsities if s > 0]
    total = sum(1 for _ in config.shapes for s, _ in points for e in engines if s == 0 or e.sparse)
    bar = _progress(total, config.progress)
    rows: list[dict] = []
    try:
        for shape in config.shapes:
            _run_shape(shape, points, engines, config, device, dtype, bar, rows)
    except _SweepAborted as error:
        skipped["(sweep)"] = f"stopped early: {error}"
        _log(f"liteattn bench: sweep stopped early, {len(rows)} results kept: {error}")
    finally:
        bar.close()
    return rows, skipped


class _SweepAborted(RuntimeError):
    """The CUDA context is unusable (an engine faulted); nothing after this can run in this process."""


def _run_shape(shape, points, engines, config, device, dtype, bar, rows):
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    q, k, v = (torch.randn(shape.batch, shape.seq, shape.heads, shape.head_dim, generator=generator)
               .to(device=device, dtype=dtype) for _ in range(3))
    block_m, block_n = default_tile_shape(shape.head_dim)
    for target, kind in points:
        keep = None
        if target > 0:
            keep = keep_mask(kind, shape.batch, shape.heads, shape.seq, shape.seq, shape.head_dim, target,
                             block_m=block_m, block_n=block_n, seed=config.seed, device=device)
        sparsity = 0.0 if keep is None else mask_sparsity(keep)
        problem = Problem(q, k, v, keep, block_m, block_n, config.threshold)
        golden = None
        if config.check:
            tiles = _check_rows(shape.seq, block_m)
            golden, check_rows = _golden(problem, tiles)
        for engine in engines:
            if target > 0 and not engine.sparse:
                continue
            bar.set_description(f"{shape} {kind} {target:.2f} {engine.name}")
            row = dict(shape=str(shape), batch=shape.batch, heads=shape.heads, seq=shape.seq,
                       head_dim=shape.head_dim, engine=engine.name, mask=kind, target_sparsity=target,
                       sparsity=round(sparsity, 6), status="ok", time_ms=None, tflops=None, rel_err=None,
                       reason=None)
            try:
                fn = engine.prepare(problem)
                out = fn()
                if golden is not None:
                    row["rel_err"] = rel_error(out[:, check_rows].float(), golden)
                del out
                row["time_ms"] = median_time_ms(fn, device, config.warmup_ms, config.rep_ms)
                row["tflops"] = shape.flops / (row["time_ms"] * 1e-3) / 1e12
            except EngineSkipped as error:
                row.update(status="skipped", reason=str(error))
            except Exception as error:  # report, free memory, go on with the next engine
                first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
                row.update(status="failed", reason=f"{type(error).__name__}: {first_line}")
            finally:
                fn = None
                gc.collect()
                if device.type == "cuda":
                    with contextlib.suppress(Exception):
                        torch.cuda.empty_cache()
            if row["status"] != "ok":
                _log(f"liteattn bench: {engine.name} at {shape} {kind} {target}: {row['status']}: {row['reason']}")
            rows.append(row)
            bar.update(1)
            if row["status"] == "failed" and any(text in row["reason"].lower() for text in _FATAL_CUDA_ERRORS):
                raise _SweepAborted(f"{engine.name} at {shape} {kind} {target}: {row['reason']}")
