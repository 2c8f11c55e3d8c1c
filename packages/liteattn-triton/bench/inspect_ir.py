"""Compile the forward kernel for sm_90 on a machine without a GPU and dump its TTGIR / PTX.

    python packages/liteattn-triton/bench/inspect_ir.py NAME      # NAME: a key of CONFIGS below

Count the K/V shared-memory buffers with ``grep -o 'memdesc<[0-9]x128x128xbf16' NAME.ttgir | sort | uniq -c``:
3 buffers = two tiles of lookahead (the dense loop at num_stages=3).
"""
import inspect
import sys

import triton
from triton.backends.compiler import GPUTarget

from liteattn_triton._kernels.fwd import _attn_fwd


def build(dense, idx_mode=0, write=False, defer=True, desc=True, stages=3, D=128, BN=128, int8=False, persistent=False):
    params = list(inspect.signature(_attn_fwd.fn).parameters)
    ptr = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "Out": "*bf16", "Lse": "*fp32", "Thr": "*fp32",
           "QScale": "*fp32", "KScale": "*fp32", "Count": "*i32", "Index": "*i32", "WBits": "*i32",
           "Votes": "*i32", "Order": "*i32", "qk_scale": "fp32"}
    consts = dict(HEAD_DIM=D, HEAD_DIM_V=D, D_PAD=D, DV_PAD=D, BLOCK_M=128, BLOCK_N=BN, W_PAD=8,
                  DENSE=dense, REVERSE=False, EVEN_M=True, EVEN_N=True, WRITE_BITS=write, USE_INT8=int8,
                  UPCAST=False, DOT_PREC="tf32", USE_DESC=desc, DEFER_VOTE=defer, WARP_SPEC=False,
                  IDX_MODE=idx_mode, PERSISTENT=persistent)
    sig = {}
    for p in params:
        if p in consts:
            sig[p] = "constexpr"
        else:
            sig[p] = ptr.get(p, "i32")
    constexprs = {(params.index(key),): value for key, value in consts.items()}
    src = triton.compiler.ASTSource(fn=_attn_fwd, signature=sig, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, num_stages=stages))


CONFIGS = {
    "dense": dict(dense=True),
    "dense4": dict(dense=True, stages=4),
    "list0": dict(dense=False, idx_mode=0),
    "list0s4": dict(dense=False, idx_mode=0, stages=4),
    "list0s5": dict(dense=False, idx_mode=0, stages=5),
    "list0ws5": dict(dense=False, idx_mode=0, write=True, stages=5),
    "list1": dict(dense=False, idx_mode=1),
    "list2": dict(dense=False, idx_mode=2),
    "list3": dict(dense=False, idx_mode=3),
    "pers5": dict(dense=False, write=True, stages=5, persistent=True),
    "d64s5": dict(dense=False, write=True, stages=5, D=64),
    "d256s3": dict(dense=False, write=True, stages=3, D=256, BN=64),
}

name = sys.argv[1]
k = build(**CONFIGS[name])
open(f"{name}.ttgir", "w").write(k.asm["ttgir"])
open(f"{name}.ptx", "w").write(k.asm["ptx"])
print(name, "ok", k.metadata.shared if hasattr(k.metadata, "shared") else "")
