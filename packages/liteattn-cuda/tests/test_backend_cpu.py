"""CPU tests: capabilities, reasons, argument checks and library discovery (no GPU needed)."""

import math
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

import liteattn_cuda
from liteattn.backend import AttentionCall
from liteattn.tiles import default_tile_shape
from liteattn_cuda import CudaBackend, _ops
from liteattn_cuda.backend import DENSE_KERNEL_HEAD_DIMS


def make_call(D=128, dtype=torch.bfloat16, block=None, Dv=None, **kw):
    q = torch.randn(1, 130, 4, D, dtype=dtype)
    k = torch.randn(1, 200, 2, D, dtype=dtype)
    v = torch.randn(1, 200, 2, Dv or D, dtype=dtype)
    bm, bn = block or default_tile_shape(D)
    th = torch.zeros(4)
    return AttentionCall(q, k, v, 1 / math.sqrt(D), th, bm, bn, **kw)


def test_registered_entry_point():
    eps = {e.name: e for e in entry_points(group="liteattn.backends")}
    assert eps["cuda"].value == "liteattn_cuda:CudaBackend"
    backend = eps["cuda"].load()()
    assert backend.name == "cuda" and backend.priority == 30


def test_capabilities():
    caps = CudaBackend().capabilities()
    assert caps.devices == frozenset({"cuda"})
    assert caps.dtypes == frozenset({torch.float16, torch.bfloat16})
    assert caps.head_dims == frozenset({64, 128, 256})
    assert caps.int8 is True  # use_int8 at head dims 64 and 128
    assert caps.writes_state is True  # the skip test runs in the kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answer")
def test_unavailable_without_cuda():
    assert CudaBackend().unavailable_reason() == "no CUDA device"
    assert liteattn_cuda.unavailable_reason() == "no CUDA device"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"use_int8": True, "D": 256, "block": (128, 64)}, "int8"),
        ({"use_int8": True, "D": 128}, "CUDA device"),  # int8 at D=128 is supported: only the device is wrong
        ({"use_int8": True, "D": 64}, "CUDA device"),
        ({"dtype": torch.float32}, "dtype"),
        ({"D": 96}, "head dim 96"),
        ({"D": 128, "Dv": 64}, "v head dim"),
        ({"D": 128, "block": (128, 64)}, "tile shape"),
        ({"D": 256, "block": (128, 128)}, "tile shape"),
        ({"D": 64, "block": (128, 128)}, "tile shape"),
        ({"D": 128, "block": (64, 128)}, "CUDA device"),  # 64-row skip tiles at D=128 are built too
        ({"D": 128, "block": (64, 128), "use_int8": True}, "with int8 Q/K"),  # but not for int8 Q/K
        ({"D": 64}, "CUDA device"),  # everything else fine: only the device is wrong on CPU
    ],
)
def test_unsupported_reasons(kwargs, needle):
    reason = CudaBackend().unsupported_reason(make_call(**kwargs))
    assert reason is not None and needle in reason, reason


def test_skip_state_rows_accepted_until_too_long():
    backend = CudaBackend()
    call = make_call(write_bits=torch.zeros(1, 4, 2, 1, dtype=torch.int32))
    assert "CUDA device" in backend.unsupported_reason(call)  # only the device is wrong here
    q = torch.randn(1, 128, 1, 64, dtype=torch.bfloat16)
    k = torch.empty(1, 8193 * 128, 1, 64, dtype=torch.bfloat16)  # 8193 key tiles: 257 words
    long_rows = torch.zeros(1, 1, 1, 257, dtype=torch.int32)
    gaps = torch.empty(1, 1, 1, 8193)
    # Every call that runs the skip-state kernel lists a row's kept tiles in shared memory.
    for extra in ({"write_bits": long_rows}, {"compute_bits": long_rows}, {"tile_gaps": gaps}, {"use_int8": True}):
        long_call = AttentionCall(q, k, k, 0.125, torch.zeros(1), 64, 128, **extra)
        assert "8192 key tiles" in backend.unsupported_reason(long_call)
    dense_call = AttentionCall(q, k, k, 0.125, torch.zeros(1), 64, 128)  # the dense kernel: any length
    assert "key tiles" not in backend.unsupported_reason(dense_call)
    # Head dim 256 has no dense kernel of its own: its dense calls run the skip-state kernel (64-key tiles).
    q256 = torch.empty(1, 1, 1, 256, dtype=torch.bfloat16).expand(1, 128, 1, 256)
    k256 = torch.empty(1, 1, 1, 256, dtype=torch.bfloat16).expand(1, 8193 * 64, 1, 256)
    dense_256 = AttentionCall(q256, k256, k256, 0.0625, torch.zeros(1), 128, 64)
    assert "8192 key tiles" in backend.unsupported_reason(dense_256)


