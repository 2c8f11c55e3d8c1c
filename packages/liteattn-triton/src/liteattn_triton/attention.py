"""The Triton backend: validation, scratch buffers, grid and launch.

The one public entry point is :class:`TritonBackend` (registered as ``triton`` under the ``liteattn.backends``
entry-point group); :func:`triton_forward` runs one :class:`liteattn.backend.AttentionCall` directly.

Per call:

1. the packed keep-bitmask ``compute_bits`` (B, H, QT, W) is expanded by a small Triton kernel into a compact
   list of kept key tiles per query tile, already in visit order (descending when ``reverse``), so the main
   loop has no per-tile branch and the software pipeliner sees a dense loop;
2. with ``use_int8``, Q and K are quantised by a fused Triton kernel (``liteattn.quant`` semantics);
3. the forward kernel walks each query tile's list, runs the skip test on every computed tile and writes
   every word of ``write_bits`` (and, when ``tile_gaps`` is given, each computed tile's gap). On a GPU, query
   tiles are handed to a persistent grid in decreasing order of kept tiles, so tiles with little work fill in
   behind the heavy ones instead of idling SMs.
"""

from __future__ import annotations

import math
import os

import torch
import triton

from liteattn.backend import AttentionCall, Capabilities

from . import configs
from ._kernels.fwd import _attn_fwd, _compact_keep_list, _pack_votes
from ._kernels.quant import _quantize_k, _quantize_q

__all__ = ["TritonBackend", "triton_forward"]

LOG2E = 1.4426950408889634  # 1/log(2): scores are kept in log2 units


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


class _Scratch:
    """Per-device transient buffers (compact keep lists, votes), grown on demand and shared by all layers.

    Calls on one device must not overlap on different streams (layers run one at a time). A buffer outgrown by
    a larger call is kept, not freed: a CUDA graph captured on it (calibration replays its rounds as one) goes on
    writing there at every replay, so its memory must never return to the allocator."""

    def __init__(self):
        self._buffers: dict[tuple[str, str], torch.Tensor] = {}
        self._outgrown: list[torch.Tensor] = []

    def get(self, name: str, numel: int, device: torch.device, dtype: torch.dtype = torch.int32) -> torch.Tensor:
        key = (name, str(device))
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            if buf is not None:
                self._outgrown.append(buf)
            buf = torch.empty(max(numel, 1), dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel]


_SCRATCH = _Scratch()
_SM_COUNT: dict[int, int] = {}


