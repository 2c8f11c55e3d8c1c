"""``liteattn inspect FILE``: summary and plots of a threshold file (.toml) or a capture (.safetensors/.npz)."""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from .capture import load_capture, parse_key
from .fileformat import CalibrationFileError, read_file
from .summary import format_summary, threshold_matrix

__all__ = ["inspect_main", "main"]

_MAX_MASK_STEPS = 8  # rows per keep-mask figure: more would be unreadable


def inspect_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="liteattn inspect", description=__doc__)
    parser.add_argument("file", type=Path, help="a threshold file (.toml) or a capture (.safetensors, .npz)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for the plots (default: <file stem>_plots next to the file)")
    parser.add_argument("--no-plots", action="store_true", help="print the summary only")
    args = parser.parse_args(argv)
    out_dir = args.out or args.file.with_name(args.file.stem + "_plots")
    try:
        if args.file.suffix == ".toml":
            written = _inspect_toml(args.file, out_dir, not args.no_plots)
        elif args.file.suffix in (".safetensors", ".npz"):
            written = _inspect_capture(args.file, out_dir, not args.no_plots)
        else:
            print(f"liteattn inspect: {args.file}: expected .toml, .safetensors or .npz", file=sys.stderr)
            return 2
    except (OSError, CalibrationFileError) as exc:
        print(f"liteattn inspect: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def _inspect_toml(path: Path, out_dir: Path, plots: bool) -> list[Path]:
    data = read_file(path)
    print(format_summary(data, title=str(path)))
    if data.calibration is not None:
        c = data.calibration
        print(f"calibrated: metric {c.metric}, target {c.target_error:g}, bounds {list(c.bounds)}")
    if not plots:
        return []
    from .plots import plot_sparsity, plot_threshold_heatmap

    written = [plot_threshold_heatmap(list(data.modules), threshold_matrix(data), out_dir / "thresholds.png")]
    sparsity = {name: table.sparsity for name, table in data.modules.items() if table.sparsity}
    if sparsity:
        written.append(plot_sparsity(sparsity, out_dir / "sparsity.png"))
    return written


def _inspect_capture(path: Path, out_dir: Path, plots: bool) -> list[Path]:
    arrays, meta = load_capture(path)
    records: dict[str, dict[str, dict[int, np.ndarray]]] = defaultdict(lambda: defaultdict(dict))  # what/module/step
    for key, array in arrays.items():
        parsed = parse_key(key)
        if parsed is None or parsed[2] != 0:  # plots show the first call of each step (the cond pass)
            continue
        module, step, _, what = parsed
        records[what][module][step] = array
    modules = sorted({m for per_module in records.values() for m in per_module})
    steps = sorted({s for per_module in records.values() for by_step in per_module.values() for s in by_step})
    print(f"{path}: {len(arrays)} arrays, {len(modules)} modules, steps {steps[:1] + steps[-1:]}, "
          f"kinds {sorted(records)}")
    sparsity = {m: [float(np.mean(records['sparsity'][m][s])) for s in sorted(records["sparsity"][m])]
                for m in records.get("sparsity", {})}
    for module in modules:
        line = f"  {module}"
        if module in sparsity:
            line += f": mean sparsity {np.mean(sparsity[module]):.3f}"
        print(line)
    if not plots:
        return []
    from .plots import plot_keep_masks, plot_sparsity, plot_threshold_heatmap

    written = []
    if sparsity:
        written.append(plot_sparsity(sparsity, out_dir / "sparsity.png"))
    if "stats" in records:
        by_module = records["stats"]
        matrix = [[float(np.nanmean(by_module[m][s][:, 0])) if s in by_module[m] and
                   not np.isnan(by_module[m][s][:, 0]).all() else np.nan for s in steps] for m in by_module]
        written.append(plot_threshold_heatmap(list(by_module), matrix, out_dir / "thresholds.png"))
    heads = meta.get("heads")
    for what, label in (("keep_mask", "keep mask"), ("attn_map", "attention mass per tile")):
        for module, by_step in records.get(what, {}).items():
            chosen = {s: by_step[s][0] for s in sorted(by_step)[:_MAX_MASK_STEPS]}  # batch 0: (heads, QT, KT)
            head_ids = heads or list(range(next(iter(chosen.values())).shape[0]))
            name = re.sub(r"[^\w.-]", "_", module)
            written.append(plot_keep_masks(chosen, head_ids, out_dir / f"{what}_{name}.png", f"{module}: {label}"))
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m liteattn_calib <command> ...``: the same commands the ``liteattn`` script gets from us."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"inspect": inspect_main}
    if not argv or argv[0] not in commands:
        print(f"usage: python -m liteattn_calib {{{','.join(commands)}}} ...", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
