#!/usr/bin/env bash
# The fp8 block-scale grouped GEMM candidates' probe (flashinfer-sys/csrc/probe/block_gemm_probe.cu:
# (1) Fp8Gemm 128x64, (2) Fp8Gemm 64x64 with 6 stages, (3) DeepGEMM's swap-AB kernel built ahead
# of time, and the prefill candidates of docs/fp8-on-hopper.md section 11: (4) Fp8Gemm 64x128
# with 8 stages, (5) 128x128 with 6 stages, upstream's kernel with setmaxnreg added, written at
# build time by block_gemm_probe_regs.py) on a GPU machine with nvcc and python3 (no cargo, no
# network). Both layers' GEMMs at 16, 32, 64, 128, 512, 2048 and 4096 tokens, or the counts in
# BLOCK_GEMM_PROBE_TOKENS (e.g. 16,512,4096); (3) is not timed above 32 mean rows per expert.
# Run from anywhere:
#
#     bash scripts/block-gemm-probe.sh pack   # here: the upstream sources it needs into
#                                             # block-gemm-probe-src.tar.xz (git-ignored, ~1 MB;
#                                             # only the upstream tree: the probe's own files
#                                             # travel as tracked files, so adding a kernel of
#                                             # the same headers needs no new tarball)
#     bash scripts/block-gemm-probe.sh build  # builds only (e.g. here, to see that it compiles:
#                                             # ~21 s on this 2-core machine)
#     bash scripts/block-gemm-probe.sh        # on the GPU machine: unpacks the tarball if
#                                             # present, builds, runs
#
# The build goes to ${TMPDIR:-/tmp}/block_gemm_probe* (the binary, the swap-AB object, (5)'s
# generated kernel, the unpacked sources). Registers and spills:
# cuobjdump -res-usage "${TMPDIR:-/tmp}/block_gemm_probe" (STACK:0 is no spill).
#
# The sources are the fetched CUTLASS MoE tree with patches 0012 and 0013 (python3
# flashinfer-sys/vendor/fetch.py sources): BLOCK_GEMM_PROBE_SOURCES, by default the unpacked
# tarball if there is one, else the cache's tree. The GPU machine has no such tree: its call
# carries the tarball, e.g. the device tool's run with carry ["block-gemm-probe-src.tar.xz"] and
# `bash scripts/gpu-proof.sh block-gemm-probe`.
set -euo pipefail
cd "$(dirname "$0")/.."
tarball=block-gemm-probe-src.tar.xz
cache_tree=${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}/sources/flashinfer-0.6.13-cutlass-moe
# What the probe includes or links from the tree: CUTLASS's headers, TensorRT-LLM's common
# headers and the three sources of what they call (as the crate links them), the directories of
# the two kernels' headers, and the tree's stamp (its patches, for the record).
needed=(
  cutlass/include
  flashinfer/csrc/nv_internal/include
  flashinfer/csrc/nv_internal/tensorrt_llm/common
  flashinfer/csrc/nv_internal/tensorrt_llm/deep_gemm
  flashinfer/csrc/nv_internal/tensorrt_llm/kernels/cutlass_kernels/fp8_blockscale_gemm
  flashinfer/csrc/nv_internal/cpp/common/logger.cpp
  flashinfer/csrc/nv_internal/cpp/common/stringUtils.cpp
  flashinfer/csrc/nv_internal/cpp/common/tllmException.cpp
  .flashinfer-rs-stamp.json
)

if [ "${1:-}" = pack ]; then
  tar cJf "$tarball" -C "${BLOCK_GEMM_PROBE_SOURCES:-$cache_tree}" "${needed[@]}"
  ls -l "$tarball"
  exit 0
fi

out=${TMPDIR:-/tmp}/block_gemm_probe
src=${BLOCK_GEMM_PROBE_SOURCES:-}
if [ -z "$src" ] && [ -f "$tarball" ]; then
  src=$out-src
  rm -rf "$src"
  mkdir -p "$src"
  tar xJf "$tarball" -C "$src"
fi
src=${src:-$cache_tree}
nv=$src/flashinfer/csrc/nv_internal
header=$nv/tensorrt_llm/kernels/cutlass_kernels/fp8_blockscale_gemm/fp8_blockscale_gemm_kernel.cuh
for define in FLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY FLASHINFER_RS_BLOCKSCALE_FINITE_SCALE; do
  if ! grep -q "$define" "$header" 2>/dev/null; then
    echo "$header lacks $define (patches 0012, 0013): run python3 flashinfer-sys/vendor/fetch.py" \
      "sources here, then $0 pack, and carry $tarball" >&2
    exit 1
  fi
done
echo "sources: $src"

csrc=flashinfer-sys/csrc
# As build/cutlass_moe.rs compiles the layer's block-scale unit (its defines, includes, target).
flags=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -gencode=arch=compute_90a,code=sm_90a
  -DENABLE_BF16 -DENABLE_FP8 -DFLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY
  -DFLASHINFER_RS_BLOCKSCALE_FINITE_SCALE -I"$nv" -I"$nv/include"
  -I"$nv/tensorrt_llm/kernels/cutlass_kernels" -I"$src/cutlass/include" -I"$csrc/probe"
  "-Xcompiler=-idirafter,$csrc/compat" -Xcompiler=-Wno-deprecated-declarations
  -diag-suppress=20012,20013,20015,177,550,186)
# DeepGEMM's kernels with the ptxas flags of upstream's JIT (deep_gemm/compiler.cuh).
nvcc "${flags[@]}" --ptxas-options=-allow-expensive-optimizations=true \
  --ptxas-options=--register-usage-level=10 -c "$csrc/probe/block_gemm_probe_swap_ab.cu" \
  -o "$out-swap_ab.o"
# Candidate (5)'s kernel: upstream's with setmaxnreg added, copied out of the header.
mkdir -p "$out-gen"
python3 "$csrc/probe/block_gemm_probe_regs.py" "$header" "$out-gen/block_gemm_probe_regs.inc"
nvcc "${flags[@]}" -I"$out-gen" "$csrc/probe/block_gemm_probe.cu" "$out-swap_ab.o" \
  "$nv/cpp/common/logger.cpp" "$nv/cpp/common/stringUtils.cpp" \
  "$nv/cpp/common/tllmException.cpp" -o "$out"
if [ "${1:-}" = build ]; then exit 0; fi
"$out"
