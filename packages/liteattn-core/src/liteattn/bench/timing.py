"""Timing one callable: the median of many runs, the way every engine in a sweep is timed."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

__all__ = ["median_time_ms", "timer_name"]


def timer_name(device: torch.device) -> str:
    """Which timer :func:`median_time_ms` uses on ``device``."""
    if device.type != "cuda":
        return "perf_counter"
    try:
        import triton.testing  # noqa: F401
    except Exception:
        return "cuda_events"
    return "triton.testing.do_bench"


def median_time_ms(fn: Callable[[], object], device: torch.device, warmup_ms: float = 25.0,
                   rep_ms: float = 100.0) -> float:
    """Median wall time of ``fn()`` in milliseconds.

    CUDA: ``triton.testing.do_bench(return_mode="median")`` (L2 flushed between runs), or CUDA events when
    Triton is not importable. CPU: ``time.perf_counter`` around each call. ``warmup_ms`` / ``rep_ms`` are
    time budgets, as in ``do_bench``; at least 3 timed runs are taken.
    """
    timer = timer_name(device)
    if timer == "triton.testing.do_bench":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    if timer == "cuda_events":
        return _cuda_events(fn, warmup_ms, rep_ms)
    return _perf_counter(fn, warmup_ms, rep_ms)


def _runs(estimate_ms: float, budget_ms: float) -> int:
    return max(3, min(10_000, int(budget_ms / max(estimate_ms, 1e-3))))


def _perf_counter(fn, warmup_ms, rep_ms):
    start = time.perf_counter()
    fn()
    estimate = (time.perf_counter() - start) * 1e3
    for _ in range(_runs(estimate, warmup_ms) - 3 if warmup_ms > estimate else 0):
        fn()
    times = []
    for _ in range(_runs(estimate, rep_ms)):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _cuda_events(fn, warmup_ms, rep_ms):
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        fn()
    end.record()
    torch.cuda.synchronize()
    estimate = start.elapsed_time(end) / 5
    for _ in range(_runs(estimate, warmup_ms)):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(_runs(estimate, rep_ms))]
    for begin, finish in events:
        begin.record()
        fn()
        finish.record()
    torch.cuda.synchronize()
    return statistics.median(begin.elapsed_time(finish) for begin, finish in events)
