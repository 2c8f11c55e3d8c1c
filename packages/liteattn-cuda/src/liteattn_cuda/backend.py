"""``CudaBackend``: the Backend protocol (``liteattn.backend``) over the sm_90a kernel."""

from __future__ import annotations

import math

import torch

from liteattn.backend import AttentionCall, Capabilities
from liteattn.tiles import default_tile_shape

from . import _ops

HEAD_DIMS = frozenset({64, 128, 256})
INT8_HEAD_DIMS = frozenset({64, 128})  # csrc/build_kernels.py: INT8_HEAD_DIMS
DTYPES = frozenset({torch.float16, torch.bfloat16})
MAX_ROW_WORDS = 256  # kMaxSkipWords in include/liteattn/skip_test.cuh: keep rows listed, skip-test rows staged in smem
# Head dims whose dense calls run a kernel without a skip state (DenseGeometry in include/liteattn/kernel_traits.cuh);
# at the others a dense call runs the skip-state kernel.
DENSE_KERNEL_HEAD_DIMS = frozenset({64, 128})
# Tile shapes a 16-bit call may ask for besides default_tile_shape (FineSkipGeometry in
# include/liteattn/kernel_traits.cuh): 64-row skip tiles at head dim 128, for skip states that follow the video's
# structure more closely (faster over a video run, slower on random keep masks; docs/backends/cuda.rst).
EXTRA_TILE_SHAPES = {128: (64, 128)}


def supported_tile_shapes(head_dim: int, use_int8: bool = False) -> list[tuple[int, int]]:
    """The (block_m, block_n) the kernels are compiled for at ``head_dim``, the default first."""
    extra = EXTRA_TILE_SHAPES.get(head_dim)
    return [default_tile_shape(head_dim)] + ([extra] if extra and not use_int8 else [])


class CudaBackend:
    """Warp-specialised wgmma + TMA forward on Hopper; computes only the key tiles ``compute_bits`` keeps.

    With ``write_bits`` it also runs the skip test of the contract inside the kernel (per computed tile, the
    row-wise ``m_tile - m_run > threshold`` vote, OR-ed over the query tile) and writes every word of every row.
    With ``use_int8`` (head dims 64 and 128) a fused CUDA pass quantises Q and mean-smoothed K as
    ``liteattn.quant`` does, QK^T runs as an int8 wgmma dequantised per tile pair, and PV stays 16-bit; the lse
    returned is that of the smoothed scores (core adds the offset back).
    """

    name = "cuda"
    priority = 30

    def capabilities(self) -> Capabilities:
        return Capabilities(devices=frozenset({"cuda"}), dtypes=DTYPES, head_dims=HEAD_DIMS, int8=True,
                            writes_state=True, tile_gaps=True, counts_skipped=True)

    def unavailable_reason(self) -> str | None:
        if not torch.cuda.is_available():
            return "no CUDA device"
        major, minor = torch.cuda.get_device_capability()
        if (major, minor) != (9, 0):
            return f"needs sm_90 (Hopper), found sm_{major}{minor}"
        return _ops.load()

    def unsupported_reason(self, call: AttentionCall) -> str | None:
        q, k, v = call.q, call.k, call.v
        if call.use_int8 and q.shape[-1] not in INT8_HEAD_DIMS:
            return (f"int8 Q/K (use_int8=True) is compiled for head dims {sorted(INT8_HEAD_DIMS)} only, "
                    f"not {q.shape[-1]}")
        # The skip-state kernel lists the kept tiles of a row in shared memory (launch.cuh, launch_int8.cuh); every
        # call but a plain dense one at a head dim with a dense kernel runs it.
        skip_state_kernel = (call.write_bits is not None or call.compute_bits is not None or call.use_int8
                             or call.tile_gaps is not None or q.shape[-1] not in DENSE_KERNEL_HEAD_DIMS)
        if skip_state_kernel and -(-call.k_tiles // 32) > MAX_ROW_WORDS:
            return (f"more than {MAX_ROW_WORDS * 32} key tiles ({MAX_ROW_WORDS * 32 * call.block_n} keys) are "
                    f"supported only for dense 16-bit calls (no skip state, tile gaps or int8 Q/K) at head dims "
                    f"{sorted(DENSE_KERNEL_HEAD_DIMS)}")
        if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
            return f"dtype {q.dtype} (q), {k.dtype} (k), {v.dtype} (v): need one of float16/bfloat16 for all"
        if q.shape[-1] not in HEAD_DIMS:
            return f"head dim {q.shape[-1]} not in {sorted(HEAD_DIMS)}"
        if v.shape[-1] != q.shape[-1]:
            return f"v head dim {v.shape[-1]} != q head dim {q.shape[-1]}"
        tiles = supported_tile_shapes(q.shape[-1], call.use_int8)
        if (call.block_m, call.block_n) not in tiles:
            return (f"tile shape (block_m, block_n) = ({call.block_m}, {call.block_n}) unsupported: the kernels "
                    f"are compiled for {' or '.join(map(str, tiles))} at head dim {q.shape[-1]}"
                    + (" with int8 Q/K" if call.use_int8 else ""))
        if q.device.type != "cuda" or k.device != q.device or v.device != q.device:
            return "q, k, v must be on one CUDA device"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1:
                return f"{name} must have a contiguous last dim"
            if t.data_ptr() % 16 or any(s % 8 for s, n in zip(t.stride()[:3], t.shape[:3]) if n > 1):
                return f"{name} must be 16-byte aligned with strides that are multiples of 8 elements (TMA)"
        return None

    def forward(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, v = call.q, call.k, call.v
        batch, q_len, heads, _ = q.shape
        out = torch.empty(batch, q_len, heads, v.shape[-1], dtype=q.dtype, device=q.device)
        lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=q.device)
        if call.tile_gaps is not None:
            call.tile_gaps.fill_(-math.inf)  # the kernel raises only the tiles it computes
        if out.numel() == 0 or k.shape[1] == 0:  # nothing to launch: every row is empty
            out.zero_()
            lse.fill_(-math.inf)
            if call.write_bits is not None:  # nothing computed, so no tile is needed
                call.write_bits.zero_()
            return out, lse
        bits = call.compute_bits
        if bits is not None:
            bits = bits.to(device=q.device, dtype=torch.int32).contiguous()
        write = _staging(call.write_bits, torch.int32, q.device)
        gaps = _staging(call.tile_gaps, torch.float32, q.device)
        thresholds = None if write is None else call.thresholds.to(device=q.device, dtype=torch.float32).contiguous()
        if call.use_int8:
            q8, k8, q_scale, k_scale = _ops.quantize_qk(q, k, call.block_m, call.block_n)
            _ops.fwd_int8(q8, k8, v, out, lse, q_scale, k_scale, bits, call.scale, call.block_m, call.block_n,
                          call.reverse, write, thresholds, gaps, call.skipped_tiles)
        else:
            _ops.fwd(q, k, v, out, lse, bits, call.scale, call.block_m, call.block_n, call.reverse, write,
                     thresholds, gaps, call.skipped_tiles)
        for staged, target in ((write, call.write_bits), (gaps, call.tile_gaps)):
            if staged is not target:
                target.copy_(staged)
        return out, lse


def _staging(target: torch.Tensor | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """``target`` itself when the kernel can write it in place, else a contiguous copy to write and copy back."""
    if target is None or (target.is_contiguous() and target.dtype == dtype and target.device == device):
        return target
    return target.to(device=device, dtype=dtype).contiguous()
