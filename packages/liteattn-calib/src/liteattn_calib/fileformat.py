"""The threshold file: TOML, one table per module path, validated with pydantic on load.

Example (``num_steps = 3``)::

    format_version = 1
    liteattn_version = "0.1.0"
    num_steps = 3
    disabled_steps = 1

    [model]
    class_name = "WanTransformer3DModel"

    [calibration]                      # absent in files not written by a calibration
    metric = "rel_l1"
    target_error = 0.01
    ...
    sample_query_tiles = 16            # absent when every query tile was measured

    [modules."blocks.0.attn1.lite"]
    heads = 2
    head_dim = 64
    threshold = ["disabled", -6.25, [-5.0, -9.5]]   # per step: "disabled", one number, or one per head
    sparsity = [0.0, 0.0, 0.31]                     # informational, ignored on load
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .settings import DISABLED, CalibConfig, StepEntry, normalize_entry

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["FORMAT_VERSION", "CalibrationFileError", "ModuleTable", "ThresholdFile", "read_file", "write_file"]

FORMAT_VERSION = 1


class CalibrationFileError(ValueError):
    """A threshold file that cannot be read, or that does not match the model it is applied to."""


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    class_name: str | None = None


class CalibrationInfo(BaseModel):
    """The settings of the calibration that wrote the file (informational on load)."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal["rel_l1", "cosine", "rmse"]
    target_error: float = Field(gt=0)
    rel_tolerance: float
    max_iters: int
    resolution: float = 0.0
    bounds: tuple[float, float]
    sample_query_tiles: int | None = None  # absent: every query tile


class ModuleTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    threshold: list[Literal["disabled"] | float | list[float]]
    sparsity: list[float] | None = None


class ThresholdFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: Literal[1]
    liteattn_version: str
    num_steps: int = Field(ge=1)
    disabled_steps: int = Field(0, ge=0)
    model: ModelInfo = ModelInfo()
    calibration: CalibrationInfo | None = None
    modules: dict[str, ModuleTable]

    def entries(self, module: str) -> list[StepEntry]:
        """The module's steps as :data:`StepEntry` values (checked by :func:`read_file`)."""
        return [normalize_entry(x, f"module {module!r}, field 'threshold[{i}]'")
                for i, x in enumerate(self.modules[module].threshold)]


def calibration_info(config: CalibConfig) -> CalibrationInfo:
    return CalibrationInfo(metric=config.metric, target_error=config.target_error,
                           rel_tolerance=config.rel_tolerance, max_iters=config.max_iters,
                           resolution=config.resolution, bounds=(config.lower, config.upper),
                           sample_query_tiles=config.sample_query_tiles)


def read_file(path: str | Path) -> ThresholdFile:
    """Parse and validate a threshold file; errors name the module and the field at fault."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise CalibrationFileError(f"{path}: not valid TOML: {exc}") from exc
    try:
        parsed = ThresholdFile.model_validate(raw)
    except ValidationError as exc:
        raise CalibrationFileError(f"{path}: {_describe(exc)}") from exc
    for name, table in parsed.modules.items():
        _check_table(path, parsed.num_steps, name, table)
        try:
            parsed.entries(name)
        except ValueError as exc:
            raise CalibrationFileError(f"{path}: {exc}") from None
    return parsed


def write_file(path: str | Path, data: ThresholdFile) -> None:
    """Write ``data`` as TOML (header first, then one table per module, in model order)."""
    raw: dict[str, Any] = data.model_dump(exclude_none=True)
    raw["modules"] = {name: {k: v for k, v in table.items() if v is not None}
                      for name, table in raw["modules"].items()}
    Path(path).write_text(tomli_w.dumps(raw, multiline_strings=False), encoding="utf-8")


def _check_table(path: Path, num_steps: int, name: str, table: ModuleTable) -> None:
    where = f"{path}: module {name!r}"
    if len(table.threshold) != num_steps:
        raise CalibrationFileError(f"{where}, field 'threshold': {len(table.threshold)} steps, but the header says "
                                   f"num_steps = {num_steps}")
    if table.sparsity is not None and len(table.sparsity) != num_steps:
        raise CalibrationFileError(f"{where}, field 'sparsity': {len(table.sparsity)} steps, but the header says "
                                   f"num_steps = {num_steps}")
    for i, value in enumerate(table.threshold):
        if isinstance(value, list) and len(value) != table.heads:
            raise CalibrationFileError(f"{where}, field 'threshold[{i}]': {len(value)} per-head values, but the "
                                       f"module has heads = {table.heads}")


def _describe(exc: ValidationError) -> str:
    """One line per problem, naming the module and field: "module 'a.b', field 'threshold[2]': ..."."""
    messages: dict[str, list[str]] = {}
    for error in exc.errors():
        loc = list(error["loc"])
        if len(loc) >= 2 and loc[0] == "modules":
            # pydantic reports one attempt per union member ("...float", "...list[float]"): drop those tags.
            field = _field_name([x for x in loc[2:] if not _is_union_tag(x)])
            where = f"module {loc[1]!r}, field {field!r}"
        else:
            where = f"header field {_field_name(loc)!r}"
        messages.setdefault(where, []).append(error["msg"])
    lines = []
    for where, msgs in messages.items():
        if len(msgs) > 1 and "threshold" in where:  # every member of the step union failed
            msgs = [f"expected a number <= 0, a list of numbers (one per head) or {DISABLED!r}"]
        lines.append(f"{where}: {'; '.join(dict.fromkeys(msgs))}")
    return "; ".join(lines)


def _is_union_tag(part) -> bool:
    return isinstance(part, str) and (part in {"float", DISABLED} or part.startswith(("list[", "literal[")))


def _field_name(loc) -> str:
    name = ""
    for part in loc:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    return name or "<file>"
