#!/bin/bash
# One GPU-machine round of kernel development, everything in one call:
#   bash packages/liteattn-cuda/bench/round.sh "<variants>" "<gpu_check args>"
# A variant is NAME:FLAGS:DIMS (FLAGS: extra nvcc flags joined by '+', DIMS: head dims like 128,64), built here
# with nvcc while the Triton A/B runs ($TRITON_AB=1). The first variant then gets memcheck + racecheck on a small
# multi-step run, parity and the GPU tests; every variant is timed with gpu_check.py; $NCU=1 profiles the first
# variant and FA3 once each with Nsight Compute at $NCU_SHAPE.
OUT="${LITEATTN_RESULTS:-bench/results/cuda-local}"  # where logs and JSON go
mkdir -p "$OUT"
set -o pipefail
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/fa3*.whl .whl/einops*.whl .whl/nvidia_cutlass*.whl
export PYTHONPATH=/tmp/site:$PWD/packages/liteattn-core/src:$PWD/packages/liteattn-cuda/src:$PWD/packages/liteattn-triton/src
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
nvcc --version | tail -1 | tee -a $OUT/gpu.txt
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a $OUT/gpu.txt
pids=""
for spec in $1; do
  IFS=: read -r name flags dims <<< "$spec"
  (LITEATTN_CUDA_NVCC_FLAGS="${flags//+/ }" LITEATTN_CUDA_HEAD_DIMS=$dims \
     python3 packages/liteattn-cuda/csrc/build_kernels.py /tmp/var/$name > $OUT/cuda-build-$name.log 2>&1) &
  pids="$pids $!"
done
if [ -n "$TRITON_AB" ]; then  # GPU work while the CPUs build; nothing else touches the GPU meanwhile
  timeout 240 python3 packages/liteattn-triton/bench/tune_and_bench.py --out $OUT/triton --ab-only 2>&1 \
    | tee $OUT/triton-ab.log | tail -25
fi
wait $pids
first=1
for spec in $1; do
  IFS=: read -r name flags dims <<< "$spec"
  lib=/tmp/var/$name/_liteattn_cuda_C.so
  [ -f "$lib" ] || { echo "no library for $name"; tail -20 $OUT/cuda-build-$name.log; continue; }
  cat /tmp/var/$name/*.ptxas.log 2>/dev/null | grep -E "registers|spill" | sort | uniq -c | head -4
  export LITEATTN_CUDA_LIB=$lib
  if [ $first = 1 ] && [ -z "$NO_PARITY" ]; then
    for tool in memcheck racecheck; do
      timeout 150 compute-sanitizer --tool $tool python3 packages/liteattn-cuda/bench/memcheck_small.py 2>&1 \
        | tail -4 | tee $OUT/cuda-$name-$tool.log
    done
    timeout 200 python3 packages/liteattn-cuda/bench/gpu_check.py --out $OUT --tag cuda-$name $2 2>&1 \
      | tee $OUT/cuda-$name.log | grep -v "^parity"
    (cd packages/liteattn-cuda/tests && timeout 120 python3 -m pytest -q -p no:cacheprovider test_gpu.py 2>&1 | tail -15) \
      | tee $OUT/cuda-$name-pytest.log
  else
    timeout 120 python3 packages/liteattn-cuda/bench/gpu_check.py --out $OUT --tag cuda-$name --no-parity $2 2>&1 \
      | tee $OUT/cuda-$name.log | tail -2
  fi
  first=0
done
if [ -n "$NCU" ]; then
  IFS=: read -r name flags dims <<< "${1%% *}"
  for engine in cuda fa3; do
    LITEATTN_CUDA_LIB=/tmp/var/$name/_liteattn_cuda_C.so timeout 150 ncu --profile-from-start off --clock-control none \
      --set full --import-source no -f -o $OUT/ncu-$engine python3 packages/liteattn-cuda/bench/ncu_one.py $engine \
      ${NCU_SHAPE:-12,32760,128} > $OUT/ncu-$engine-run.log 2>&1
    ncu -i $OUT/ncu-$engine.ncu-rep --page details > $OUT/ncu-$engine-details.txt 2>&1
    ncu -i $OUT/ncu-$engine.ncu-rep --page source --csv --print-source sass > $OUT/ncu-$engine-sass.csv 2>&1
    grep -E "Duration|Compute \(SM\) Throughput|L2 Cache Throughput|Issue Slots Busy|No Eligible|Registers Per" \
      $OUT/ncu-$engine-details.txt | head -12
  done
fi
# At most a handful of files come back from a remote run: pack everything into one archive.
(cd "$OUT" && tar czf /tmp/round-results.tgz --exclude='*.tgz' . && find . -mindepth 1 -not -name '*.tgz' -delete \
  && mv /tmp/round-results.tgz ./round-results.tgz)
