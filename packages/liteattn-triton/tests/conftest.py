"""Run the Triton kernels through Triton's interpreter on CPU tensors (CI has no GPU).

TRITON_INTERPRET must be set before ``@triton.jit`` wraps the kernels; if another package's tests imported
liteattn_triton first (through the backend entry point), the kernel modules are reloaded here. Tests marked
``gpu`` run the compiled kernels and are skipped without CUDA.
"""

import importlib
import os
import sys

import pytest
import torch

_ON_GPU = torch.cuda.is_available() and os.environ.get("LITEATTN_TRITON_GPU_TESTS", "1") == "1"
if not _ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
    for _name in ("liteattn_triton._kernels.fwd", "liteattn_triton._kernels.quant", "liteattn_triton.attention"):
        if _name in sys.modules:
            importlib.reload(sys.modules[_name])


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: runs compiled Triton kernels on a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "liteattn-triton" not in str(item.fspath):
            continue
        if "gpu" in item.keywords and not _ON_GPU:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
        elif "gpu" not in item.keywords and _ON_GPU:
            item.add_marker(pytest.mark.skip(reason="interpreter test (CPU only)"))
