"""``LiteAttentionRegistry``: every LiteAttention of a model under one per-module, per-step threshold plan."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from liteattn import LiteAttention
from liteattn import __version__ as liteattn_version
from liteattn.functional import run_attention
from liteattn.tiles import default_tile_shape

from .calibrate import calibrate_call
from .capture import CAPTURE_KINDS, Capture, module_filter
from .fileformat import (
    CalibrationFileError,
    ModelInfo,
    ModuleTable,
    ThresholdFile,
    calibration_info,
    read_file,
    write_file,
)
from .layer import Layer
from .settings import CALIBRATE, DISABLED, CalibConfig, StepEntry, normalize_entry
from .steps import StepClock
from .summary import format_summary, layer_means

__all__ = ["LiteAttentionRegistry"]

Mode = Literal["const", "calib", "load", "disable"]
_MODES = ("const", "calib", "load", "disable")


@dataclass(frozen=True)
class _Rule:
    """An override: ``value`` at the steps and modules it selects (later rules win)."""

    value: StepEntry | str
    modules: Any
    steps: frozenset[int] | None

    def matches(self, name: str, step: int) -> bool:
        return (self.steps is None or step in self.steps) and module_filter(self.modules)(name)


class LiteAttentionRegistry(AbstractContextManager):
    """Controls the :class:`~liteattn.LiteAttention` modules of a model, step by step.

    Modes: ``"const"`` (one threshold everywhere), ``"calib"`` (bisect every module, step and head to meet
    ``calib_config.target_error``; :meth:`save` writes the file), ``"load"`` (apply a file) and
    ``"disable"`` (dense through the same kernels, the skip states untouched). :meth:`override` mixes
    configurations per module and per step. Advance the step with :meth:`step`, ``with registry.timestep(i):``
    or ``callback_on_step_end=registry.callback_on_step_end``; every call between two advances (the two
    passes of classifier-free guidance) belongs to the same step.

    Example::

        >>> registry = LiteAttentionRegistry.from_model(model, mode="calib", filename="wan.toml")
        >>> video = pipe(prompt, callback_on_step_end=registry.callback_on_step_end)
        >>> registry.save()
        >>> registry = LiteAttentionRegistry.from_model(model, mode="load", filename="wan.toml")
    """

    def __init__(self, layers: dict[str, LiteAttention], mode: Mode = "const", *, threshold=None,
                 filename: str | Path | None = None, calib_config: CalibConfig | dict | None = None,
                 disabled_steps: int = 0, on_extra_steps: Literal["error", "clamp"] = "error",
                 model_class: str | None = None):
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}; got {mode!r}")
        if not isinstance(disabled_steps, int) or disabled_steps < 0:
            raise ValueError(f"disabled_steps must be an int >= 0; got {disabled_steps!r}")
        if on_extra_steps not in ("error", "clamp"):
            raise ValueError(f"on_extra_steps must be 'error' or 'clamp'; got {on_extra_steps!r}")
        self.mode = mode
        self.filename = Path(filename) if filename is not None else None
        self.disabled_steps = disabled_steps
        self.on_extra_steps = on_extra_steps
        self.model_class = model_class
        if not isinstance(calib_config, CalibConfig):
            calib_config = CalibConfig(**(calib_config or {}))
        self.calib_config = calib_config
        self.threshold = self._initial_threshold(mode, threshold)
        self.file = self._initial_file(mode, layers)
        # parsed once: the per-call lookup must stay cheap next to an attention call
        self._file_entries = {name: self.file.entries(name) for name in layers} if self.file else {}
        self._rules: list[_Rule] = []
        self._warned_clamp = False
        self._capture: Capture | None = None
        self.clock = StepClock()
        self.clock.on_finish = self._progress_postfix
        self._layers = {name: Layer(name, module) for name, module in layers.items()}
        for layer in self._layers.values():
            self._attach(layer)
        if mode == "calib" and self.calib_config.progress:
            self.clock.start_progress(self.calib_config.num_steps, "liteattn calibration")

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, mode: Mode = "const", filename: str | Path | None = None,
                   threshold=None, calib_config: CalibConfig | dict | None = None, disabled_steps: int = 0,
                   modules=None, *, on_extra_steps: Literal["error", "clamp"] = "error") -> LiteAttentionRegistry:
        """Discover every LiteAttention under ``model.named_modules()`` (``modules``: a glob pattern, a
        callable on the dotted path, or a list of those, selects a subset) and control them."""
        keep = module_filter(modules)
        found = {name: m for name, m in model.named_modules() if isinstance(m, LiteAttention) and keep(name)}
        if not found:
            raise ValueError(f"no LiteAttention module found in {type(model).__name__}"
                             + (f" matching {modules!r}" if modules is not None else ""))
        return cls(found, mode, threshold=threshold, filename=filename, calib_config=calib_config,
                   disabled_steps=disabled_steps, on_extra_steps=on_extra_steps, model_class=type(model).__name__)

    @staticmethod
    def _initial_threshold(mode: str, threshold) -> StepEntry | None:
        if threshold is None:
            if mode == "const":
                raise ValueError("mode='const' needs threshold= (log2 units, <= 0; a float or one per head)")
            return None
        return normalize_entry(threshold, "threshold")

    def _initial_file(self, mode: str, layers: dict[str, LiteAttention]) -> ThresholdFile | None:
        if mode != "load":
            return None
        if self.filename is None:
            raise ValueError("mode='load' needs filename=")
        data = read_file(self.filename)
        missing = [name for name in layers if name not in data.modules]
        if missing:
            raise CalibrationFileError(f"{self.filename}: module {missing[0]!r} of the model has no table in the "
                                       f"file ({len(missing)} missing; the file has {sorted(data.modules)[:4]}...)")
        extra = [name for name in data.modules if name not in layers]
        if extra:
            raise CalibrationFileError(f"{self.filename}: module {extra[0]!r} in the file is not a LiteAttention "
                                       f"of the model ({len(extra)} unknown)")
        return data

    def _attach(self, layer: Layer) -> None:
        module = layer.module
        if "forward" in vars(module):
            raise RuntimeError(f"module {layer.name!r} is already controlled (by another registry?); call "
                               f"remove() on that registry first")

        def forward(query, key, value, scale=None, *, must_do_list=None, must_skip_list=None,
                    return_softmax_lse=False):
            out, lse = self._call(layer, query, key, value, scale, must_do_list, must_skip_list)
            return (out, lse) if return_softmax_lse else out

        module.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class method

    def remove(self) -> None:
        """Give the modules back their own forward (and stop any progress bar)."""
        for layer in self._layers.values():
            vars(layer.module).pop("forward", None)
        self.clock.close_progress()

    def __exit__(self, *exc) -> None:
        self.remove()

    # -- public state ------------------------------------------------------------------------------------
    @property
    def modules(self) -> dict[str, LiteAttention]:
        return {name: layer.module for name, layer in self._layers.items()}

    @property
    def current_step(self) -> int:
        return self.clock.current

    def step(self) -> int:
        """End the current denoising step; the next calls belong to the next step. Returns the new step."""
        return self.clock.step()

    def timestep(self, step: int):
        """``with registry.timestep(i):`` runs the block as step ``i``."""
        return self.clock.timestep(step)

    def callback_on_step_end(self, pipe, step_index: int, timestep, callback_kwargs: dict) -> dict:
        """Pass as diffusers' ``callback_on_step_end`` to advance once per denoising step."""
        return self.clock.callback_on_step_end(pipe, step_index, timestep, callback_kwargs)

    def reset(self) -> None:
        """Start a new video: step 0, and every skip state computes every tile again."""
        self.clock.reset()
        for layer in self._layers.values():
            layer.reset()

    def override(self, threshold, *, modules=None, steps: Iterable[int] | int | None = None) -> None:
        """Use ``threshold`` (a number, one per head, ``"disabled"`` or ``"calibrate"``) for the selected
        modules (glob, callable or list; None = all) at the selected steps (None = all). Later calls win."""
        value = CALIBRATE if threshold == CALIBRATE else normalize_entry(threshold, "override threshold")
        step_set = None if steps is None else frozenset([steps] if isinstance(steps, int) else steps)
        self._rules.append(_Rule(value, modules, step_set))

    # -- the controlled call -----------------------------------------------------------------------------
    def _call(self, layer: Layer, query, key, value, scale, must_do_list, must_skip_list):
        step = self.clock.current
        call = layer.next_call(step)
        self._check_geometry(layer, query)
        entry = self._entry(layer, step)
        state = layer.state(call)
        module = layer.module
        kwargs = dict(scale=scale, must_do_list=must_do_list, must_skip_list=must_skip_list,
                      use_int8=module.use_int8, backend=module.backend)
        capturing = self._capture is not None and self._capture.wants(layer.name, step)
        pending = _pending_bits(state, query, key) if capturing else None  # the capture records what was read
        errors = None
        if entry == DISABLED:
            thresholds = None
            out, lse, sparsity = run_attention(query, key, value, None, threshold=0.0, **kwargs)
        elif entry == CALIBRATE and step not in layer.chosen:
            # The step's first call calibrates and is committed at the chosen thresholds (with tile gaps, by
            # the calibration's own full call); later calls of the step reuse the choice.
            result = calibrate_call(query, key, value, state, self.calib_config, commit=True,
                                    start=layer.chosen.get(step - 1), **kwargs)
            layer.chosen[step], layer.errors[step] = result.thresholds, result.errors
            thresholds, errors = result.thresholds, result.errors
            out, lse, sparsity = result.out, result.lse, result.sparsity
        else:
            if entry == CALIBRATE:
                thresholds, errors = layer.chosen[step], layer.errors[step]
            else:
                thresholds = torch.as_tensor(entry, dtype=torch.float32)
                if thresholds.numel() not in (1, query.shape[2]):
                    raise ValueError(f"module {layer.name!r}, step {step}: {thresholds.numel()} per-head thresholds "
                                     f"for a call with {query.shape[2]} heads")
            out, lse, sparsity = run_attention(query, key, value, state, threshold=thresholds, **kwargs)
        module.last_sparsity = sparsity
        if call == 0:
            layer.used[step] = DISABLED if thresholds is None else thresholds  # read on the host when saved
            layer.sparsity[step] = []
        layer.sparsity.setdefault(step, []).append(sparsity)
        if capturing:
            block_m, block_n = _tile_shape(state, query)
            self._capture.record(layer.name, step, call, query=query, key=key, scale=_scale(scale, query),
                                 compute_bits=pending if thresholds is not None else None, block_m=block_m,
                                 block_n=block_n, thresholds=thresholds, errors=errors, lse=lse)
        return out, lse

    def _entry(self, layer: Layer, step: int) -> StepEntry | str:
        for rule in reversed(self._rules):
            if rule.matches(layer.name, step):
                return rule.value
        if self.mode == "disable" or step < self.disabled_steps:
            return DISABLED
        if self.mode == "const":
            return self.threshold
        if self.mode == "calib":
            return CALIBRATE
        entries = self._file_entries[layer.name]
        if step >= len(entries):
            if self.on_extra_steps == "error":
                raise CalibrationFileError(f"{self.filename}: step {step} is past the file's num_steps = "
                                           f"{len(entries)} (module {layer.name!r}); pass on_extra_steps='clamp' "
                                           f"to reuse the last step's thresholds")
            if not self._warned_clamp:
                warnings.warn(f"liteattn_calib: step {step} is past {self.filename}'s num_steps = {len(entries)}; "
                              f"using the last step's thresholds", stacklevel=4)
                self._warned_clamp = True
            step = len(entries) - 1
        return entries[step]

    def _check_geometry(self, layer: Layer, query: torch.Tensor) -> None:
        heads, head_dim = query.shape[2], query.shape[3]
        if layer.heads is None:
            layer.heads, layer.head_dim = heads, head_dim
            if self.file is not None:
                table = self.file.modules[layer.name]
                for field, expected, got in (("heads", table.heads, heads), ("head_dim", table.head_dim, head_dim)):
                    if expected != got:
                        raise CalibrationFileError(f"{self.filename}: module {layer.name!r}, field {field!r}: the "
                                                   f"file has {expected}, the model's call has {got}")
        elif (heads, head_dim) != (layer.heads, layer.head_dim):
            raise ValueError(f"module {layer.name!r}: called with {heads} heads x {head_dim} dims, earlier with "
                             f"{layer.heads} x {layer.head_dim}")

    # -- results -----------------------------------------------------------------------------------------
    def to_file(self) -> ThresholdFile:
        """What the run so far used, per module and step, as a threshold file."""
        steps = max((max(layer.used) + 1 for layer in self._layers.values() if layer.used), default=0)
        if steps == 0:
            raise RuntimeError("nothing to save: no controlled module has been called yet")
        tables = {}
        for name, layer in self._layers.items():
            missing = [s for s in range(steps) if s not in layer.used]
            if missing:
                raise RuntimeError(f"module {name!r} was not called at step {missing[0]} (of {steps}); every module "
                                   f"must run at every step to be saved")
            threshold = [_to_toml(_as_entry(layer.used[s])) for s in range(steps)]
            sparsity = [_mean_float(layer.sparsity[s]) for s in range(steps)]
            tables[name] = ModuleTable(heads=layer.heads, head_dim=layer.head_dim, threshold=threshold,
                                       sparsity=sparsity)
        calibrated = any(layer.chosen for layer in self._layers.values())
        return ThresholdFile(format_version=1, liteattn_version=liteattn_version, num_steps=steps,
                             disabled_steps=self.disabled_steps, model=ModelInfo(class_name=self.model_class),
                             calibration=calibration_info(self.calib_config) if calibrated else None,
                             modules=tables)

    def save(self, filename: str | Path | None = None, *, summary: bool = True) -> Path:
        """Write the thresholds the run used (the calibrated ones in ``calib`` mode) to a TOML file, and print
        the per-layer summary."""
        path = Path(filename) if filename is not None else self.filename
        if path is None:
            raise ValueError("save() needs a filename (or pass filename= to from_model)")
        data = self.to_file()
        write_file(path, data)
        self.clock.close_progress()
        if summary:
            print(format_summary(data, title=f"liteattn thresholds written to {path}"), file=sys.stderr)
        return path

    def summary(self) -> str:
        """Per-layer mean threshold (over heads and enabled steps), disabled steps and mean sparsity."""
        return format_summary(self.to_file())

    # -- capture -----------------------------------------------------------------------------------------
    def enable_capture(self, path: str | Path, modules=None, steps: Iterable[int] | None = None,
                       heads: Sequence[int] | None = None, what: Iterable[str] = CAPTURE_KINDS) -> None:
        """Record diagnostics of the selected modules, steps and heads; :meth:`disable_capture` writes them
        to ``path`` (``.safetensors`` or ``.npz``)."""
        self._capture = Capture(path, modules=modules, steps=steps, heads=heads, what=what)

    def disable_capture(self) -> Path | None:
        """Stop capturing and write the file; returns its path."""
        capture, self._capture = self._capture, None
        if capture is None:
            return None
        return capture.save({"model_class": self.model_class, "modules": list(self._layers),
                             "liteattn_version": liteattn_version})

    def _progress_postfix(self, step: int) -> dict:
        chosen = [layer.chosen[step].mean().item() for layer in self._layers.values() if step in layer.chosen]
        sparsity = [s for layer in self._layers.values() for s in layer.sparsity.get(step, [])]
        postfix = {}
        if chosen:
            postfix["threshold"] = f"{sum(chosen) / len(chosen):.2f}"
        if sparsity:
            postfix["sparsity"] = f"{_mean_float(sparsity):.3f}"
        return postfix

    def layer_means(self) -> dict[str, tuple[float, float]]:
        """{module: (mean threshold over heads and enabled steps, mean sparsity)} of the run so far."""
        return layer_means(self.to_file())


