"""``LiteAttention`` and ``SeqParallelLiteAttention``: one module per attention layer, owning its skip state."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .functional import Ranges, run_attention
from .skip_state import SkipState
from .validation import head_thresholds

__all__ = ["LiteAttention", "SeqParallelLiteAttention"]


class LiteAttention(nn.Module):
    """Skip-attention for one layer of a diffusion transformer.

    Each call computes the key tiles its :class:`SkipState` keeps, drops the tiles the skip test finds
    negligible at ``threshold`` (log2 units; a float or one value per head), and the next call (the next
    denoising step) skips them. Inputs are (batch, seq, heads, head_dim), like FA3 and diffusers.

    Example::

        >>> attn = LiteAttention(threshold=-10.0)
        >>> q, k, v = (torch.randn(1, 512, 2, 64) for _ in range(3))
        >>> out = attn(q, k, v)          # step 0: computes everything, writes the state
        >>> out = attn(q, k, v)          # step 1: skips what step 0 dropped
        >>> 0.0 <= attn.last_sparsity <= 1.0
        True
    """

    def __init__(self, enable_skipping: bool = True, threshold: float | Sequence[float] | torch.Tensor = -10.0,
                 use_int8: bool = False, backend: str | None = None, *, block_m: int | None = None,
                 block_n: int | None = None):
        super().__init__()
        self.enable_skipping = bool(enable_skipping)
        self.use_int8 = bool(use_int8)
        self.backend = backend
        self.set_threshold(threshold)
        self._state = SkipState(block_m, block_n)
        self.last_sparsity = None

    @property
    def last_sparsity(self) -> float | None:
        """Fraction of key tiles the last call skipped (0.0 when skipping is off). The call records it on the
        device without waiting for the GPU; reading it waits for that call."""
        return None if self._last_sparsity is None else float(self._last_sparsity)

    @last_sparsity.setter
    def last_sparsity(self, value) -> None:
        self._last_sparsity = value

    @property
    def skip_state(self) -> SkipState:
        return self._state

    @property
    def threshold(self):
        return self._threshold

    def set_threshold(self, threshold: float | Sequence[float] | torch.Tensor) -> None:
        """Set the skip threshold (log2 units, <= 0): one float, or one value per head."""
        values = torch.as_tensor(threshold, dtype=torch.float32).flatten()
        head_thresholds(values, values.numel(), torch.device("cpu"))  # value checks; the count is checked per call
        self._threshold = threshold if values.numel() > 1 else float(values.item())

    def reset_skip_state(self) -> None:
        """Compute every tile at the next call (start of a new video)."""
        self._state.reset()

    def enable_skip_optimization(self, enable: bool = True) -> None:
        """Turn skipping on or off; while off, calls are dense and leave the state untouched."""
        self.enable_skipping = bool(enable)

    def forward(self, query, key, value, scale=None, *, must_do_list: Ranges = None,
                must_skip_list: Ranges = None, return_softmax_lse: bool = False):
        state = self._state if self.enable_skipping else None
        out, lse, sparsity = run_attention(query, key, value, state, threshold=self._threshold, scale=scale,
                                           must_do_list=must_do_list, must_skip_list=must_skip_list,
                                           use_int8=self.use_int8, backend=self.backend)
        self.last_sparsity = sparsity
        return (out, lse) if return_softmax_lse else out

    def extra_repr(self) -> str:
        return (f"enable_skipping={self.enable_skipping}, threshold={self._threshold}, use_int8={self.use_int8}, "
                f"backend={self.backend or 'auto'}")


class SeqParallelLiteAttention(nn.Module):
    """Skip-attention where the keys are split across devices (or chunks): one skip state per split.

    ``forward(q, k, v, split_idx)`` attends the full local queries to split ``split_idx``'s keys; merge the
    parts with :func:`liteattn.merge_attention` using ``return_softmax_lse=True``.
    """

    def __init__(self, num_splits: int, **kwargs):
        super().__init__()
        if not isinstance(num_splits, int) or num_splits < 1:
            raise ValueError(f"num_splits must be an int >= 1; got {num_splits!r}")
        self.num_splits = num_splits
        self.splits = nn.ModuleList(LiteAttention(**kwargs) for _ in range(num_splits))

    def forward(self, query, key, value, split_idx: int, scale=None, **kwargs):
        if not isinstance(split_idx, int) or not 0 <= split_idx < self.num_splits:
            raise ValueError(f"split_idx must be an int in [0, {self.num_splits}); got {split_idx!r}")
        return self.splits[split_idx](query, key, value, scale, **kwargs)

    def set_threshold(self, threshold) -> None:
        for split in self.splits:
            split.set_threshold(threshold)

    def reset_skip_state(self) -> None:
        for split in self.splits:
            split.reset_skip_state()

    def enable_skip_optimization(self, enable: bool = True) -> None:
        for split in self.splits:
            split.enable_skip_optimization(enable)

    @property
    def last_sparsity(self) -> list[float | None]:
        return [split.last_sparsity for split in self.splits]
