"""Finds and loads the compiled stable-ABI library, and calls its one op."""

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


def load() -> str | None:
    """Load the library once; return why it could not be loaded, or None."""
    global _loaded, _load_error
    if _loaded is None:
        path = library_path()
        if not path.exists():
            _loaded, _load_error = False, (f"liteattn_cuda extension not built ({path.name} missing; install with "
                                           f"nvcc and LITEATTN_CUDA_BUILD unset)")
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
        tile_gaps: torch.Tensor | None = None) -> None:
    """Run the kernel into ``out`` / ``lse`` (and ``write_bits`` when given, with the skip test against
    ``thresholds``; ``tile_gaps``, pre-filled with -inf, gets every computed tile's gap) on q's device and
    current stream (no argument checks beyond the op's)."""
    reason = load()
    if reason is not None:
        raise RuntimeError(reason)
    with torch.cuda.device(q.device):
        stream = torch.cuda.current_stream(q.device).cuda_stream
        torch.ops.liteattn_cuda.fwd(q, k, v, out, lse, compute_bits, write_bits, thresholds, tile_gaps,
                                    float(scale), int(block_m), int(block_n), bool(reverse), int(stream))
