"""What the next call would compute at candidate thresholds, read off one probed call.

Calibration asks, for every candidate threshold, what the next call (B) computes when it reads the keep bits
this call would write at that threshold. :class:`Lookahead` does once, per probed call, everything that does
not depend on the candidate: it picks the sampled query rows and their gaps, folds the must-do tiles into the
gaps and pads them to whole bitmask words, and builds the backend call. A candidate then costs a comparison,
a bit packing and one backend call: a few kernel launches and no host synchronisation (on a GPU these, not
the sampled attention, were most of a candidate's cost). Several candidates can share one backend call.

A CUDA graph of candidate calls bakes in the addresses of every tensor they read. So that one captured graph
serves every later probed call of the same layout, a lookahead names those tensors (:meth:`Lookahead.buffers`)
and can run on other tensors of the same layout (:meth:`Lookahead.on_buffers`): the graph's owner copies each
new call's buffers into the ones the graph reads, then replays it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from .backend import AttentionCall
from .skip_state import _BIT_WEIGHTS, check_query_tiles, unpack_keep_mask
from .tiles import num_tiles, tile_rows

if TYPE_CHECKING:
    from .functional import TileGapProbe

__all__ = ["Lookahead"]


class Lookahead:
    """B of a probed call at candidate thresholds, on the rows of some query tiles (all when ``query_tiles``
    is None; otherwise strictly increasing indices, the rows as :meth:`liteattn.SkipState.query_rows` gives).

    ``lookahead(thresholds)`` with thresholds (H,) (float32, log2 units) returns B's output (B, rows, H, Dv);
    with (C, H), C candidates run in one backend call and the output is (B, rows, H, C, Dv). Attributes:
    ``reference``, A (the probed call's output) on the same rows; ``rows``, the int64 indices of those rows on
    the query's device (None for every row); ``heads``, H.

    B is what the next call on a scratch copy of the state would output after the probed call ran at the
    candidate and advanced the state: it computes ``keep_bits(threshold) | forced_bits`` (must-skip tiles were
    not computed, so their gaps are -inf and they stay skipped), visits the key tiles in the next call's
    direction, and writes nothing.
    """

    def __init__(self, probe: TileGapProbe, query_tiles=None):
        if probe.gaps is None:
            raise ValueError("this probe has no tile gaps (the backend cannot report them); run the calls instead")
        if probe.call is None or probe.backend is None:
            raise ValueError("a lookahead needs the call and the backend of probe_tile_gaps' probe")
        call, gaps = probe.call, probe.gaps
        self.rows, self.reference = None, probe.out
        query = call.q
        if query_tiles is not None:
            tiles = check_query_tiles(query_tiles, call.q_tiles)
            self.rows = tile_rows(tiles, call.q_len, call.block_m, device=query.device)
            query, self.reference = query[:, self.rows], probe.out[:, self.rows]
            gaps = gaps[:, :, tiles.to(gaps.device)]
        words = num_tiles(call.k_tiles, 32)
        # A must-do tile passes the test at every threshold (+inf); the padding to whole words never does.
        forced = unpack_keep_mask(torch.broadcast_to(probe.forced_bits.to(gaps.device), (words,)), call.k_tiles)
        gaps = torch.nn.functional.pad(gaps.masked_fill(forced, math.inf), (0, words * 32 - call.k_tiles),
                                       value=-math.inf)
        self.heads = gaps.shape[1]
        self._gaps = gaps.unflatten(-1, (words, 32)).unsqueeze(2)  # (B, H, 1, q_tiles, words, 32)
        self._weights = _BIT_WEIGHTS.to(device=gaps.device, dtype=torch.int32)
        self._backend = probe.backend
        # The next call visits key tiles the other way; B only reads bits, so it writes none and reports no gaps.
        self._base = replace(call, q=query, compute_bits=None, write_bits=None, tile_gaps=None,
                             reverse=not call.reverse)
        self._calls: dict[int, AttentionCall] = {}  # per number of candidates

    def __call__(self, thresholds: torch.Tensor) -> torch.Tensor:
        """B's output at ``thresholds``, (H,) or (C, H): one backend call, nothing read back to the host."""
        thresholds = torch.as_tensor(thresholds, dtype=torch.float32)
        bits = self.compute_bits(thresholds)
        count = bits.shape[1] // self.heads
        out, _ = self._backend.forward(replace(self._call(count), compute_bits=bits))
        return out if thresholds.dim() == 1 else out.unflatten(2, (self.heads, count))

    def compute_bits(self, thresholds: torch.Tensor) -> torch.Tensor:
        """B's compute bits: int32 (B, H * C, q_tiles, words), candidate c of head h as head ``h * C + c``."""
        per_candidate = torch.as_tensor(thresholds, dtype=torch.float32).reshape(-1, self.heads)
        count = per_candidate.shape[0]
        # Laid out (H, C) before the copy, the comparison comes out in the call's head order (h, c) and the
        # words view as its heads without a copy. non_blocking: PyTorch would wait for the queue after the copy.
        column = per_candidate.t().contiguous().to(self._gaps.device, non_blocking=True)
        verdict = self._gaps > column.view(1, self.heads, count, 1, 1, 1)
        words = (verdict * self._weights).sum(-1, dtype=torch.int32)
        return words.flatten(1, 2)

    def _call(self, count: int) -> AttentionCall:
        """The backend call for ``count`` candidates, bits aside; built once per count."""
        call = self._calls.get(count)
        if call is None:
            call = replace(self._base, q=self._replicated_query(count), thresholds=self._replicated_thresholds(count))
            reason = self._backend.unsupported_reason(call)
            if reason is not None:
                raise ValueError(f"backend {self._backend.name!r} cannot run the lookahead call: {reason}")
            self._calls[count] = call
        return call

    def _replicated_query(self, count: int) -> torch.Tensor:
        """The query of a call of ``count`` candidates: the base query itself for one."""
        query = self._base.q
        if count == 1:
            return query
        # Replica c of query head h is head h * C + c: with Hkv key/value heads, GQA maps it to head
        # (h * C + c) // (H * C / Hkv) = h // (H / Hkv), head h's own, so K and V are not copied.
        batch, rows, heads, dim = query.shape
        return query.unsqueeze(3).expand(batch, rows, heads, count, dim).reshape(batch, rows, -1, dim)

    def _replicated_thresholds(self, count: int) -> torch.Tensor:
        thresholds = self._base.thresholds
        return thresholds if count == 1 else thresholds.repeat_interleave(count)

    # -- running on other buffers (a captured CUDA graph reads fixed addresses) ------------------------------
    def buffers(self) -> dict[str, torch.Tensor]:
        """Every tensor a candidate call reads that changes from one probed call to the next. Together with
        :meth:`constants` and the buffers' layouts they decide what a call computes."""
        base = self._base
        return {"q": base.q, "k": base.k, "v": base.v, "thresholds": base.thresholds, "gaps": self._gaps}

    def constants(self) -> tuple:
        """What else a candidate call depends on: values a captured graph bakes in (the scale and the visit
        direction reach the kernel as arguments; the backend decides which kernels run)."""
        base = self._base
        return (id(self._backend), base.scale, base.block_m, base.block_n, base.reverse, base.use_int8, self.heads)

    def on_buffers(self, buffers: dict[str, torch.Tensor]) -> Lookahead:
        """This lookahead reading ``buffers`` (the names and layouts of :meth:`buffers`) instead of its own.
        It has no ``reference`` or ``rows``: candidates never read them, and keeping them would keep this
        probe's output alive. After the buffers change, :meth:`refresh` before the next candidate."""
        mine = self.buffers()
        if buffers.keys() != mine.keys() or any(_layout(buffers[n]) != _layout(t) for n, t in mine.items()):
            raise ValueError("on_buffers() needs buffers with the names, shapes, strides and dtypes of buffers()")
        twin = copy.copy(self)
        twin.reference = twin.rows = None
        twin._base = replace(self._base, q=buffers["q"], k=buffers["k"], v=buffers["v"],
                             thresholds=buffers["thresholds"])
        twin._gaps = buffers["gaps"]
        twin._calls = {}
        return twin

    def refresh(self) -> None:
        """Bring the calls of several candidates up to date with the buffers: their replicated queries and
        thresholds are copies, made once per count, and are refreshed in place (a graph reads them there)."""
        for count, call in self._calls.items():
            if count > 1:
                call.q.copy_(self._replicated_query(count))
                call.thresholds.copy_(self._replicated_thresholds(count))


def _layout(t: torch.Tensor) -> tuple:
    return tuple(t.shape), t.stride(), t.dtype, t.device

