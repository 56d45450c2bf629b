#!/bin/bash
# Device-side prototype build (issue 16): compile the CUTLASS fused MoE (bf16, sm_90a, FAST_BUILD)
# and the harness, link, run. Usage: bash build.sh <srcroot> <jobs>
set -u
S=$1; J=${2:-16}
FI=$S/flashinfer/csrc
NV=$FI/nv_internal
export PATH=/usr/local/cuda/bin:$PATH
flags="-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a \
 -static-global-template-stub=false -Xcompiler=-fPIC \
 -DCOMPILE_HOPPER_TMA_GEMMS -DCOMPILE_HOPPER_TMA_GROUPED_GEMMS -DENABLE_BF16 -DENABLE_FP8 -DENABLE_FP4 \
 -DUSING_OSS_CUTLASS_MOE_GEMM -DCUTLASS_ENABLE_GDC_FOR_SM90=1 -DFAST_BUILD ${EXTRA_FLAGS:-} \
 -I$NV -I$NV/include -I$NV/tensorrt_llm/cutlass_extensions/include -I$NV/tensorrt_llm/kernels/cutlass_kernels/include \
 -I$NV/tensorrt_llm/kernels/cutlass_kernels -I$FI/fused_moe/cutlass_backend -I$S/cutlass/include -I$S/cutlass-util \
 -I$S/flashinfer/include -I$FI -Xcompiler=-idirafter,$S/compat"
units="$S/proto/harness.cu
$NV/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_gemm_tma_warp_specialized_input.cu
$NV/tensorrt_llm/kernels/cutlass_kernels/moe_gemm/moe_gemm_kernels_bf16_bf16.cu
$NV/tensorrt_llm/kernels/cutlass_kernels/cutlass_heuristic.cpp
$NV/cpp/common/memoryUtils.cu
$NV/cpp/common/envUtils.cpp
$NV/cpp/common/logger.cpp
$NV/cpp/common/stringUtils.cpp
$NV/cpp/common/tllmException.cpp
${EXTRA_UNITS:-}
$(if [ "${ALLGEN:-0}" = 1 ]; then echo $PWD/gen_all.cu; else grep -l '__nv_bfloat16, __nv_bfloat16, __nv_bfloat16' $S/gen/gemm_grouped/90/*.cu; fi)
$(ls $S/gen/gemm_grouped/80/*.cu 2>/dev/null | grep -E "${SM80_FILTER:-^$}")"
mkdir -p obj
# One unit that includes every bf16 x bf16 generated file: the CUTLASS headers are parsed once.
grep -l '__nv_bfloat16, __nv_bfloat16, __nv_bfloat16' $S/gen/gemm_grouped/90/*.cu | sed 's/.*/#include "&"/' > gen_all.cu
echo "$units" | grep -v '^$' | xargs -P $J -I{} bash -c 'f={}; n=$(basename $f); n=${n%.*}; x=""; case $f in *.cpp) x="-x cu";; esac; s=$(date +%s); nvcc '"$flags"' $x -c $f -o obj/$n.o > obj/$n.log 2>&1; rc=$?; echo "$n rc=$rc $(( $(date +%s) - s ))s"; [ $rc = 0 ] || grep -m5 -A3 error obj/$n.log'
nvcc -gencode=arch=compute_90a,code=sm_90a -o harness obj/*.o -lcuda 2>&1 | grep -E "undefined reference|error" | sed 's/.*undefined reference to/undef/' | sort | uniq | cut -c1-300 | head -20
ls -la harness 2>/dev/null && ./harness
