#!/bin/bash
# One GPU-machine round, everything in one call:
#   bash packages/liteattn-cuda/bench/gpu_round.sh "<variants>" "<gpu_check args>"
# A variant is NAME (a carried build in .cudabuild/NAME/) or NAME:FLAGS:DIMS, built here with nvcc
# (FLAGS: extra nvcc flags joined by '+', DIMS: head dims like 64,128). Also builds the package with pip
# in the background (tests the packaging on this machine's cores). The first variant gets memcheck + parity.
OUT="${LITEATTN_RESULTS:-bench/results/cuda-local}"  # where logs and JSON go
mkdir -p "$OUT"
set -o pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/fa3*.whl .whl/einops*.whl .whl/nvidia_cutlass*.whl
export PYTHONPATH=/tmp/site:$PWD/packages/liteattn-core/src:$PWD/packages/liteattn-cuda/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
nvcc --version | tail -1
pids=""
for spec in $1; do
  IFS=: read -r name flags dims <<< "$spec"
  if [ -n "$dims" ]; then
    (LITEATTN_CUDA_NVCC_FLAGS="${flags//+/ }" LITEATTN_CUDA_HEAD_DIMS=$dims \
       python3 packages/liteattn-cuda/csrc/build_kernels.py /tmp/var/$name > $OUT/cuda-build-$name.log 2>&1) &
    pids="$pids $!"
  fi
done
if [ -n "$PIP_BUILD" ]; then
  (python3 -m pip install --no-build-isolation --no-deps --target /tmp/pkg packages/liteattn-cuda > $OUT/cuda-pip-build.log 2>&1; echo "pip rc=$?" >> $OUT/cuda-pip-build.log) &
  PIP=$!
fi
[ -n "$pids" ] && wait $pids
first=1
for spec in $1; do
  IFS=: read -r name flags dims <<< "$spec"
  if [ -n "$dims" ]; then lib=/tmp/var/$name/_liteattn_cuda_C.so; else lib=$PWD/.cudabuild/$name/_liteattn_cuda_C.so; fi
  [ -f "$lib" ] || { echo "no library for $name"; tail -20 $OUT/cuda-build-$name.log; continue; }
  export LITEATTN_CUDA_LIB=$lib
  if [ $first = 1 ] && [ -z "$NO_PARITY" ]; then
    timeout 100 compute-sanitizer --tool memcheck python3 packages/liteattn-cuda/bench/memcheck_small.py 2>&1 | tail -6 | tee $OUT/cuda-memcheck.log
    timeout 300 python3 packages/liteattn-cuda/bench/gpu_check.py --out $OUT --tag cuda-$name $2 2>&1 | tee $OUT/cuda-$name.log | grep -v "^parity"
    (cd packages/liteattn-cuda/tests && timeout 120 python3 -m pytest -q -p no:cacheprovider test_gpu.py 2>&1 | tail -15) | tee $OUT/cuda-$name-pytest.log
  else
    timeout 300 python3 packages/liteattn-cuda/bench/gpu_check.py --out $OUT --tag cuda-$name --no-parity $2 2>&1 | tee $OUT/cuda-$name.log | grep -v "^parity"
  fi
  first=0
done
if [ -n "$PIP_BUILD" ]; then wait $PIP; tail -3 $OUT/cuda-pip-build.log; ls /tmp/pkg/liteattn_cuda/; fi
