"""Results of a sweep: ratios, the environment, JSON, a markdown table and a plot."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

__all__ = ["add_ratios", "environment", "markdown", "plot", "write_results"]

_PACKAGES = ("liteattn-core", "liteattn-triton", "liteattn-cuda", "fa3-fwd", "numpy")


def environment(device: torch.device, timer: str) -> dict:
    """GPU, library versions and date, stored with every result."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "triton": None,
        "timer": timer,
        "git_commit": None,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:
        pass
    for package in _PACKAGES:
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = None
    env["git_commit"] = git_commit()
    return env


def git_commit(start: Path | None = None) -> str | None:
    """Short commit hash of the checkout this file (or ``start``) lives in: through ``git`` when installed,
    else read from ``.git`` directly (machines without git); ``LITEATTN_GIT_COMMIT`` overrides both."""
    import os

    if os.environ.get("LITEATTN_GIT_COMMIT"):
        return os.environ["LITEATTN_GIT_COMMIT"]
    here = (start or Path(__file__)).resolve().parent
    try:
        result = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=here)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip()
    except Exception:
        pass
    for folder in (here, *here.parents):
        git_dir = folder / ".git"
        if not git_dir.is_dir():
            continue
        try:
            head = (git_dir / "HEAD").read_text().strip()
            if not head.startswith("ref: "):
                return head[:7]
            ref = head[5:]
            if (git_dir / ref).exists():
                return (git_dir / ref).read_text().strip()[:7]
            for line in (git_dir / "packed-refs").read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:7]
        except OSError:
            return None
        return None
    return None


def add_ratios(rows: list[dict]) -> list[dict]:
    """Add to every timed row:

    * ``vs_fa3``: FA3's dense time / this time (> 1: faster than dense FA3),
    * ``vs_flex``: FlexAttention's time with the same mask (dense at sparsity 0) / this time,
    * ``vs_ideal``: this time / ((1 - sparsity) x this engine's own dense time) (1.0: skipped work fully
      turned into time; the Triton target is <= 1.1),
    * ``tflops_computed``: TFLOP/s over the tiles actually computed.
    """
    timed = {(r["shape"], r["engine"], r["mask"], r["target_sparsity"]): r["time_ms"] for r in rows
             if r["status"] == "ok"}
    for r in rows:
        r.update(vs_fa3=None, vs_flex=None, vs_ideal=None, tflops_computed=None)
        if r["status"] != "ok":
            continue
        t = r["time_ms"]
        dense_mask = "dense"
        fa3 = timed.get((r["shape"], "fa3", dense_mask, 0.0))
        flex = timed.get((r["shape"], "flex", r["mask"], r["target_sparsity"]))
        own_dense = timed.get((r["shape"], r["engine"], dense_mask, 0.0))
        r["vs_fa3"] = fa3 / t if fa3 else None
        r["vs_flex"] = flex / t if flex else None
        if own_dense:
            r["vs_ideal"] = t / ((1.0 - r["sparsity"]) * own_dense)
        r["tflops_computed"] = r["tflops"] * (1.0 - r["sparsity"])
    return rows


def _fmt(value, spec: str, empty: str = "—") -> str:
    return empty if value is None else format(value, spec)


