"""The bisection rounds as one replay of a captured CUDA graph.

A round of the bisection (compare the gaps, pack the bits, the sampled attention call, the error, the bracket
update) is some thirty kernel launches. With ``resolution > 0`` the rounds are a fixed sequence of operations
(:func:`liteattn_calib.bisect.bisect_thresholds` reads nothing back), which a CUDA graph replays in one launch:
on an H100 that took about 0.1 ms of launch overhead off each round; what remains is GPU time.

A graph reads and writes fixed addresses. Capturing one per calibrated call would cost a host run of the
rounds every time, so a graph is kept for every (buffer layout, constants, settings) and each later call
copies its own tensors into the ones the graph was captured on:

* the lookahead's and the error meter's buffers (:meth:`liteattn.lookahead.Lookahead.buffers`: the sampled
  query rows, K, V, the gaps; what the meter prepared from A), shared by every graph of one layout. They cost
  the memory of K and V once per layout, and a device copy of them per call;
* the first round's thresholds (the endpoints, and the warm start's window), one tensor per graph.

The rounds' results are cloned right after the replay: graphs share one memory pool, so another graph's
replay may reuse the memory of this one's outputs.

Everything else falls back to running the rounds eagerly, with the same result: tensors not on a CUDA device,
``CalibConfig.cuda_graph=False`` or ``LITEATTN_CALIB_CUDA_GRAPH=0``, buffers a graph cannot stand in for
(overlapping or misaligned), and any capture that raises (warned once per cache; that key is not tried again).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from liteattn.lookahead import Lookahead

from .bisect import FixedRounds, RoundsRunner
from .metrics import ErrorMeter
from .settings import CalibConfig

__all__ = ["CapturedRounds", "LookaheadErrors", "RoundGraphs", "capture_cuda_graph", "graphs_enabled",
           "shared_round_graphs"]

ENV_SWITCH = "LITEATTN_CALIB_CUDA_GRAPH"
_OFF = {"0", "false", "no", "off"}
_ON = {"", "1", "true", "yes", "on"}

# (run, device, pool) -> (replay, outputs, pool): ``outputs`` are the tensors ``run`` returned while captured;
# each ``replay()`` recomputes them in place from the tensors ``run`` read. ``pool`` is the memory pool of a
# live graph to share (None: a new one), and the graph's own pool comes back.
Capture = Callable[[Callable[[], tuple[torch.Tensor, ...]], torch.device, object],
                   tuple[Callable[[], None], tuple[torch.Tensor, ...], object]]


def graphs_enabled(config: CalibConfig) -> bool:
    """Whether the settings and the environment allow captured rounds at all (the device is checked apart)."""
    value = os.environ.get(ENV_SWITCH, "1").strip().lower()
    if value not in _OFF | _ON:
        raise ValueError(f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r}: expected one of {sorted(_OFF | _ON - {''})}")
    return config.cuda_graph and value in _ON


class LookaheadErrors:
    """``errors(thresholds (C, H)) -> (C, H)``: the meter's error of the lookahead's B at the candidates. The
    evaluation of the bisection on the tile-gap path, with the buffers of both named for a graph."""

    def __init__(self, lookahead: Lookahead, meter: ErrorMeter):
        self.lookahead, self.meter = lookahead, meter

    def __call__(self, thresholds: torch.Tensor) -> torch.Tensor:
        return self.meter(self.lookahead(thresholds))

    def buffers(self) -> dict[str, torch.Tensor]:
        return {**{f"lookahead.{n}": t for n, t in self.lookahead.buffers().items()},
                **{f"meter.{n}": t for n, t in self.meter.buffers().items()}}

    def constants(self) -> tuple:
        return self.lookahead.constants(), self.meter.metric

    def on_buffers(self, buffers: dict[str, torch.Tensor]) -> LookaheadErrors:
        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {n.removeprefix(prefix): t for n, t in buffers.items() if n.startswith(prefix)}

        return LookaheadErrors(self.lookahead.on_buffers(part("lookahead.")), self.meter.on_buffers(part("meter.")))

    def refresh(self) -> None:
        self.lookahead.refresh()


def layout_of(buffers: dict[str, torch.Tensor]) -> tuple:
    """What a tensor standing in for each buffer must match. Raises ValueError for buffers that no copy can
    stand in for: overlapping ones (an expanded tensor: a copy into it is refused) and ones not 16-byte aligned
    (a backend may choose other kernels for them)."""
    layout = []
    for name, t in sorted(buffers.items()):
        if any(stride == 0 and size > 1 for stride, size in zip(t.stride(), t.shape)):
            raise ValueError(f"buffer {name} overlaps itself (an expanded tensor)")
        if t.data_ptr() % 16:
            raise ValueError(f"buffer {name} is not 16-byte aligned")
        layout.append((name, tuple(t.shape), t.stride(), t.dtype, t.device))
    return tuple(layout)


def _empty_like_layout(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)


@dataclass
class CapturedRounds:
    """One captured graph of the rounds: it reads ``errors`` (on the shared buffers) and ``inputs``, and
    writes ``outputs``."""

    errors: LookaheadErrors
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    replay: Callable[[], None]
    pool: object = None  # the graph's memory pool, which a later capture on the same device may share

    def run(self, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        for static, value in zip(self.inputs, state):
            static.copy_(value)
        self.replay()
        return tuple(out.clone() for out in self.outputs)


class RoundGraphs:
    """A cache of captured rounds and of the buffers they read; see the module's docstring.

    ``capture`` and ``device_types`` exist for tests: a capture that re-runs the rounds on the static tensors
    exercises every copy on the CPU. ``captures`` and ``replays`` count what happened.
    """

    def __init__(self, capture: Capture | None = None, device_types: frozenset[str] = frozenset({"cuda"})):
        self._capture = capture if capture is not None else capture_cuda_graph
        self._device_types = frozenset(device_types)
        self._buffers: dict[tuple, dict[str, torch.Tensor]] = {}
        self._graphs: dict[tuple, CapturedRounds] = {}
        self._failed: set[tuple] = set()
        self._warned = False
        self.captures = self.replays = 0

    def runner(self, errors: LookaheadErrors, config: CalibConfig, device: torch.device | str) -> RoundsRunner | None:
        """A :data:`~liteattn_calib.bisect.RoundsRunner` for a bisection evaluated by ``errors``, or None where
        its rounds run eagerly (CPU tensors, graphs switched off, or ``resolution=0``: those rounds read back
        whether every head is done)."""
        if torch.device(device).type not in self._device_types or not graphs_enabled(config):
            return None
        if config.resolution == 0:
            return None

        def run(rounds: FixedRounds, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return self._run(errors, config, rounds, state)

        return run

    def clear(self) -> None:
        """Drop every graph and buffer (their memory returns to PyTorch's allocator)."""
        self._buffers.clear()
        self._graphs.clear()
        self._failed.clear()

    def _run(self, fresh: LookaheadErrors, config: CalibConfig, rounds: FixedRounds, state) -> tuple:
        try:
            layout = layout_of(fresh.buffers())
        except ValueError as exc:
            self._warn(f"these inputs cannot be copied into a graph's buffers ({exc})")
            return rounds(fresh, *state)
        key = (layout, fresh.constants(), _settings_key(config), _state_layout(state))
        if key in self._failed:
            return rounds(fresh, *state)
        try:
            buffers = self._load(layout, fresh)
            graph = self._graphs.get(key)
            if graph is None:
                graph = self._graphs[key] = self._capture_rounds(fresh.on_buffers(buffers), rounds, state)
            else:
                graph.errors.refresh()
        except Exception as exc:  # noqa: BLE001 - any failure to capture falls back to the eager rounds
            self._failed.add(key)
            self._warn(f"capturing the bisection rounds in a CUDA graph failed ({exc!r})")
            return rounds(fresh, *state)
        self.replays += 1
        return graph.run(state)

    def _load(self, layout: tuple, fresh: LookaheadErrors) -> dict[str, torch.Tensor]:
        """The shared buffers of ``layout``, holding ``fresh``'s contents."""
        source = fresh.buffers()
        buffers = self._buffers.get(layout)
        if buffers is None:
            buffers = self._buffers[layout] = {name: _empty_like_layout(t) for name, t in source.items()}
        for name, t in source.items():
            buffers[name].copy_(t)
        return buffers

    def _capture_rounds(self, errors: LookaheadErrors, rounds: FixedRounds, state) -> CapturedRounds:
        inputs = tuple(t.clone() for t in state)
        device = inputs[0].device
        replay, outputs, pool = self._capture(lambda: tuple(rounds(errors, *inputs)), device, self._pool_on(device))
        self.captures += 1
        return CapturedRounds(errors, inputs, tuple(outputs), replay, pool)

    def _pool_on(self, device: torch.device):
        """The memory pool of a graph of this cache on ``device``, or None. Only a live graph's pool: PyTorch
        frees a pool with its last graph, and a capture into a freed pool's handle fails."""
        for graph in self._graphs.values():
            if graph.pool is not None and graph.inputs[0].device == device:
                return graph.pool
        return None

    def _warn(self, what: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"liteattn-calib: {what}; running the bisection rounds eagerly (same result, more host "
                          f"time). CalibConfig(cuda_graph=False) or {ENV_SWITCH}=0 skips the attempt.",
                          RuntimeWarning, stacklevel=4)


def capture_cuda_graph(run: Callable[[], tuple[torch.Tensor, ...]], device: torch.device, pool=None):
    """Capture ``run`` in a CUDA graph on ``device``, in ``pool`` (a live graph's) or a new pool; returns
    ``(graph.replay, outputs, graph.pool())``.

    ``run`` first runs once on a side stream, as PyTorch asks before a capture: that compiles the backend's
    kernels, grows its scratch buffers and builds the lookahead's calls outside the graph, so the capture
    itself only records launches. Sharing one pool keeps the temporaries of a graph per layout, scale and visit
    direction in one place: the graphs never run at the same time, and their outputs are cloned at once.
    """
    with torch.cuda.device(device):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = run()
    return graph.replay, outputs, graph.pool()


def _settings_key(config: CalibConfig) -> tuple:
    """The settings a graph of the rounds bakes in (the target, the window, the resolution, the candidates)."""
    return tuple(sorted(config.model_dump(exclude={"num_steps", "progress", "cuda_graph"}).items()))


def _state_layout(state) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in state)


_SHARED: RoundGraphs | None = None


def shared_round_graphs() -> RoundGraphs:
    """The process-wide cache that :func:`~liteattn_calib.calibrate_call` uses by default. ``.clear()`` it to
    free the graphs and their copies of K and V once a calibration is over."""
    global _SHARED
    if _SHARED is None:
        _SHARED = RoundGraphs()
    return _SHARED