def test_dense_kernel_head_dims_match_the_kernel_traits():
    traits = (Path(__file__).parents[1] / "include" / "liteattn" / "kernel_traits.cuh").read_text()
    own_geometry = {int(d) for d in re.findall(r"template <> struct DenseGeometry<(\d+)>", traits)}
    assert own_geometry == set(DENSE_KERNEL_HEAD_DIMS)


def test_missing_library_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("LITEATTN_CUDA_LIB", str(tmp_path / "nope.so"))
    monkeypatch.setattr(_ops, "_loaded", None)
    reason = _ops.load()
    assert reason is not None and "not built" in reason
    call = make_call()
    with pytest.raises(RuntimeError, match="not built"):
        _ops.fwd(call.q, call.k, call.v, torch.empty_like(call.q), torch.empty(1, 4, 130), None, 1.0, 128, 128, False)
    monkeypatch.setattr(_ops, "_loaded", None)


def test_int8_reason_names_head_dims():
    reason = CudaBackend().unsupported_reason(make_call(D=256, block=(128, 64), use_int8=True))
    assert "[64, 128]" in reason and "256" in reason


def test_int8_dispatch_and_head_dims(monkeypatch):
    """forward() with use_int8 quantises through quantize_qk and runs fwd_int8 (never fwd), passing the scales,
    bits and skip-test staging through; without it, only fwd runs."""
    from liteattn_cuda import backend as backend_mod

    calls = []

    def fake_quant(q, k, bm, bn):
        calls.append(("quantize_qk", bm, bn))
        return (torch.zeros(q.shape, dtype=torch.int8), torch.zeros(k.shape, dtype=torch.int8),
                torch.ones(q.shape[0], q.shape[2], -(-q.shape[1] // bm)),
                torch.ones(k.shape[0], k.shape[2], -(-k.shape[1] // bn)))

    def fake_fwd_int8(q8, k8, v, out, lse, qs, ks, bits, scale, bm, bn, rev, wb=None, th=None, gaps=None, skipped=None):
        assert q8.dtype == torch.int8 and k8.dtype == torch.int8 and qs.shape == (1, 4, 2) and ks.shape == (1, 2, 2)
        calls.append(("fwd_int8", wb is not None, th is not None))

    def fake_fwd(*a, **kw):
        calls.append(("fwd",))

    monkeypatch.setattr(backend_mod._ops, "quantize_qk", fake_quant)
    monkeypatch.setattr(backend_mod._ops, "fwd_int8", fake_fwd_int8)
    monkeypatch.setattr(backend_mod._ops, "fwd", fake_fwd)
    backend = CudaBackend()
    backend.forward(make_call(use_int8=True))
    assert calls == [("quantize_qk", 128, 128), ("fwd_int8", False, False)]
    calls.clear()
    wb = torch.zeros(1, 4, 2, 1, dtype=torch.int32)
    backend.forward(make_call(use_int8=True, write_bits=wb))
    assert calls == [("quantize_qk", 128, 128), ("fwd_int8", True, True)]
    calls.clear()
    backend.forward(make_call(D=64, use_int8=False))
    assert calls == [("fwd",)]


def test_int8_head_dims_match_build():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "csrc"))
    import build_kernels

    from liteattn_cuda.backend import HEAD_DIMS, INT8_HEAD_DIMS

    assert INT8_HEAD_DIMS == frozenset(build_kernels.INT8_HEAD_DIMS)
    assert HEAD_DIMS == frozenset(build_kernels.HEAD_DIMS)