def _sm_count(device: torch.device) -> int:
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNT:
        _SM_COUNT[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNT[index]


def _compact(call: AttentionCall, rows: int, k_tiles: int, words: int):
    """(count (rows,), index (rows, KT), work (rows,)) from the packed compute bits, in visit order."""
    device = call.q.device
    bits = call.compute_bits.contiguous()
    count = _SCRATCH.get("count", rows, device)
    work = _SCRATCH.get("work", rows, device)
    index = _SCRATCH.get("index", rows * k_tiles, device)
    _compact_keep_list[(rows,)](
        bits, count, index, work, k_tiles, words,
        REVERSE=call.reverse, KT_PAD=max(_next_pow2(k_tiles), 16), num_warps=4)
    return count, index, work


def _quantize(call: AttentionCall, d_pad: int):
    """int8 copies of Q and smoothed K with their per-tile scales (liteattn.quant semantics)."""
    q, k = call.q, call.k
    batch, q_len, heads, dim = q.shape
    _, k_len, kv_heads, _ = k.shape
    q_tiles, k_tiles = call.q_tiles, call.k_tiles
    q8 = torch.empty(q.shape, dtype=torch.int8, device=q.device)
    k8 = torch.empty(k.shape, dtype=torch.int8, device=q.device)
    q_scale = torch.empty(batch, heads, q_tiles, dtype=torch.float32, device=q.device)
    k_scale = torch.empty(batch, kv_heads, k_tiles, dtype=torch.float32, device=q.device)
    k_mean = k.float().mean(dim=1).contiguous()  # (B, Hkv, D), one fused reduction
    _quantize_q[(q_tiles, batch * heads)](
        q, q8, q_scale,
        q.stride(0), q.stride(1), q.stride(2),
        heads, q_len, q_tiles,
        HEAD_DIM=dim, D_PAD=d_pad, BLOCK_M=call.block_m, num_warps=4)
    _quantize_k[(k_tiles, batch * kv_heads)](
        k, k_mean, k8, k_scale,
        k.stride(0), k.stride(1), k.stride(2),
        kv_heads, k_len, k_tiles,
        HEAD_DIM=dim, D_PAD=d_pad, BLOCK_N=call.block_n, num_warps=4)
    return q8, k8, q_scale, k_scale


def _gaps_buffer(call: AttentionCall) -> torch.Tensor:
    """The buffer the kernel writes gaps into, pre-filled with -inf: the kernel visits only computed tiles, so
    this fill is what marks the others. ``call.tile_gaps`` itself unless it is not contiguous."""
    gaps = call.tile_gaps
    if not gaps.is_contiguous():
        gaps = torch.empty(gaps.shape, dtype=torch.float32, device=gaps.device)
    return gaps.fill_(-math.inf)


def _descriptor_ok(t: torch.Tensor, dim: int) -> bool:
    """Can a (B, S, heads * dim) TMA descriptor view this BSHD tensor (heads packed, 16-byte strides)?"""
    size = t.element_size()
    return (dim == _next_pow2(dim) and t.stride(2) == dim and t.stride(3) == 1
            and (t.stride(0) * size) % 16 == 0 and (t.stride(1) * size) % 16 == 0
            and t.data_ptr() % 16 == 0 and dim * size >= 16)


_ALLOCATOR_SET = False


def _ensure_allocator() -> None:
    """Device-side tensor descriptors need a global scratch allocator (set once)."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
        _ALLOCATOR_SET = True


def triton_forward(call: AttentionCall, *, persistent: bool | None = None, skip_test: bool | None = None,
                   use_desc: bool | None = None, defer_vote: bool | None = None, warp_spec: bool | None = None,
                   idx_mode: int | None = None, num_warps: int | None = None,
                   num_stages: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one call; returns ``(out (B, Sq, H, Dv), lse (B, H, Sq) float32)`` and fills ``call.write_bits``
    and ``call.tile_gaps`` when they are given.

    ``persistent`` overrides the scheduler choice (default: persistent on a GPU when some tiles are skipped);
    ``skip_test=False`` compiles the skip test out even when ``write_bits`` is given (benchmarks only: the
    bits are then left untouched); ``use_desc`` forces TMA tensor descriptors on or off (default: on for
    sm_90+ when the layout allows). ``defer_vote`` keeps skip-test votes per row and ORs them across rows in
    a small second kernel instead of a cross-warp reduction per tile; ``warp_spec`` asks Triton for a
    warp-specialised key loop; ``num_warps`` / ``num_stages`` override :mod:`liteattn_triton.configs`.
    """
    q, k, v = call.q, call.k, call.v
    batch, q_len, heads, dim = q.shape
    _, k_len, kv_heads, dim_v = v.shape
    device = q.device
    out = torch.empty(batch, q_len, heads, dim_v, dtype=q.dtype, device=device)
    lse = torch.empty(batch, heads, q_len, dtype=torch.float32, device=device)
    bm, bn = call.block_m, call.block_n
    q_tiles, k_tiles = call.q_tiles, call.k_tiles
    words = -(-k_tiles // 32)
    write = call.write_bits is not None and (skip_test is None or skip_test)
    if q_len == 0:
        return out, lse
    if k_len == 0:
        out.zero_()
        lse.fill_(-math.inf)
        if call.write_bits is not None:
            call.write_bits.zero_()
        return out, lse  # no key tiles: tile_gaps has no elements

    rows = batch * heads * q_tiles
    dense = call.compute_bits is None
    if dense:
        count = index = work = _SCRATCH.get("unused_i32", 1, device)
    else:
        count, index, work = _compact(call, rows, k_tiles, words)

    d_pad, dv_pad = max(_next_pow2(dim), 16), max(_next_pow2(dim_v), 16)
    if call.use_int8:
        q_in, k_in, q_scale, k_scale = _quantize(call, d_pad)
    else:
        q_in, k_in = q, k
        q_scale = k_scale = _SCRATCH.get("unused_f32", 1, device, torch.float32)

    wbits = call.write_bits
    if write and not wbits.is_contiguous():
        wbits = torch.empty(wbits.shape, dtype=torch.int32, device=device)
    if not write:
        wbits_arg = _SCRATCH.get("unused_i32", 1, device)
    else:
        wbits_arg = wbits
    thresholds = call.thresholds.to(device=device, dtype=torch.float32).contiguous()
    write_gaps = call.tile_gaps is not None
    gaps = _gaps_buffer(call) if write_gaps else _SCRATCH.get("unused_f32", 1, device, torch.float32)

    interp = _interpreting()
    if persistent is None:
        persistent = configs.PERSISTENT_DEFAULT and (not interp) and device.type == "cuda" and not dense
    if persistent:
        order = torch.argsort(work[:rows], descending=True, stable=True).to(torch.int32)
        grid = (min(rows, 2 * _sm_count(device)),)
    else:
        order = count
        grid = (q_tiles, batch * heads)

    if use_desc is None:
        use_desc = (not interp and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9)
    use_desc = use_desc and _descriptor_ok(q_in, dim) and _descriptor_ok(k_in, dim) and _descriptor_ok(v, dim_v)
    if use_desc and not interp:
        _ensure_allocator()

    if defer_vote is None:
        defer_vote = configs.DEFER_VOTE_DEFAULT and not interp
    if idx_mode is None:
        idx_mode = configs.IDX_MODE_DEFAULT
    if idx_mode == 3 and not dense:
        defer_vote = True  # the key loop holds the tile index as a vector: votes are reduced afterwards
    defer_vote = defer_vote and write
    votes = (_SCRATCH.get("votes", rows * words * bm, device) if defer_vote
             else _SCRATCH.get("unused_i32", 1, device))

    cfg = configs.pick_config(dim, bm, bn, call.use_int8)
    stages = num_stages or (cfg.num_stages if dense else configs.keep_list_stages(cfg.num_stages))
    upcast = interp and q.dtype == torch.bfloat16
    _attn_fwd[grid](
        q_in, k_in, v, out, lse, thresholds,
        q_scale, k_scale,
        count, index, wbits_arg, votes,
        gaps,
        order,
        q_in.stride(0), q_in.stride(1), q_in.stride(2),
        k_in.stride(0), k_in.stride(1), k_in.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        out.stride(0), out.stride(1), out.stride(2),
        batch, heads, heads // kv_heads, q_len, k_len, q_tiles, k_tiles, words,
        call.scale * LOG2E,
        rows,
        HEAD_DIM=dim, HEAD_DIM_V=dim_v, D_PAD=d_pad, DV_PAD=dv_pad,
        BLOCK_M=bm, BLOCK_N=bn, W_PAD=_next_pow2(words),
        DENSE=dense, REVERSE=call.reverse,
        EVEN_M=q_len % bm == 0, EVEN_N=k_len % bn == 0,
        WRITE_BITS=write, USE_INT8=call.use_int8, WRITE_GAPS=write_gaps,
        UPCAST=upcast, DOT_PREC="ieee" if q.dtype == torch.float32 else "tf32",
        USE_DESC=use_desc, DEFER_VOTE=defer_vote, PERSISTENT=persistent,
        WARP_SPEC=configs.WARP_SPEC_DEFAULT if warp_spec is None else warp_spec,
        IDX_MODE=idx_mode,
        num_warps=num_warps or cfg.num_warps, num_stages=stages)
    if defer_vote:
        _pack_votes[(rows,)](votes, count, index, wbits_arg, k_tiles, words,
                             BLOCK_M=bm, W_PAD=_next_pow2(words), DENSE=dense, REVERSE=call.reverse, num_warps=4)
    if write and wbits is not call.write_bits:
        call.write_bits.copy_(wbits)
    if write_gaps and gaps is not call.tile_gaps:
        call.tile_gaps.copy_(gaps)
    return out, lse


class TritonBackend:
    """Skip attention in Triton: fp16/bf16 (fp32 under the interpreter), head dims 32/64/96/128/256,
    tiles of 16..128 rows/keys, GQA, INT8 Q/K. Registered under the entry point ``triton``."""

    name = "triton"

    @property
    def priority(self) -> int:
        """20 (above the reference) on a GPU; under the interpreter -1, so that ``auto`` never picks the
        interpreter over the reference on CPU tensors (ask for ``backend="triton"`` to test it)."""
        return -1 if _interpreting() else 20

    def capabilities(self) -> Capabilities:
        devices = {"cuda"}
        dtypes = {torch.float16, torch.bfloat16}
        if _interpreting():
            devices.add("cpu")
            dtypes.add(torch.float32)
        return Capabilities(
            devices=frozenset(devices),
            dtypes=frozenset(dtypes),
            head_dims=configs.HEAD_DIMS,
            int8=True,
            writes_state=True,
            tile_gaps=True,
        )

    def unavailable_reason(self) -> str | None:
        if _interpreting():
            return None
        if not torch.cuda.is_available():
            return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
        major, minor = torch.cuda.get_device_capability()
        if major < 8:
            return f"needs compute capability >= 8.0 (bf16 tensor cores); found {major}.{minor}"
        return None

    def unsupported_reason(self, call: AttentionCall) -> str | None:
        q, k, v = call.q, call.k, call.v
        if q.device.type == "cpu" and not _interpreting():
            return "CPU tensors need TRITON_INTERPRET=1"
        if not (q.device == k.device == v.device):
            return f"q, k, v are on different devices ({q.device}, {k.device}, {v.device})"
        if not (q.dtype == k.dtype == v.dtype):
            return f"q, k, v have different dtypes ({q.dtype}, {k.dtype}, {v.dtype})"
        if q.dtype == torch.float32 and not _interpreting():
            return "float32 runs only under TRITON_INTERPRET=1 (use fp16 or bf16 on a GPU)"
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.stride(-1) != 1:
                return f"{name} must have a contiguous last dim; strides {tuple(t.stride())}"
        dim, dim_v = q.shape[-1], v.shape[-1]
        for name, d in (("head_dim", dim), ("v head_dim", dim_v)):
            if d not in configs.HEAD_DIMS:
                return f"{name}={d} is not one of {sorted(configs.HEAD_DIMS)}"
        reason = configs.unsupported_tiles(max(dim, dim_v), call.block_m, call.block_n)
        if reason is not None:
            return reason
        if call.k_tiles > configs.MAX_K_TILES:
            return f"{call.k_tiles} key tiles exceed {configs.MAX_K_TILES}"
        for name, bits in (("compute_bits", call.compute_bits), ("write_bits", call.write_bits)):
            if bits is not None and bits.dtype != torch.int32:
                return f"{name} must be int32; got {bits.dtype}"
        if call.tile_gaps is not None and call.tile_gaps.dtype != torch.float32:
            return f"tile_gaps must be float32; got {call.tile_gaps.dtype}"
        return None

    def forward(self, call: AttentionCall) -> tuple[torch.Tensor, torch.Tensor]:
        return triton_forward(call)
