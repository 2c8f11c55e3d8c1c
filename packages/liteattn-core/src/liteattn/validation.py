"""Argument checks shared by the functional and module forms; every message names the argument."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from ._env import debug_enabled

__all__ = ["check_qkv", "check_scale", "head_thresholds"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("query", q), ("key", k), ("value", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, seq, heads, head_dim); got shape {tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{name} dtype must be one of float16, bfloat16, float32; got {x.dtype}")
        if x.shape[-1] > 0 and x.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in its last dim (head_dim); got strides {x.stride()}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"query, key and value must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"query, key and value must be on one device; got {q.device}, {k.device}, {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"query, key and value must share the batch size; got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"key and value must agree in (batch, seq, heads); got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"query and key must share head_dim; got {q.shape[3]} and {k.shape[3]}")
    if q.shape[3] == 0 or v.shape[3] == 0:
        raise ValueError("head_dim must be > 0")
    if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of key/value heads ({k.shape[2]})")


def check_scale(scale: float | None, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    scale = float(scale)
    if not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a finite float > 0; got {scale}")
    return scale


def head_thresholds(threshold: float | Sequence[float] | torch.Tensor, num_heads: int,
                    device: torch.device) -> torch.Tensor:
    """Normalise a threshold (one float, or one per head) to a float32 (num_heads,) tensor on ``device``.

    The result is cached per value, so a layer calling with the same threshold every step copies nothing to
    the GPU (a host-to-device copy of pageable memory waits for the queue). Callers must not modify it.
    """
    values = torch.as_tensor(threshold, dtype=torch.float32).detach().cpu().flatten()
    return _validated_on_device(tuple(values.tolist()), num_heads, torch.device(device), debug_enabled())


@functools.lru_cache(maxsize=256)
def _validated_on_device(values: tuple[float, ...], num_heads: int, device: torch.device,
                         debug: bool) -> torch.Tensor:
    if len(values) == 1:
        values = values * num_heads
    if len(values) != num_heads:
        raise ValueError(f"threshold must be one float or one value per head ({num_heads}); got "
                         f"{len(values)} values")
    if any(math.isnan(x) or x == math.inf for x in values):
        raise ValueError(f"threshold values must be finite or -inf (log2 units, <= 0); got {list(values)}")
    if any(x > 0 for x in values) and not debug:
        raise ValueError(f"threshold must be <= 0 (log2 units); got {max(values)}. Thresholds > 0 drop "
                         f"tiles that dominate the softmax and are allowed only with LITEATTN_DEBUG=1")
    return torch.tensor(values, dtype=torch.float32, device=device)
