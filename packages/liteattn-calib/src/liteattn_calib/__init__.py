"""liteattn-calib: per-layer, per-head, per-step skip thresholds from one error budget.

:class:`LiteAttentionRegistry` finds the :class:`liteattn.LiteAttention` modules of a model and runs them
with one constant threshold, a calibration, a threshold file, or dense; it tracks denoising steps (right
under classifier-free guidance), writes and reads the TOML threshold file, and captures diagnostics.
"""

from .calibrate import calibrate_call
from .capture import load_capture
from .fileformat import CalibrationFileError, ThresholdFile, read_file, write_file
from .metrics import per_head_error
from .registry import LiteAttentionRegistry
from .settings import CalibConfig

__version__ = "0.1.0"

__all__ = [
    "CalibConfig",
    "CalibrationFileError",
    "LiteAttentionRegistry",
    "ThresholdFile",
    "calibrate_call",
    "load_capture",
    "per_head_error",
    "read_file",
    "write_file",
]
