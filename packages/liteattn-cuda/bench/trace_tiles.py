"""Per-work-tile timeline of the skip-state kernel, from a trace build (LITEATTN_TRACE=1, development only):

    LITEATTN_CUDA_NVCC_FLAGS=-DLITEATTN_TRACE=1 python packages/liteattn-cuda/csrc/build_kernels.py /tmp/trace
    LITEATTN_CUDA_LIB=/tmp/trace/_liteattn_cuda_C.so python packages/liteattn-cuda/bench/trace_tiles.py ROWS.npz

A trace build writes, for every work tile, its consumers' timestamps (start, key loop start, key loop end, end),
its SM and its kept-tile count over the LSE of the tile's first rows. Keep masks are built with the kept-tile
counts per row that a 20-step video run saved (``bench/multistep.py --row-counts``) at random positions, plus one
that keeps every tile. Prints, per mask, the time split into prologue / key loop / epilogue / gaps between the
CTAs of an SM, and a least-squares fit of the key loop's time to a + b x kept tiles.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import torch

from liteattn.skip_state import pack_keep_mask
from liteattn_cuda import _ops


def keep_from_counts(counts: np.ndarray, heads: int, q_tiles: int, k_tiles: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    keep = np.zeros((1, heads, q_tiles, k_tiles), dtype=bool)
    flat = keep.reshape(-1, k_tiles)
    for row, n in enumerate(counts.reshape(-1)):
        flat[row, rng.choice(k_tiles, size=int(n), replace=False)] = True
    return torch.from_numpy(keep)


def timeline(q, k, v, keep: torch.Tensor) -> dict:
    B, S, H, D = q.shape
    out, lse = torch.empty_like(q), torch.empty(B, H, S, device="cuda")
    bits = pack_keep_mask(keep).cuda()
    wbits, thresholds = torch.empty_like(bits), torch.full((H,), -6.0, device="cuda")
    for _ in range(3):
        _ops.fwd(q, k, v, out, lse, bits, 1 / math.sqrt(D), 128, 128, False, wbits, thresholds)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    _ops.fwd(q, k, v, out, lse, bits, 1 / math.sqrt(D), 128, 128, False, wbits, thresholds)
    end.record()
    end.synchronize()
    stamps = lse.view(B * H, -1, 128)[:, :, :6].contiguous().view(torch.int32).cpu().numpy().reshape(-1, 6)
    stamps = stamps.astype(np.int64)
    t0 = stamps[:, 0].min()
    t = (stamps[:, :4] - t0) % (1 << 32) / 1e3  # microseconds since the first CTA started
    sm, kept = stamps[:, 4], stamps[:, 5]
    prologue, loop, epilogue = t[:, 1] - t[:, 0], t[:, 2] - t[:, 1], t[:, 3] - t[:, 2]
    gaps = []
    for s in np.unique(sm):
        order = np.argsort(t[sm == s, 0])
        starts, ends = t[sm == s, 0][order], t[sm == s, 3][order]
        gaps.extend(starts[1:] - ends[:-1])
    b, a = np.polyfit(kept, loop, 1)
    busy = (t[:, 3] - t[:, 0]).sum() / len(np.unique(sm))
    return {"kernel_us": start.elapsed_time(end) * 1e3, "span_us": float(t[:, 3].max()), "tiles": int(len(kept)),
            "mean_kept": float(kept.mean()), "prologue_us": float(prologue.mean()), "loop_us": float(loop.mean()),
            "epilogue_us": float(epilogue.mean()), "gap_us": float(np.mean(gaps)), "busy_per_sm_us": float(busy),
            "fit_a_us": float(a), "fit_b_us": float(b),
            "loop_us_by_kept": {int(n): float(loop[kept == n].mean()) for n in sorted(set(kept.tolist()))[:6]}}


def main() -> None:
    H, S, D = 12, 32768, 128
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    QT = KT = S // 128
    masks = {"all": torch.ones(1, H, QT, KT, dtype=torch.bool)}
    if len(sys.argv) > 1:
        rows = np.load(sys.argv[1])
        for step in ("step1", "step10", "step19"):
            if step in rows:
                masks[step] = keep_from_counts(rows[step], H, QT, KT, seed=1)
    for name, keep in masks.items():
        print(name, json.dumps(timeline(q, k, v, keep)), flush=True)


if __name__ == "__main__":
    main()
