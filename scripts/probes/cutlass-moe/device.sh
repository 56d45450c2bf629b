#!/bin/bash
# What the device run does (issue 16 prototype): build (the generated GEMMs in one unit), run the
# harness's checks, the same under compute-sanitizer memcheck (MEMCHECK=0 skips it), then its
# timings (`harness bench`).
cd /tmp/w
NV=/tmp/w/src/flashinfer/csrc/nv_internal/tensorrt_llm/kernels
export EXTRA_UNITS="$NV/cutlass_kernels/fp8_blockscale_gemm/fp8_blockscale_gemm.cu
$NV/lora/lora.cpp" EXTRA_FLAGS="-DFLASHINFER_RS_MOE_TMA_WS_ONLY -DENABLE_FP8_BLOCK_SCALE"
s=$(date +%s); ALLGEN=1 /usr/bin/time -f "build (all generated in one unit): user %U s sys %S s wall %e s" bash src/proto/build.sh /tmp/w/src 16 > $OUT/build-allgen.log 2>&1; echo "wall $(( $(date +%s) - s )) s" >> $OUT/build-allgen.log
grep -E "rc=|undef|user" $OUT/build-allgen.log | sort -t' ' -k3 -n | tail -30
grep -E "PASS|FAIL" $OUT/build-allgen.log | tail -3
if [ "${MEMCHECK:-1}" = 1 ]; then
  timeout 240 /usr/local/cuda/bin/compute-sanitizer --tool memcheck --print-limit 20 ./harness > $OUT/memcheck.log 2>&1
  echo "memcheck rc=$?" >> $OUT/memcheck.log
  tail -5 $OUT/memcheck.log
fi
./harness bench > $OUT/bench.log 2>&1; echo "bench rc=$?" >> $OUT/bench.log
cat $OUT/bench.log
