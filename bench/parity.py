"""Backend x dtype x head-dim parity matrix against the reference, over a multi-step synthetic video run.

Each backend runs with its own skip state; at every step the reference runs the same inputs from a copy of
that state, so the table separates kernel error (output, LSE) from state drift (tile agreement of the
written states). Prints a table; ``--json`` also writes it. Combinations a backend cannot run are listed as
skipped with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform

import torch

import liteattn
from liteattn.testing import rel_error, tile_agreement, video_qkv

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
HEAD_DIMS = (32, 64, 96, 128, 256)


def run_case(backend: str, dtype: torch.dtype, head_dim: int, grid: tuple[int, int, int], steps: int, device):
    state, errors, lse_errors, agreement, sparsity = liteattn.SkipState(), [], [], [], []
    for step in range(steps):
        q, k, v = video_qkv(1, *grid, heads=4, kv_heads=2, head_dim=head_dim, step=step, num_steps=steps,
                            dtype=dtype, device=device, seed=step)
        ref_state = state.clone()
        out, lse = liteattn.lite_attention(q, k, v, state, threshold=-8.0, backend=backend, return_softmax_lse=True)
        ref, ref_lse = liteattn.lite_attention(q.float(), k.float(), v.float(), ref_state, threshold=-8.0,
                                               backend="reference", return_softmax_lse=True)
        finite = ref_lse > -math.inf
        errors.append(rel_error(out, ref))
        lse_errors.append((lse[finite] - ref_lse[finite]).abs().max().item())
        agreement.append(tile_agreement(state.read_bits, ref_state.read_bits, state.k_tiles))
        sparsity.append(state.last_sparsity)
    return {"max_rel_error": max(errors), "max_lse_error": max(lse_errors), "min_tile_agreement": min(agreement),
            "sparsity_per_step": sparsity}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backends", default=None, help="comma-separated; default: every available backend")
    parser.add_argument("--dtypes", default="fp16,bf16,fp32")
    parser.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    grid = (8, 16, 24) if device == "cuda" else (2, 8, 12)  # frames x height x width tokens
    backends = args.backends.split(",") if args.backends else liteattn.available_backends()
    rows = []
    for backend in backends:
        for dtype_name in args.dtypes.split(","):
            for head_dim in map(int, args.head_dims.split(",")):
                row = {"backend": backend, "dtype": dtype_name, "head_dim": head_dim}
                try:
                    row |= run_case(backend, DTYPES[dtype_name], head_dim, grid, args.steps, device)
                except (liteattn.BackendUnavailableError, ValueError, TypeError) as error:
                    row["skipped"] = str(error)
                rows.append(row)
                print(_format(row), flush=True)
    if args.json:
        meta = {"date": str(datetime.date.today()), "device": torch.cuda.get_device_name() if device == "cuda"
                else platform.processor() or "cpu", "torch": torch.__version__, "tokens": math.prod(grid),
                "steps": args.steps}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
    return 0


def _format(row: dict) -> str:
    head = f"{row['backend']:>9} {row['dtype']:>4} D={row['head_dim']:<3}"
    if "skipped" in row:
        return f"{head}  skipped: {row['skipped']}"
    return (f"{head}  rel.err {row['max_rel_error']:.2e}  lse.err {row['max_lse_error']:.2e}  "
            f"tiles agree >= {row['min_tile_agreement']:.4f}  sparsity "
            + " ".join(f"{s:.2f}" for s in row["sparsity_per_step"]))


if __name__ == "__main__":
    raise SystemExit(main())
