"""Text summaries of a threshold file: one line per layer."""

from __future__ import annotations

import math

from .fileformat import ThresholdFile
from .settings import DISABLED

__all__ = ["format_summary", "layer_means", "threshold_matrix"]


def _mean(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def threshold_matrix(data: ThresholdFile) -> list[list[float]]:
    """(modules x steps) mean threshold over heads; nan where the step is disabled."""
    rows = []
    for table in data.modules.values():
        row = []
        for value in table.threshold:
            if value == DISABLED:
                row.append(math.nan)
            elif isinstance(value, list):
                row.append(_mean(value))
            else:
                row.append(float(value))
        rows.append(row)
    return rows


def layer_means(data: ThresholdFile) -> dict[str, tuple[float, float]]:
    """{module: (mean threshold over heads and enabled steps, mean sparsity over steps or nan)}."""
    means = {}
    for (name, table), row in zip(data.modules.items(), threshold_matrix(data)):
        sparsity = _mean(table.sparsity) if table.sparsity else math.nan
        means[name] = (_mean(row), sparsity)
    return means


def format_summary(data: ThresholdFile, title: str | None = None) -> str:
    means = layer_means(data)
    width = max(len("module"), *(len(name) for name in means))
    lines = [title] if title else []
    header = f"{'module':<{width}}  {'heads':>5}  {'mean threshold':>14}  {'disabled':>8}  {'mean sparsity':>13}"
    lines += [f"{data.num_steps} steps, {len(means)} modules", header, "-" * len(header)]
    for name, (threshold, sparsity) in means.items():
        table = data.modules[name]
        disabled = sum(1 for v in table.threshold if v == DISABLED)
        lines.append(f"{name:<{width}}  {table.heads:>5}  {threshold:>14.3f}  {disabled:>8}  {sparsity:>13.3f}")
    all_sparsity = _mean([s for _, s in means.values()])
    lines.append(f"{'all':<{width}}  {'':>5}  {_mean([t for t, _ in means.values()]):>14.3f}  {'':>8}  "
                 f"{all_sparsity:>13.3f}")
    return "\n".join(lines)
