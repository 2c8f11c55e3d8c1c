"""liteattn-cuda: a Hopper (sm_90a) warp-specialised wgmma + TMA block-sparse attention backend.

The backend registers as ``cuda`` under the ``liteattn.backends`` entry-point group; ``CudaBackend`` is the
class core instantiates. The compiled library is optional at import time: ``unavailable_reason()`` says
when it is missing.
"""

from ._ops import fwd, library_path
from .backend import CudaBackend

__all__ = ["CudaBackend", "fwd", "library_path", "unavailable_reason"]


def unavailable_reason() -> str | None:
    """Why the cuda backend cannot run here (no CUDA, not sm_90, extension not built), or None."""
    return CudaBackend().unavailable_reason()
