"""Build hook: compile the sm_90a kernels with nvcc + ninja (csrc/build_kernels.py) into the package.

LITEATTN_CUDA_BUILD=0 skips compilation and installs the pure-Python package (its backend then reports
the missing extension through ``unavailable_reason``).
"""

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution

ROOT = Path(__file__).resolve().parent
BUILD_KERNELS = os.environ.get("LITEATTN_CUDA_BUILD", "1") != "0"


class BuildPyWithKernels(build_py):
    def run(self):
        super().run()
        if not BUILD_KERNELS:
            return
        sys.path.insert(0, str(ROOT / "csrc"))
        import build_kernels

        lib = build_kernels.build(ROOT / "build" / "ninja")
        # An editable install imports from src/, so the library goes there instead of into build_lib.
        package_dir = ROOT / "src" if getattr(self, "editable_mode", False) else Path(self.build_lib)
        dest = package_dir / "liteattn_cuda" / lib.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)


class KernelDistribution(Distribution):
    def has_ext_modules(self):  # platform wheel tag when it carries the compiled library
        return BUILD_KERNELS


setup(cmdclass={"build_py": BuildPyWithKernels}, distclass=KernelDistribution)
