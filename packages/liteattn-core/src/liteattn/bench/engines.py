"""The engines a benchmark compares, each turned into a zero-argument callable on shared inputs.

Every engine sees the same ``Problem``: q, k, v in (B, S, H, D) and, for sparse runs, a keep mask of
(query tile, key tile) pairs. An engine that cannot run a problem raises :class:`EngineSkipped` with the
reason; the sweep records the reason and goes on.

Engines:

* a liteattn backend by name (``reference``, ``triton``, ``cuda``, ...): dense (no mask) or with the keep
  mask as ``compute_bits``; ``NAME+test`` also runs the skip test and writes the next state (``write_bits``).
* ``fa3``: FlashAttention-3 forward (``fa3_fwd_interface.flash_attn_func``), dense.
* ``cudnn`` / ``flash`` / ``math``: ``torch.nn.functional.scaled_dot_product_attention`` pinned to one SDPA
  backend, dense.
* ``flex``: ``torch.compile(flex_attention)`` dense, or with the ``BlockMask`` of the same keep mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..backend import AttentionCall
from ..skip_state import pack_keep_mask
from ..tiles import num_tiles
from .masks import flex_block_mask

__all__ = ["BASELINES", "Engine", "EngineSkipped", "Problem", "make_engine"]

BASELINES = ("fa3", "cudnn", "flash", "math", "flex")


class EngineSkipped(RuntimeError):
    """An engine cannot run here or cannot run this problem; the message says why."""


@dataclass
class Problem:
    """Inputs shared by every engine of one (shape, sparsity) point."""

    q: torch.Tensor  # (B, Sq, H, D)
    k: torch.Tensor  # (B, Sk, Hkv, D)
    v: torch.Tensor  # (B, Sk, Hkv, Dv)
    keep: torch.Tensor | None  # bool (B, H, q_tiles, k_tiles), None for dense
    block_m: int
    block_n: int
    threshold: float = -10.0

    @property
    def dense(self) -> bool:
        return self.keep is None


class Engine:
    """Base class: ``prepare(problem)`` returns the callable to time (it may warm up or compile)."""

    name: str = ""
    sparse: bool = False  # runs keep masks; dense-only engines run at sparsity 0 only

    def unavailable_reason(self, device: torch.device) -> str | None:
        return None

    def prepare(self, problem: Problem) -> Callable[[], torch.Tensor]:
        raise NotImplementedError


class LiteEngine(Engine):
    """A liteattn backend through :class:`liteattn.backend.AttentionCall`, as ``lite_attention`` builds it."""

    sparse = True

    def __init__(self, backend: str, skip_test: bool = False):
        self.backend = backend
        self.skip_test = skip_test
        self.name = backend + ("+test" if skip_test else "")

    def unavailable_reason(self, device):
        from ..dispatch import BackendUnavailableError, get_backend

        try:
            backend = get_backend(self.backend)
        except (BackendUnavailableError, ValueError) as error:
            return str(error)
        return backend.unavailable_reason()

    def prepare(self, problem):
        from ..dispatch import select_backend

        q = problem.q
        batch, _, heads, _ = q.shape
        thresholds = torch.full((heads,), float(problem.threshold), dtype=torch.float32, device=q.device)
        compute_bits = None if problem.keep is None else pack_keep_mask(problem.keep).contiguous()
        write_bits = None
        if self.skip_test:
            q_tiles = num_tiles(q.shape[1], problem.block_m)
            words = num_tiles(num_tiles(problem.k.shape[1], problem.block_n), 32)
            write_bits = torch.zeros(batch, heads, q_tiles, words, dtype=torch.int32, device=q.device)
        call = AttentionCall(q, problem.k, problem.v, 1.0 / math.sqrt(q.shape[-1]), thresholds, problem.block_m,
                             problem.block_n, compute_bits, write_bits, False, False)
        try:
            backend = select_backend(call, self.backend)
        except Exception as error:
            raise EngineSkipped(str(error)) from error
        return lambda: backend.forward(call)[0]


class FA3Engine(Engine):
    name = "fa3"

    def unavailable_reason(self, device):
        if device.type != "cuda":
            return "FA3 needs a CUDA device"
        try:
            import fa3_fwd_interface  # noqa: F401
        except Exception as error:
            return f"fa3_fwd_interface is not importable ({type(error).__name__}: {error}); pip install fa3-fwd"
        return None

    def prepare(self, problem):
        import fa3_fwd_interface

        q, k, v = problem.q, problem.k, problem.v

        def run():
            out = fa3_fwd_interface.flash_attn_func(q, k, v)
            return out[0] if isinstance(out, tuple) else out

        return run


class SDPAEngine(Engine):
    """``scaled_dot_product_attention`` restricted to one SDPA backend; inputs passed as BHSD views."""

    _BACKENDS = {"cudnn": "CUDNN_ATTENTION", "flash": "FLASH_ATTENTION", "math": "MATH"}

    def __init__(self, name: str):
        self.name = name

    def unavailable_reason(self, device):
        if self.name != "math" and device.type != "cuda":
            return f"SDPA {self.name} needs a CUDA device"
        return None

    def prepare(self, problem):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, self._BACKENDS[self.name])
        qh, kh, vh = (x.transpose(1, 2) for x in (problem.q, problem.k, problem.v))
        gqa = qh.shape[1] != kh.shape[1]

        def run():
            with sdpa_kernel([backend]):
                out = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, enable_gqa=gqa)
            return out.transpose(1, 2)

        return run


class FlexEngine(Engine):
    """``torch.compile(flex_attention)``; sparse problems use the BlockMask of the keep mask."""

    name = "flex"
    sparse = True
    _compiled = None

    def unavailable_reason(self, device):
        try:
            from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
        except Exception as error:
            return f"FlexAttention is not importable ({type(error).__name__}: {error})"
        if device.type != "cuda":
            return "compiled FlexAttention is only timed on CUDA"
        return None

    @classmethod
    def compiled(cls):
        if cls._compiled is None:
            from torch.nn.attention.flex_attention import flex_attention

            # one compilation per shape; never fall back to eager Flex (it materialises the S x S scores)
            for option in ("cache_size_limit", "recompile_limit"):
                if hasattr(torch._dynamo.config, option):
                    setattr(torch._dynamo.config, option, max(64, getattr(torch._dynamo.config, option)))
            cls._compiled = torch.compile(flex_attention, dynamic=False)
        return cls._compiled

    def prepare(self, problem):
        q, k, v = (x.transpose(1, 2) for x in (problem.q, problem.k, problem.v))
        block_mask = None
        if problem.keep is not None:
            block_mask = flex_block_mask(problem.keep, q.shape[2], k.shape[2], problem.block_m, problem.block_n)
        gqa = q.shape[1] != k.shape[1]
        flex = self.compiled()
        return lambda: flex(q, k, v, block_mask=block_mask, enable_gqa=gqa).transpose(1, 2)


def make_engine(name: str) -> Engine:
    """The engine called ``name``: a baseline from :data:`BASELINES`, else a liteattn backend
    (``NAME`` or ``NAME+test``)."""
    if name == "fa3":
        return FA3Engine()
    if name in SDPAEngine._BACKENDS:
        return SDPAEngine(name)
    if name == "flex":
        return FlexEngine()
    backend, _, suffix = name.partition("+")
    if suffix not in ("", "test") or not backend:
        raise ValueError(f"engine {name!r}: expected one of {BASELINES}, a liteattn backend name, or NAME+test")
    return LiteEngine(backend, skip_test=suffix == "test")

