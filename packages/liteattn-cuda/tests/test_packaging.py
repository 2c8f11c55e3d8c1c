"""The source distribution carries what the kernel build reads: a wheel built from it (``python -m build``, which
builds the sdist first) compiles the kernels from include/ and csrc/."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sdist_holds_the_kernel_sources(tmp_path):
    # A copy: building an sdist writes egg-info next to the sources.
    src = tmp_path / "liteattn-cuda"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns("build", "*.so", "__pycache__", "*.egg-info"))
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-c", f"import setuptools.build_meta as b; b.build_sdist({str(out)!r})"],
                   cwd=src, check=True, capture_output=True, env={**os.environ, "LITEATTN_CUDA_BUILD": "0"})
    (sdist,) = out.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        shipped = {Path(*Path(name).parts[1:]).as_posix() for name in tar.getnames() if len(Path(name).parts) > 1}
    needed = {path.relative_to(ROOT).as_posix() for folder in ("include", "csrc") for path in (ROOT / folder).rglob("*")
              if path.is_file() and "__pycache__" not in path.parts}
    assert {"include/liteattn/api.h", "csrc/build_kernels.py", "csrc/ops.cpp"} <= needed
    assert needed <= shipped, f"missing from the sdist: {sorted(needed - shipped)}"
