"""Per-head error between two attention outputs of shape (batch, seq, heads, dim)."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["METRICS", "per_head_error"]


def _heads_last(x: torch.Tensor) -> torch.Tensor:
    """(B, S, H, D) -> (H, B*S*D) in float64, so that the error of one head is a reduction over one row."""
    return x.double().permute(2, 0, 1, 3).reshape(x.shape[2], -1)


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum |a - b| / sum |a| per head (0 where both are 0)."""
    a, b = _heads_last(a), _heads_last(b)
    return (a - b).abs().sum(-1) / a.abs().sum(-1).clamp_min(torch.finfo(torch.float64).tiny)


def one_minus_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) per head, each head's output flattened to one vector."""
    a, b = _heads_last(a), _heads_last(b)
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-30)
    return (1.0 - cos).clamp_min(0.0)


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(mean((a - b)^2)) per head (an absolute error: pick its target in the output's units)."""
    a, b = _heads_last(a), _heads_last(b)
    return (a - b).pow(2).mean(-1).sqrt()


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rel_l1": relative_l1,
    "cosine": one_minus_cosine,
    "rmse": rmse,
}


def per_head_error(metric: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Error of ``b`` against the reference ``a``: float64 (heads,) on the CPU."""
    try:
        fn = METRICS[metric]
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}") from None
    return fn(a, b).cpu()
