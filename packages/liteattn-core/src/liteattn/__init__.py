"""liteattn: attention that skips the key tiles a diffusion transformer's previous step found negligible."""

from .backend import AttentionCall, Backend, Capabilities
from .dispatch import BackendUnavailableError, available_backends, get_backend
from .functional import lite_attention
from .merge import merge_attention
from .module import LiteAttention, SeqParallelLiteAttention
from .skip_state import SkipState, pack_keep_mask, unpack_keep_mask
from .tiles import default_tile_shape

__version__ = "0.1.0"

__all__ = [
    "AttentionCall",
    "Backend",
    "BackendUnavailableError",
    "Capabilities",
    "LiteAttention",
    "SeqParallelLiteAttention",
    "SkipState",
    "available_backends",
    "default_tile_shape",
    "get_backend",
    "lite_attention",
    "merge_attention",
    "pack_keep_mask",
    "unpack_keep_mask",
]
