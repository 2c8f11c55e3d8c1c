"""Diagnostics capture: per (module, step, call) arrays written to safetensors or npz (never pickle).

Keys are ``"{module}/step{step:04d}/call{call}/{what}"``; the file's metadata (``liteattn_capture``, JSON)
lists the modules, steps and heads recorded. What can be recorded, per selected head:

* ``sparsity``: float32 (H,), fraction of (query tile, key tile) pairs the call skipped;
* ``keep_mask``: uint8 (B, H, q_tiles, k_tiles), the tiles the call computed;
* ``attn_map``: float32 (B, H, q_tiles, k_tiles), dense softmax mass of each tile, averaged over the tile's
  rows (computes full attention: capture few modules and steps);
* ``stats``: float32 (H, 3): threshold used (nan when dense), calibration error (nan when not calibrated),
  mean log-sum-exp of the rows.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import torch

from liteattn.skip_state import unpack_keep_mask
from liteattn.tiles import num_tiles

__all__ = ["CAPTURE_KINDS", "Capture", "load_capture", "parse_key"]

CAPTURE_KINDS = ("sparsity", "keep_mask", "attn_map", "stats")
_META_KEY = "__liteattn_capture__"  # npz member holding the metadata as UTF-8 JSON bytes
_KEY = re.compile(r"^(?P<module>.+)/step(?P<step>\d+)/call(?P<call>\d+)/(?P<what>\w+)$")


def parse_key(key: str) -> tuple[str, int, int, str] | None:
    match = _KEY.match(key)
    if match is None:
        return None
    return match["module"], int(match["step"]), int(match["call"]), match["what"]


class Capture:
    """Collects diagnostics in memory (as numpy arrays) until :meth:`save`."""

    def __init__(self, path: str | Path, modules=None, steps: Iterable[int] | None = None,
                 heads: Iterable[int] | None = None, what: Iterable[str] = CAPTURE_KINDS):
        self.path = Path(path)
        if self.path.suffix not in (".safetensors", ".npz"):
            raise ValueError(f"capture path must end in .safetensors or .npz; got {self.path.name!r}")
        self.what = tuple(what)
        unknown = set(self.what) - set(CAPTURE_KINDS)
        if unknown:
            raise ValueError(f"unknown capture kinds {sorted(unknown)}; choose from {CAPTURE_KINDS}")
        self._module_filter = module_filter(modules)
        self.steps = None if steps is None else frozenset(int(s) for s in steps)
        self.heads = None if heads is None else sorted(int(h) for h in heads)
        self.arrays: dict[str, np.ndarray] = {}

    def wants(self, module: str, step: int) -> bool:
        return self._module_filter(module) and (self.steps is None or step in self.steps)

    def record(self, module: str, step: int, call: int, *, query, key, scale, compute_bits, block_m, block_n,
               thresholds, errors, lse) -> None:
        """Record one call. ``compute_bits`` is None for a dense call; ``thresholds`` None when dense."""
        heads_total = query.shape[2]
        heads = [h for h in (self.heads or range(heads_total)) if h < heads_total]
        q_tiles, k_tiles = num_tiles(query.shape[1], block_m), num_tiles(key.shape[1], block_n)
        if compute_bits is None:
            keep = torch.ones(query.shape[0], heads_total, q_tiles, k_tiles, dtype=torch.bool)
        else:
            keep = unpack_keep_mask(compute_bits, k_tiles).cpu()
        keep = keep[:, heads]
        prefix = f"{module}/step{step:04d}/call{call}/"
        if "sparsity" in self.what:
            self.arrays[prefix + "sparsity"] = (1.0 - keep.float().mean(dim=(0, 2, 3))).numpy()
        if "keep_mask" in self.what:
            self.arrays[prefix + "keep_mask"] = keep.to(torch.uint8).numpy()
        if "attn_map" in self.what:
            self.arrays[prefix + "attn_map"] = _tile_attention(query, key, scale, heads, block_m, block_n).numpy()
        if "stats" in self.what:
            nan = torch.full((heads_total,), math.nan, dtype=torch.float64)
            thr = nan if thresholds is None else thresholds.double().cpu().expand(heads_total)
            err = nan if errors is None else errors.double().cpu()
            lse_mean = lse.double().cpu().masked_fill(torch.isinf(lse.cpu()), math.nan).nanmean(dim=(0, 2))
            self.arrays[prefix + "stats"] = torch.stack([thr, err, lse_mean], dim=-1)[heads].float().numpy()

    def save(self, metadata: dict | None = None) -> Path:
        meta = {"format_version": 1, "heads": self.heads, "what": list(self.what), **(metadata or {})}
        meta_json = json.dumps(meta)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.suffix == ".safetensors":
            try:
                from safetensors.numpy import save_file
            except ImportError as exc:
                raise ImportError("writing .safetensors needs the safetensors package (pip install safetensors); "
                                  "or capture to a .npz path") from exc
            save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(self.path),
                      metadata={"liteattn_capture": meta_json})
        else:
            arrays = dict(self.arrays)
            arrays[_META_KEY] = np.frombuffer(meta_json.encode(), dtype=np.uint8)
            np.savez_compressed(self.path, **arrays)
        return self.path


def load_capture(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read a capture file: ``(arrays by key, metadata)``. npz files are read with ``allow_pickle=False``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {}).get("liteattn_capture", "{}"))
            arrays = {k: f.get_tensor(k) for k in f.keys()}
        return arrays, meta
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    meta_bytes = arrays.pop(_META_KEY, None)
    meta = json.loads(meta_bytes.tobytes().decode()) if meta_bytes is not None else {}
    return arrays, meta


def module_filter(selection) -> Callable[[str], bool]:
    """None: every module; a str: a glob pattern; a callable(name) -> bool; or an iterable of those."""
    if selection is None:
        return lambda name: True
    if callable(selection):
        return selection
    if isinstance(selection, str):
        return lambda name: fnmatch(name, selection)
    filters = [module_filter(s) for s in selection]
    return lambda name: any(f(name) for f in filters)


def _tile_attention(query, key, scale, heads, block_m, block_n) -> torch.Tensor:
    """Dense softmax mass per (query tile, key tile), averaged over each query tile's rows: (B, h, QT, KT)."""
    groups = query.shape[2] // key.shape[2]
    q = query[:, :, heads].double().transpose(1, 2)
    k = key.double().repeat_interleave(groups, dim=2)[:, :, heads].transpose(1, 2)
    probs = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)  # (B, h, Sq, Sk)
    sq, sk = probs.shape[-2:]
    qt, kt = num_tiles(sq, block_m), num_tiles(sk, block_n)
    padded = torch.zeros(*probs.shape[:2], qt * block_m, kt * block_n, dtype=probs.dtype)
    padded[..., :sq, :sk] = probs.cpu()
    per_tile = padded.view(*probs.shape[:2], qt, block_m, kt, block_n).sum(dim=-1)  # key mass per row and tile
    rows = torch.clamp(sq - torch.arange(qt) * block_m, max=block_m).to(per_tile.dtype)
    return (per_tile.sum(dim=3) / rows[:, None]).float()
