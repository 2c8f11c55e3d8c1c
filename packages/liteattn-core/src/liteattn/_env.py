"""Environment switches, read at call time so tests and users can flip them without re-importing."""

from __future__ import annotations

import os

_TRUE = {"1", "true", "yes", "on"}


def debug_enabled() -> bool:
    """``LITEATTN_DEBUG=1`` unlocks thresholds > 0 (they drop tiles that dominate the softmax)."""
    return os.environ.get("LITEATTN_DEBUG", "").strip().lower() in _TRUE


def verbose_enabled() -> bool:
    """``LITEATTN_VERBOSE=1`` logs per-call sparsity through :mod:`logging`."""
    return os.environ.get("LITEATTN_VERBOSE", "").strip().lower() in _TRUE


def requested_backend() -> str:
    """``LITEATTN_BACKEND``: ``auto`` (default), ``reference``, ``triton`` or ``cuda``."""
    return os.environ.get("LITEATTN_BACKEND", "auto").strip().lower() or "auto"
