"""Finds and loads the compiled stable-ABI library, and calls its ops (fwd; quantize_qk + fwd_int8 for INT8)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

LIB_NAME = "_liteattn_cuda_C.so"
_loaded: bool | None = None
_load_error: str | None = None


def library_path() -> Path:
    """$LITEATTN_CUDA_LIB if set (a development build), else the library installed next to this module."""
    env = os.environ.get("LITEATTN_CUDA_LIB")
    return Path(env) if env else Path(__file__).with_name(LIB_NAME)


def ops_registered_by_another_library(path: Path) -> bool:
    """Whether liteattn_cuda's ops are already registered in this process, but not by ``path`` (another copy of this
    extension): loading ``path`` as well would register the ops' namespace twice, which ends the process (in the
    library's initialisation) instead of raising."""
    if not hasattr(torch.ops.liteattn_cuda, "fwd"):
        return False
    return os.path.realpath(path) not in {os.path.realpath(p) for p in torch.ops.loaded_libraries}


def load() -> str | None:
    """Load the library once; return why it could not be loaded, or None."""
    global _loaded, _load_error
    if _loaded is None:
        path = library_path()
        if not path.exists():
            _loaded, _load_error = False, (f"liteattn_cuda extension not built ({path.name} missing; install with "
                                           f"nvcc and LITEATTN_CUDA_BUILD unset)")
        elif ops_registered_by_another_library(path):
            loaded = ", ".join(sorted(torch.ops.loaded_libraries)) or "none through torch.ops.load_library"
            _loaded, _load_error = False, (f"liteattn_cuda extension not loaded from {path}: another library already "
                                           f"registered its ops in this process (loaded: {loaded}); load one copy "
                                           f"only (check LITEATTN_CUDA_LIB)")
        else:
            try:
                torch.ops.load_library(str(path))
                _loaded = True
            except (OSError, RuntimeError) as exc:
                _loaded, _load_error = False, f"liteattn_cuda extension failed to load: {exc}"
    return None if _loaded else _load_error


def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
        compute_bits: torch.Tensor | None, scale: float, block_m: int, block_n: int, reverse: bool,
        write_bits: torch.Tensor | None = None, thresholds: torch.Tensor | None = None,
        tile_gaps: torch.Tensor | None = None, skipped_tiles: torch.Tensor | None = None) -> None:
    """Run the kernel into ``out`` / ``lse`` (and ``write_bits`` when given, with the skip test against
    ``thresholds``; ``tile_gaps``, pre-filled with -inf, gets every computed tile's gap; ``skipped_tiles``, a
    zeroed 0-d int64 tensor, gets the number of key tiles skipped) on q's device and current stream (no argument
    checks beyond the op's)."""
    reason = load()
    if reason is not None:
        raise RuntimeError(reason)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        torch.ops.liteattn_cuda.fwd(q, k, v, out, lse, compute_bits, write_bits, thresholds, tile_gaps,
                                    skipped_tiles, float(scale), int(block_m), int(block_n), bool(reverse),
                                    int(stream))


QUANT_SUM_ROWS = 1024  # kQuantSumRows in include/liteattn/api.h: rows per chunk of K's channel-mean pass


def quantize_qk(q: torch.Tensor, k: torch.Tensor, block_m: int, block_n: int):
    """int8 copies of q and mean-smoothed k with their per-tile scales (``liteattn.quant`` semantics), computed by
    the fused CUDA quantiser: ``(q8 (B,Sq,H,D), k8 (B,Sk,Hkv,D), q_scale (B,H,QT), k_scale (B,Hkv,KT))``."""
    reason = load()
    if reason is not None:
        raise RuntimeError(reason)
    batch, q_len, heads, dim = q.shape
    _, k_len, kv_heads, _ = k.shape
    dev = q.device
    q8 = torch.empty(q.shape, dtype=torch.int8, device=dev)
    k8 = torch.empty(k.shape, dtype=torch.int8, device=dev)
    q_scale = torch.empty(batch, heads, -(-q_len // block_m), dtype=torch.float32, device=dev)
    k_scale = torch.empty(batch, kv_heads, -(-k_len // block_n), dtype=torch.float32, device=dev)
    partial = torch.empty(batch, kv_heads, -(-k_len // QUANT_SUM_ROWS), dim, dtype=torch.float32, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        torch.ops.liteattn_cuda.quantize_qk(q, k, q8, k8, q_scale, k_scale, partial, int(block_m), int(block_n),
                                            int(stream))
    return q8, k8, q_scale, k_scale


def fwd_int8(q8: torch.Tensor, k8: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
             q_scale: torch.Tensor, k_scale: torch.Tensor, compute_bits: torch.Tensor | None, scale: float,
             block_m: int, block_n: int, reverse: bool, write_bits: torch.Tensor | None = None,
             thresholds: torch.Tensor | None = None, tile_gaps: torch.Tensor | None = None,
             skipped_tiles: torch.Tensor | None = None) -> None:
    """``fwd`` on the int8 copies of :func:`quantize_qk`; ``lse`` is that of the smoothed scores."""
    reason = load()
    if reason is not None:
        raise RuntimeError(reason)
    with torch.cuda.device(v.device):
        stream = torch.cuda.current_stream(v.device).cuda_stream
        torch.ops.liteattn_cuda.fwd_int8(q8, k8, v, out, lse, q_scale, k_scale, compute_bits, write_bits, thresholds,
                                         tile_gaps, skipped_tiles, float(scale), int(block_m), int(block_n),
                                         bool(reverse), int(stream))
