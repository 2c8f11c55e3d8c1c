"""matplotlib figures of thresholds, sparsity and keep masks, written as PNG files (headless backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, and none exists on CI machines

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

__all__ = ["plot_keep_masks", "plot_sparsity", "plot_threshold_heatmap"]


def plot_threshold_heatmap(modules: list[str], matrix, path: Path, title: str = "threshold (log2)") -> Path:
    """Layer x step heatmap of the mean threshold over heads; disabled steps (nan) show as grey."""
    data = np.ma.masked_invalid(np.asarray(matrix, dtype=np.float64))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * data.shape[1] + 2), max(2.5, 0.3 * len(modules) + 1.5)))
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(data, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_xlabel("step")
    ax.set_ylabel("layer")
    ax.set_yticks(range(len(modules)), labels=modules if len(modules) <= 40 else None, fontsize=6)
    ax.set_title(f"{title}; grey = disabled")
    fig.colorbar(image, ax=ax)
    return _save(fig, path)


def plot_sparsity(series: dict[str, list[float]], path: Path) -> Path:
    """Sparsity of each layer over the steps (one line per layer)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in series.items():
        ax.plot(range(len(values)), values, label=name, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of tiles skipped")
    ax.set_ylim(0, 1)
    if len(series) <= 12:
        ax.legend(fontsize=6)
    ax.set_title("sparsity per layer")
    return _save(fig, path)


def plot_keep_masks(masks: dict[int, np.ndarray], heads: list[int], path: Path, title: str) -> Path:
    """One module: a grid of keep-mask images, steps down, heads across (query tiles x key tiles)."""
    steps = sorted(masks)
    fig, axes = plt.subplots(len(steps), len(heads), squeeze=False,
                             figsize=(1.6 * len(heads) + 1, 1.6 * len(steps) + 0.6))
    for row, step in enumerate(steps):
        for col, head in enumerate(heads):
            ax = axes[row][col]
            ax.imshow(masks[step][col], cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"head {head}", fontsize=7)
            if col == 0:
                ax.set_ylabel(f"step {step}", fontsize=7)
    fig.suptitle(title, fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
