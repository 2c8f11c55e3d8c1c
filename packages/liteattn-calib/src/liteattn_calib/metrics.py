"""Per-head error between attention outputs of shape (batch, seq, heads, dim).

:class:`ErrorMeter` prepares the reference once and measures any number of candidates against it: calibration
measures every candidate of a call against the same A, and on a GPU each operation is a kernel launch.
:func:`per_head_error` is the one-off form.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

__all__ = ["METRICS", "ErrorMeter", "per_head_error"]


def _per_head_rows(out: torch.Tensor) -> torch.Tensor:
    """(B, S, H, C, D) -> float64 (C, H, B*S*D): the error of one head of one candidate is a reduction over
    one row. One copy does the cast and the transpose."""
    batch, seq, heads, count, dim = out.shape
    rows = torch.empty(count, heads, batch, seq, dim, dtype=torch.float64, device=out.device)
    return rows.copy_(out.permute(3, 2, 0, 1, 4)).view(count, heads, -1)


class ErrorMeter:
    """``metric`` of candidate outputs against ``reference`` (B, S, H, D), per head.

    ``meter(b)`` with b (B, S, H, D) returns float64 (H,); with b (B, S, H, C, D), C candidates at once, it
    returns (C, H). The result stays on b's device. Metrics: ``"rel_l1"`` ``sum|a - b| / sum|a|`` (0 where both
    are 0), ``"cosine"`` ``1 - cos(a, b)`` (each head's output one vector), ``"rmse"`` ``sqrt(mean((a - b)^2))``
    (absolute: pick its target in the output's units).
    """

    def __init__(self, metric: str, reference: torch.Tensor):
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        self.metric = metric
        a = _per_head_rows(reference.unsqueeze(3))[0]  # (H, N)
        if metric == "rel_l1":
            self._a, self._norm = a, a.abs().sum(-1).clamp_min(torch.finfo(torch.float64).tiny)
        elif metric == "cosine":  # a's unit vector; eps as torch's cosine_similarity takes it
            self._unit = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp_min(_COSINE_EPS)
        else:
            self._a = a

    def buffers(self) -> dict[str, torch.Tensor]:
        """What the meter prepared from its reference: a captured CUDA graph of measurements reads these."""
        names = ("_unit",) if self.metric == "cosine" else ("_a", "_norm") if self.metric == "rel_l1" else ("_a",)
        return {name: getattr(self, name) for name in names}

    def on_buffers(self, buffers: dict[str, torch.Tensor]) -> ErrorMeter:
        """This meter reading ``buffers`` (the names of :meth:`buffers`) instead of its own."""
        if buffers.keys() != self.buffers().keys():
            raise ValueError(f"a {self.metric} meter reads {sorted(self.buffers())}; got {sorted(buffers)}")
        twin = copy.copy(self)
        for name, tensor in buffers.items():
            setattr(twin, name, tensor)
        return twin

    def __call__(self, out: torch.Tensor) -> torch.Tensor:
        b = _per_head_rows(out if out.dim() == 5 else out.unsqueeze(3))  # (C, H, N)
        if self.metric == "rel_l1":
            err = (b - self._a).abs().sum(-1) / self._norm
        elif self.metric == "cosine":
            cos = (b * self._unit).sum(-1) / torch.linalg.vector_norm(b, dim=-1).clamp_min(_COSINE_EPS)
            err = (1.0 - cos).clamp_min(0.0)
        else:
            err = (b - self._a).square().mean(-1).sqrt()
        return err if out.dim() == 5 else err[0]


_COSINE_EPS = 1e-30


def relative_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum |a - b| / sum |a| per head (0 where both are 0)."""
    return ErrorMeter("rel_l1", a)(b)


def one_minus_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) per head, each head's output flattened to one vector."""
    return ErrorMeter("cosine", a)(b)


def rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sqrt(mean((a - b)^2)) per head (an absolute error: pick its target in the output's units)."""
    return ErrorMeter("rmse", a)(b)


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rel_l1": relative_l1,
    "cosine": one_minus_cosine,
    "rmse": rmse,
}


def per_head_error(metric: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Error of ``b`` against the reference ``a``: float64 (heads,) on the CPU."""
    return ErrorMeter(metric, a)(b).cpu()