def _pending_bits(state, query, key) -> torch.Tensor | None:
    """The keep bits the next call on ``state`` reads, or None when it will start from scratch."""
    shape = state.shape_key
    if shape is None or (shape.batch, shape.q_len, shape.k_len, shape.heads) != (
            query.shape[0], query.shape[1], key.shape[1], query.shape[2]):
        return None
    return state.read_bits.clone()


def _mean_float(values) -> float:
    """Mean of per-call sparsities (0-d device tensors recorded without waiting, or floats), read on the host
    only here: when a file is saved or a step's progress is shown."""
    return sum(float(v) for v in values) / len(values)


def _tile_shape(state, query) -> tuple[int, int]:
    if state.block_m is not None and state.block_n is not None:
        return state.block_m, state.block_n
    return default_tile_shape(query.shape[-1])


def _scale(scale, query) -> float:
    return float(scale) if scale is not None else 1.0 / math.sqrt(query.shape[-1])


def _as_entry(thresholds: torch.Tensor | str) -> StepEntry:
    if isinstance(thresholds, str):
        return thresholds
    values = [float(x) for x in thresholds.flatten().tolist()]
    if len(set(values)) == 1:
        return values[0]
    return tuple(values)


def _to_toml(entry: StepEntry):
    return list(entry) if isinstance(entry, tuple) else entry
