"""Compile-side tests on a CPU machine: one sm_90a instantiation to SASS, and the stable-ABI op library.

Skipped when nvcc, the nvidia-cutlass headers or cuobjdump (nvidia-cuda-cuobjdump wheel) are missing.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "csrc"))
import build_kernels  # noqa: E402


def _cutlass_include():
    try:
        inc = build_kernels.cutlass_include()
    except RuntimeError:
        return None
    return inc if (inc / "cute" / "tensor.hpp").exists() else None


def _nvcc():
    try:
        return build_kernels.find_nvcc()
    except RuntimeError:
        return None


def _nvidia_tool(name: str) -> str | None:
    """A binary from the nvidia-cuda-* wheels (nvidia/<pkg>/bin/<name>), located through the import system."""
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations if spec else []) or []:
        hits = sorted(glob.glob(os.path.join(base, "**", "bin", name), recursive=True))
        if hits:
            return hits[0]
    return None


INT8_WGMMA = "IGMMA.64x128x32.S8.S8"  # how cuobjdump prints the s8 x s8 -> s32 QK^T wgmma

needs_nvcc = pytest.mark.skipif(_nvcc() is None or _cutlass_include() is None,
                                reason="needs nvcc and the nvidia-cutlass headers")


@needs_nvcc
@pytest.mark.skipif(_nvidia_tool("cuobjdump") is None, reason="needs the nvidia-cuda-cuobjdump wheel")
def test_sm90a_instantiation_uses_wgmma_and_tma(tmp_path):
    """The bf16 D=128 instantiation and its INT8 Q/K sibling, compiled side by side (two nvcc processes)."""
    flags = [f for f in build_kernels.NVCC_FLAGS if f not in ("-Xcompiler", "-fPIC")]
    jobs = {}
    for name, text in (("fwd", build_kernels.instantiation_source("bf16", 128)),
                       ("fwd_int8", build_kernels.instantiation_source_int8("bf16", 128))):
        src = tmp_path / f"{name}_bf16_hdim128_sm90.cu"
        src.write_text(text)
        cubin = tmp_path / f"{name}.cubin"
        cmd = [build_kernels.find_nvcc(), *flags, f"-I{ROOT / 'include'}", f"-I{_cutlass_include()}", "-cubin",
               str(src), "-o", str(cubin)]
        jobs[name] = (cubin, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    env = dict(os.environ)
    nvdisasm = _nvidia_tool("nvdisasm")
    if nvdisasm:  # cuobjdump -sass calls nvdisasm from PATH
        env["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + env.get("PATH", "")
    texts = {}
    for name, (cubin, proc) in jobs.items():
        out, err = proc.communicate()
        assert proc.returncode == 0, err[-3000:]
        report = out + err
        assert "0 bytes spill stores" in report, report  # consumer fragments stay in registers
        sass = subprocess.run([_nvidia_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              env=env)
        assert sass.returncode == 0, sass.stderr
        texts[name] = sass.stdout
    for text in texts.values():
        assert "UTMALDG" in text                   # TMA loads of Q/K/V
        assert "USETMAXREG" in text                # producer/consumer register split took effect
        assert "LDL" not in text and "STL" not in text
    assert "HGMMA.64x128x16.F32.BF16" in texts["fwd"]  # wgmma for QK^T and PV
    # INT8: QK^T as an s8 x s8 -> s32 wgmma, PV still a bf16 one.
    assert INT8_WGMMA in texts["fwd_int8"], [ln for ln in texts["fwd_int8"].splitlines() if "GMMA" in ln][:4]
    assert "HGMMA.64x128x16.F32.BF16" in texts["fwd_int8"]


def test_generated_sources():
    inst = build_kernels.instantiation_source("fp16", 64)
    assert "run_fwd_hdim<cutlass::half_t, 64>" in inst
    disp = build_kernels.dispatch_source((64, 128))
    assert "case 64:" in disp and "case 128:" in disp and "case 256:" not in disp
    inst8 = build_kernels.instantiation_source_int8("bf16", 128)
    assert "launch_int8.cuh" in inst8 and "run_fwd_int8_hdim<cutlass::bfloat16_t, 128>" in inst8
    assert "run_fwd_int8_hdim<cutlass::half_t, 64>(args, sc, s)" in disp
    assert "workspace_floats_hdim<cutlass::bfloat16_t, 128>(args)" in disp
    assert "workspace_floats_hdim<cutlass::half_t, 128>" in build_kernels.instantiation_source("fp16", 128)
    disp256 = build_kernels.dispatch_source((256,))
    assert "run_fwd_int8_hdim<" not in disp256.split("fwd_int8_sm90(")[1]  # no int8 instantiation at 256


STUB_KERNELS = ('#include "liteattn/api.h"\nnamespace liteattn {\n'
                "int fwd_sm90(FwdArgs const&, void*) { return -1; }\n"
                "int64_t fwd_sm90_workspace_floats(FwdArgs const&) { return 0; }\n"
                "int const* supported_head_dims() { static int d[] = {0}; return d; }\n"
                "int fwd_int8_sm90(FwdArgs const&, Int8Scales const&, void*) { return -1; }\n"
                "int const* supported_int8_head_dims() { static int d[] = {0}; return d; }\n"
                "int quantize_qk_sm90(QuantArgs const&, void*) { return -1; }\n}\n")


@pytest.fixture(scope="module")
def stub_library(tmp_path_factory) -> Path:
    """ops.cpp built against the installed torch with stub kernels: the op library without any GPU code."""
    if subprocess.run(["which", "c++"], capture_output=True).returncode != 0:
        pytest.skip("needs c++")
    tmp = tmp_path_factory.mktemp("stub")
    stub = tmp / "stub.cpp"
    stub.write_text(STUB_KERNELS)
    torch_dir = Path(torch.__file__).parent
    lib = tmp / "_stub_ops.so"
    cmd = ["c++", *build_kernels.CXX_FLAGS, "-shared", f"-I{ROOT / 'include'}", f"-I{torch_dir / 'include'}",
           str(ROOT / "csrc" / "ops.cpp"), str(stub), "-o", str(lib), f"-L{torch_dir / 'lib'}",
           "-ltorch", "-ltorch_cpu", "-lc10"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    return lib


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter: a library loaded there registers its ops in that process only, so the
    tests that run after this file (the GPU tests, which load the real library) find the namespace free."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_stable_abi_op_registers_and_checks(stub_library):
    """The stub library's schemas load and bind, and CPU tensors are refused."""
    code = f"""
import re, torch
torch.ops.load_library({str(stub_library)!r})
q = torch.randn(1, 16, 2, 64, dtype=torch.bfloat16)
q8 = torch.zeros(q.shape, dtype=torch.int8)
scales = torch.ones(1, 2, 1)
calls = {{
    "fwd": lambda: torch.ops.liteattn_cuda.fwd(q, q, q, q.clone(), torch.empty(1, 2, 16), None, None, None, None,
                                               None, 0.125, 128, 128, False, 0),
    "quantize_qk": lambda: torch.ops.liteattn_cuda.quantize_qk(q, q, q8, q8.clone(), scales, scales.clone(),
                                                               torch.empty(1, 2, 1, 64), 128, 128, 0),
    "fwd_int8": lambda: torch.ops.liteattn_cuda.fwd_int8(q8, q8, q, q.clone(), torch.empty(1, 2, 16), scales, scales,
                                                         None, None, None, None, None, 0.125, 128, 128, False, 0),
}}
for name, call in calls.items():
    # The schemas bind (a wrong argument count would fail differently); CPU tensors are then refused.
    try:
        call()
    except (RuntimeError, NotImplementedError) as exc:
        assert re.search(r"must be a CUDA tensor|'CPU' backend", str(exc)), (name, str(exc))
    else:
        raise AssertionError(name + " accepted CPU tensors")
print("refused", *calls)
"""
    res = run_python(code)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "refused fwd quantize_qk fwd_int8" in res.stdout


def test_a_second_copy_of_the_library_is_refused_not_loaded(stub_library, tmp_path):
    """With the ops already registered by one copy, load() reports another copy instead of loading it (which
    would end the process), and the first copy can still be loaded again."""
    second = tmp_path / "_liteattn_cuda_C.so"
    second.write_bytes(stub_library.read_bytes())
    code = f"""
import os
import torch
from liteattn_cuda import _ops
torch.ops.load_library({str(stub_library)!r})
reason = _ops.load()
assert reason is not None and "another library already registered its ops" in reason, reason
assert {str(stub_library)!r} in reason, reason
_ops._loaded = None
os.environ["LITEATTN_CUDA_LIB"] = {str(stub_library)!r}
assert _ops.load() is None  # the copy that registered the ops is ours to use
print("ok")
"""
    res = run_python(code, LITEATTN_CUDA_LIB=str(second))
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert res.stdout.strip() == "ok"
