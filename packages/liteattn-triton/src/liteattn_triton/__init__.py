"""liteattn's Triton backend: skip attention on any CUDA GPU Triton supports, tuned on Hopper."""

from .attention import TritonBackend, triton_forward

__all__ = ["TritonBackend", "triton_forward"]
__version__ = "0.1.0"
