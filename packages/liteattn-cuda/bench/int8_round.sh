#!/bin/bash
# INT8 Q/K on the GPU machine, in one call from the repository root:
#   bash packages/liteattn-cuda/bench/int8_round.sh
# Builds the whole library (every head dim: test_gpu.py also runs D=256) into /tmp/int8build, checks the
# SASS of the INT8 instantiations, runs the CPU and GPU tests and the INT8 vs 16-bit timings.
# CuTe headers: $LITEATTN_CUTLASS_INCLUDE or the nvidia-cutlass wheel (see csrc/build_kernels.py).
OUT="${LITEATTN_RESULTS:-bench/results/cuda-int8}"
mkdir -p "$OUT"
set -o pipefail
if [ -z "$LITEATTN_CUTLASS_INCLUDE" ] && ls .whl/nvidia_cutlass*.whl > /dev/null 2>&1; then  # as round.sh does
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/nvidia_cutlass*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/packages/liteattn-core/src:$PWD/packages/liteattn-cuda/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
BUILD=${INT8_BUILD_DIR:-/tmp/int8build}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
time python3 packages/liteattn-cuda/csrc/build_kernels.py $BUILD > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
grep -h -A3 "fwd_kernel_sm90_int8" $BUILD/*.ptxas.log | grep -E "registers|spill" | sort | uniq -c | tee $OUT/ptxas-int8.txt
for o in $BUILD/fwd_int8_*_sm90.o; do
  cuobjdump -sass $o > $OUT/$(basename $o .o).sass 2>&1
  echo "$(basename $o): $(grep -cE 'HGMMA.*S8|IGMMA|IMMA' $OUT/$(basename $o .o).sass) int8 wgmma," \
       "$(grep -c UTMALDG $OUT/$(basename $o .o).sass) UTMALDG, $(grep -cE '\bLDL|\bSTL' $OUT/$(basename $o .o).sass) LDL/STL;" \
       "e.g. $(grep -oE '(HGMMA|IGMMA)[.A-Z0-9x]*S8[.A-Z0-9x]*' $OUT/$(basename $o .o).sass | sort -u | head -2 | tr '\n' ' ')"
done | tee $OUT/sass-int8.txt
export LITEATTN_CUDA_LIB=$BUILD/_liteattn_cuda_C.so
(cd packages/liteattn-cuda/tests && timeout 500 python3 -m pytest -q -p no:cacheprovider test_backend_cpu.py test_gpu.py 2>&1 | tail -30) | tee $OUT/pytest.log
timeout 300 python3 packages/liteattn-cuda/bench/int8_check.py --out $OUT 2>&1 | tee $OUT/int8-check.log
