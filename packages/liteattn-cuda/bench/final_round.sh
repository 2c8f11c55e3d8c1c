#!/bin/bash
# Final GPU-machine round: pip-build the package (the shipped configuration), memcheck + parity + pytest GPU
# tests, timings against FA3 / cuDNN / Flex (own script, then the shared bench/harness.py), and one variant.
OUT="${LITEATTN_RESULTS:-bench/results/cuda-local}"  # where logs and JSON go
mkdir -p "$OUT"
set -o pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/fa3*.whl .whl/einops*.whl .whl/nvidia_cutlass*.whl
export PYTHONPATH=/tmp/pkg:/tmp/site:$PWD/packages/liteattn-core/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
(LITEATTN_CUDA_NVCC_FLAGS=-DLITEATTN_PINGPONG=1 LITEATTN_CUDA_HEAD_DIMS=128 \
   python3 packages/liteattn-cuda/csrc/build_kernels.py /tmp/var/pp > $OUT/cuda-build-pp.log 2>&1) &
VAR=$!
t0=$(date +%s)
python3 -m pip install --no-build-isolation --no-deps --target /tmp/pkg packages/liteattn-cuda > $OUT/cuda-pip-build.log 2>&1
echo "pip rc=$? in $(( $(date +%s) - t0 )) s" | tee -a $OUT/cuda-pip-build.log
ls /tmp/pkg/liteattn_cuda/ /tmp/pkg | head -20
if [ ! -f /tmp/pkg/liteattn_cuda/_liteattn_cuda_C.so ]; then  # packaging failed: measure the kernel anyway
  tail -30 $OUT/cuda-pip-build.log
  python3 packages/liteattn-cuda/csrc/build_kernels.py /tmp/var/main > $OUT/cuda-build-main.log 2>&1
  export LITEATTN_CUDA_LIB=/tmp/var/main/_liteattn_cuda_C.so PYTHONPATH=$PYTHONPATH:$PWD/packages/liteattn-cuda/src
fi
wait $VAR
timeout 100 compute-sanitizer --tool memcheck python3 packages/liteattn-cuda/bench/memcheck_small.py 2>&1 | tail -5 | tee $OUT/cuda-memcheck.log
(cd packages/liteattn-cuda/tests && timeout 120 python3 -m pytest -q -p no:cacheprovider test_gpu.py test_backend_cpu.py 2>&1 | tail -4) | tee $OUT/cuda-pytest.log
timeout 330 python3 packages/liteattn-cuda/bench/gpu_check.py --out $OUT --tag cuda-final 2>&1 | tee $OUT/cuda-final.log | grep -v "^parity"
LITEATTN_CUDA_LIB=/tmp/var/pp/_liteattn_cuda_C.so timeout 60 python3 packages/liteattn-cuda/bench/gpu_check.py --out $OUT \
  --tag cuda-pingpong --no-parity --no-flex --shapes 12,32760,128 --sparsities 0.5 2>&1 | tail -1
timeout 150 python3 bench/harness.py --engines cuda,fa3,flex --shapes "1x12x32760x128" --sparsities 0,0.5,0.9 \
  --masks random --no-check --no-progress --out $OUT/harness 2>&1 | tail -15 | tee $OUT/cuda-harness.log