def markdown(rows: list[dict], env: dict, skipped: dict[str, str], config: dict) -> str:
    """A markdown report: environment, one table per shape, skipped and failed engines."""
    lines = ["# liteattn attention benchmark", ""]
    gpu = env.get("gpu") or f"CPU ({env.get('cpu')})"
    lines += [f"{gpu}, {env['date']}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
              f"Triton {env['triton']}, liteattn-core {env.get('liteattn-core')}, commit {env.get('git_commit')}.",
              f"dtype {config.get('dtype')}, median of `{env['timer']}` (warmup {config.get('warmup_ms')} ms, "
              f"rep {config.get('rep_ms')} ms). TF/s = 4·B·H·S²·D / time (dense-equivalent); "
              "×FA3 and ×Flex are speed-ups (their time / this time, Flex with the same mask); "
              "/ideal = time / ((1 − s) × own dense time); rel.err against fp32 on 3 query tiles.", ""]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    lines += summary_tables(rows)
    for shape in shapes:
        lines += [f"## B x H x S x D = {shape}", "",
                  "| engine | mask | target s | tile s | time (ms) | TF/s | ×FA3 | ×Flex | /ideal | rel.err |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rows:
            if r["shape"] != shape or r["status"] != "ok":
                continue
            lines.append(f"| {r['engine']} | {r['mask']} | {r['target_sparsity']:.2f} | {r['sparsity']:.3f} | "
                         f"{r['time_ms']:.3f} | {r['tflops']:.4g} | {_fmt(r['vs_fa3'], '.2f')} | "
                         f"{_fmt(r['vs_flex'], '.2f')} | "
                         f"{_fmt(r['vs_ideal'], '.2f')} | {_fmt(r['rel_err'], '.1e')} |")
        lines.append("")
    problems = [r for r in rows if r["status"] != "ok"]
    if skipped or problems:
        lines += ["## Not run", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()]
        lines += [f"- `{r['engine']}` at {r['shape']} {r['mask']} {r['target_sparsity']}: {r['status']}: "
                  f"{r['reason']}" for r in problems]
        lines.append("")
    return "\n".join(lines)


def summary_tables(rows: list[dict]) -> list[str]:
    """Compact view: per shape and mask kind, one row per engine, one column per target sparsity, cells
    ``time ms (/ideal)``; dense-only engines appear in the sparsity-0 column."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    lines = ["## Summary: time in ms (/ideal) by tile sparsity", ""]
    for shape in dict.fromkeys(r["shape"] for r in ok):
        mine = [r for r in ok if r["shape"] == shape]
        masks = [m for m in dict.fromkeys(r["mask"] for r in mine) if m != "dense"] or ["dense"]
        for mask in masks:
            levels = sorted({0.0} | {r["target_sparsity"] for r in mine if r["mask"] == mask})
            lines += [f"**{shape}**, {mask} masks", "", "| engine | " + " | ".join(f"s={s:g}" for s in levels) + " |",
                      "|---|" + "---:|" * len(levels)]
            for engine in dict.fromkeys(r["engine"] for r in mine):
                cells = []
                for s in levels:
                    want = "dense" if s == 0.0 else mask
                    hit = next((r for r in mine if r["engine"] == engine and r["mask"] == want
                                and r["target_sparsity"] == s), None)
                    if hit is None:
                        cells.append("")
                    elif s == 0.0 or hit["vs_ideal"] is None:
                        cells.append(f"{hit['time_ms']:.3g}")
                    else:
                        cells.append(f"{hit['time_ms']:.3g} ({hit['vs_ideal']:.2f})")
                lines.append(f"| {engine} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def plot(rows: list[dict], path: Path, title: str = "") -> Path | None:
    """Time vs tile sparsity per engine, one panel per shape; dense-only engines as horizontal lines.
    Returns the path, or None when matplotlib is missing or nothing was timed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [r for r in rows if r["status"] == "ok"]
    shapes = list(dict.fromkeys(r["shape"] for r in ok))
    if not shapes:
        return None
    fig, axes = plt.subplots(1, len(shapes), figsize=(5.2 * len(shapes), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    engines = list(dict.fromkeys(r["engine"] for r in ok))
    masks = [m for m in dict.fromkeys(r["mask"] for r in ok) if m != "dense"]
    styles = ["-", "--", ":", "-."]
    for ax, shape in zip(axes[0], shapes):
        for i, engine in enumerate(engines):
            color = colors[i % len(colors)]
            mine = [r for r in ok if r["shape"] == shape and r["engine"] == engine]
            dense = [r for r in mine if r["mask"] == "dense"]
            sparse = [r for r in mine if r["mask"] != "dense"]
            if not sparse:
                if dense:
                    ax.axhline(dense[0]["time_ms"], color=color, linestyle=(0, (4, 3)), label=f"{engine} (dense)")
                continue
            for j, mask in enumerate(masks):
                pts = sorted(dense + [r for r in sparse if r["mask"] == mask], key=lambda r: r["sparsity"])
                if len(pts) > (1 if dense else 0):
                    label = engine if len(masks) == 1 else f"{engine} ({mask})"
                    ax.plot([r["sparsity"] for r in pts], [r["time_ms"] for r in pts], marker="o", color=color,
                            linestyle=styles[j % len(styles)], label=label)
        ax.set_title(f"B x H x S x D = {shape}")
        ax.set_xlabel("tile sparsity")
        ax.set_ylabel("time (ms)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_results(out_dir: Path, rows: list[dict], env: dict, skipped: dict[str, str], config: dict) -> dict:
    """Write ``results.json``, ``results.md`` and ``time_vs_sparsity.png`` into ``out_dir``; returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    payload = {"environment": env, "config": config, "skipped_engines": skipped, "results": rows}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths["markdown"].write_text(markdown(rows, env, skipped, config) + "\n")
    title = f"{env.get('gpu') or 'CPU'} · torch {env['torch']} · {env['date'][:10]}"
    png = plot(rows, out_dir / "time_vs_sparsity.png", title)
    if png is not None:
        paths["plot"] = png
    return paths
