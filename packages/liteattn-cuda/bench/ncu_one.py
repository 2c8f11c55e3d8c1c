"""One profiled forward call for Nsight Compute, after an unprofiled warm-up:

    ncu --profile-from-start off --clock-control none --set full -o REPORT \\
        python packages/liteattn-cuda/bench/ncu_one.py {cuda,cuda-s0,fa3} H,S,D

``cuda`` is a dense call (the dense geometry), ``cuda-s0`` the skip-state kernel reading a keep bitmask that keeps
every tile.

Only the call between cudaProfilerStart/Stop is profiled, so compile and warm-up kernels stay out of the report.
"""

from __future__ import annotations

import math
import sys

import torch

from liteattn.tiles import default_tile_shape


def main() -> None:
    engine = sys.argv[1]
    H, S, D = (int(x) for x in sys.argv[2].split(","))
    q, k, v = (torch.randn(1, S, H, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    if engine in ("cuda", "cuda-s0"):
        from liteattn.skip_state import pack_keep_mask
        from liteattn_cuda import fwd

        bm, bn = default_tile_shape(D)
        out, lse = torch.empty_like(q), torch.empty(1, H, S, device="cuda")
        bits = None
        if engine == "cuda-s0":
            bits = pack_keep_mask(torch.ones(1, H, -(-S // bm), -(-S // bn), dtype=torch.bool)).cuda()

        def run():
            fwd(q, k, v, out, lse, bits, 1 / math.sqrt(D), bm, bn, False)
    elif engine == "fa3":
        import fa3_fwd_interface

        def run():
            fa3_fwd_interface.flash_attn_func(q, k, v)
    else:
        raise SystemExit(f"engine must be cuda, cuda-s0 or fa3, got {engine!r}")
    run()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    run()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
