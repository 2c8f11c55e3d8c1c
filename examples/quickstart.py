"""Simulate a few denoising steps of one video self-attention layer and watch liteattn skip work.

Runs on the reference backend without a GPU (and on the fastest installed backend with one). Each step's
Q/K/V come from liteattn's synthetic video workload, whose attention sharpens as denoising progresses; the
LiteAttention module carries its skip state from one step to the next.
"""

import argparse

import torch

import liteattn
from liteattn.testing import rel_error, video_qkv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=-10.0, help="log2 units, <= 0")
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    attention = liteattn.LiteAttention(threshold=args.threshold)
    print(f"backends here: {liteattn.available_backends()}; {args.frames}x{args.height}x{args.width} tokens, "
          f"threshold {args.threshold}")
    print("step  skipped tiles  rel. error vs dense")
    for step in range(args.steps):
        q, k, v = video_qkv(frames=args.frames, height=args.height, width=args.width, heads=4, head_dim=64,
                            step=step, num_steps=args.steps, dtype=dtype, device=device)
        out = attention(q, k, v)
        dense = liteattn.lite_attention(q, k, v)
        print(f"{step:>4}  {attention.last_sparsity:>12.1%}  {rel_error(out, dense):>19.2e}")
    print(attention.skip_state)


if __name__ == "__main__":
    main()
