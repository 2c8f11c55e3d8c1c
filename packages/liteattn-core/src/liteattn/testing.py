"""Helpers for the parity tests of every backend, and a synthetic video-like attention workload.

Parity rule (FlashAttention-3's): a kernel in fp16/bf16 may be at most ``PARITY_FACTOR`` times as far from
the float64 golden result as PyTorch computing the same attention in that low precision, plus a small
absolute slack for outputs that are exactly representable.
"""

from __future__ import annotations

import math

import torch

from .skip_state import unpack_keep_mask

__all__ = [
    "PARITY_FACTOR",
    "assert_lse_close",
    "assert_parity",
    "random_keep_mask",
    "rel_error",
    "tile_agreement",
    "video_qkv",
]

PARITY_FACTOR = 2.0  # FA3's budget: kernel error <= 2x the low-precision PyTorch error
_ATOL = {torch.float16: 1e-3, torch.bfloat16: 8e-3, torch.float32: 1e-5, torch.float64: 1e-10}


def rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """||x - ref|| / ||ref|| in float64 (0 when both are 0)."""
    diff = (x.double() - ref.double()).norm().item()
    norm = ref.double().norm().item()
    return diff / norm if norm > 0 else diff


def assert_parity(name: str, out: torch.Tensor, low_precision_ref: torch.Tensor, golden: torch.Tensor,
                  factor: float = PARITY_FACTOR, atol: float | None = None) -> None:
    """Fail unless max|out - golden| <= factor * max|low_precision_ref - golden| + atol."""
    atol = _ATOL[out.dtype] if atol is None else atol
    err = (out.double() - golden.double()).abs().max().item()
    budget = factor * (low_precision_ref.double() - golden.double()).abs().max().item() + atol
    assert err <= budget, (f"{name}: max error {err:.3e} exceeds {factor} x low-precision PyTorch error + {atol:g} "
                           f"= {budget:.3e} (rel. error {rel_error(out, golden):.3e})")


def assert_lse_close(lse: torch.Tensor, ref: torch.Tensor, atol: float = 1e-3) -> None:
    """LSE agrees where finite, and is -inf exactly where the reference is."""
    ref_empty, got_empty = ref == -math.inf, lse == -math.inf
    assert torch.equal(ref_empty, got_empty), (f"lse: -inf at {int(got_empty.sum())} rows, "
                                               f"expected {int(ref_empty.sum())}")
    assert not torch.isnan(lse).any(), "lse: NaN"
    err = (lse[~ref_empty].double() - ref[~ref_empty].double()).abs().max().item() if (~ref_empty).any() else 0.0
    assert err <= atol, f"lse: max error {err:.3e} > {atol:g}"


def tile_agreement(bits: torch.Tensor, ref_bits: torch.Tensor, num_k_tiles: int) -> float:
    """Fraction of (query tile, key tile) keep decisions on which two packed states agree."""
    return (unpack_keep_mask(bits, num_k_tiles) == unpack_keep_mask(ref_bits, num_k_tiles)).float().mean().item()


def random_keep_mask(batch: int, heads: int, q_tiles: int, k_tiles: int, sparsity: float, *, seed: int = 0,
                     keep_diagonal: bool = True, device="cpu") -> torch.Tensor:
    """A bool (B, H, q_tiles, k_tiles) mask with ``sparsity`` of its tiles dropped at random per query tile
    (the diagonal kept, so that every row computes at least one tile)."""
    generator = torch.Generator().manual_seed(seed)
    keep_per_row = max(1, round((1.0 - sparsity) * k_tiles))
    priority = torch.rand(batch, heads, q_tiles, k_tiles, generator=generator)
    if keep_diagonal:  # the diagonal tile ranks first in every row
        priority[..., torch.arange(q_tiles), torch.arange(q_tiles) * k_tiles // max(q_tiles, 1)] = -1.0
    rank = priority.argsort(dim=-1).argsort(dim=-1)
    mask = rank < keep_per_row
    return mask.to(device)


def _position_features(frames: int, height: int, width: int, dim: int) -> torch.Tensor:
    """(frames*height*width, dim) Fourier features whose dot products fall off with 3-D distance."""
    grids = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([g.flatten().float() for g in grids], dim=-1)  # (S, 3)
    per_axis = max(1, dim // 6)
    extents = torch.tensor([frames, height, width], dtype=torch.float32)
    features = []
    for axis in range(3):
        freqs = math.pi / extents[axis] * torch.logspace(0, math.log10(max(2.0, extents[axis].item())), per_axis)
        angles = coords[:, axis, None] * freqs
        features += [torch.cos(angles), torch.sin(angles)]
    feats = torch.cat(features, dim=-1)[:, :dim]
    return torch.nn.functional.pad(feats, (0, dim - feats.shape[-1])) / math.sqrt(feats.shape[-1] / 2)


def video_qkv(batch: int = 1, frames: int = 4, height: int = 8, width: int = 8, heads: int = 2,
              head_dim: int = 64, *, kv_heads: int | None = None, step: int = 0, num_steps: int = 10,
              dtype: torch.dtype = torch.float32, device="cpu", seed: int = 0):
    """Synthetic Q, K, V (B, frames*height*width, H, D) with the structure of video self-attention.

    Tokens attend to their 3-D neighbourhood: q.k is a sharpness times a kernel that decays with distance in
    (frame, y, x), plus noise. Head h is sharper than head h-1, and every head sharpens as ``step`` goes from 0
    to ``num_steps``, like attention late in denoising, so sparsity grows with the step and differs by head.
    """
    kv_heads = kv_heads or heads
    generator = torch.Generator().manual_seed(seed)
    positions = _position_features(frames, height, width, head_dim)  # (S, D)
    seq = positions.shape[0]
    progress = min(max(step / max(num_steps, 1), 0.0), 1.0)
    sharpness = torch.linspace(4.0, 12.0, heads) * (1.0 + 2.0 * progress) * math.sqrt(head_dim)  # per head
    noise = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    q = positions[None, :, None, :] * sharpness[None, None, :, None].sqrt() + 0.3 * noise(batch, seq, heads, head_dim)
    k_base = positions[None, :, None, :].expand(batch, seq, kv_heads, head_dim)
    k_sharp = sharpness.view(kv_heads, heads // kv_heads).mean(-1)[None, None, :, None].sqrt()
    k = k_base * k_sharp + 0.3 * noise(batch, seq, kv_heads, head_dim)
    v = noise(batch, seq, kv_heads, head_dim)
    return tuple(x.to(dtype=dtype, device=device).contiguous() for x in (q, k, v))
