#!/usr/bin/env bash
# Where a layer call's time goes, by Nsight Compute, on the GPU machine (gpu-pack.tar.xz carried):
# the layer bench (flashinfer-rs/benches/moe_layer.rs) with MOE_LAYER_PROFILE=1 makes one eager
# call each of the bf16, fp8 per-tensor and block-scale layers per size inside the profiler's
# range, and ncu reports each of their kernels (router, expansion, GEMMs, activation, finalize or
# the decode kernels, in launch order): duration, DRAM and SM throughput, DRAM bytes read and
# written (a GEMM that reads its weights more than once shows it here), L2 hit rate, warps
# active, grid, registers. Each kernel alone (ncu serialises them and flushes caches between),
# clocks left alone (METHOD.md). `scripts/profile-table.py` makes the log a table per call.
#
#     bash scripts/layer-profile.sh [qwen3|deepseek] [tokens,...]   # default: qwen3 512,4096
#     PACK=gpu-pack-tile bash scripts/layer-profile.sh ...          # another pack's bench
#     KERNELS='GemmUniversal|fp8_gemm' bash scripts/layer-profile.sh deepseek 4096  # those only
#
# KERNELS (a regex on kernel names) profiles only the kernels it matches. ncu replays each
# kernel it profiles once per group of metrics, saving and restoring the memory the kernel may
# write around each pass, and prints its CSV at exit: with the DeepSeek-V3-sized layers' 45 GB
# of weights resident, `layer-profile deepseek 4096` (33 kernels) outlasted 300 s of an H100
# call without a row (session 29). The GEMMs are 6 of the 33.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=${PACK:-gpu-pack}
[ -x "$pack/bin/moe_layer" ] || tar xJf "$pack.tar.xz"
layer=${1:-qwen3}
tokens=${2:-512,4096}
metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,sm__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size
metrics+=,launch__registers_per_thread,dram__bytes_read.sum,dram__bytes_write.sum
metrics+=,lts__t_sector_hit_rate.pct,sm__warps_active.avg.pct_of_peak_sustained_active
echo "== $pack: $layer at $tokens tokens: bf16, fp8 per-tensor, block-scale layers, one call each${KERNELS:+; kernels matching $KERNELS}"
filter=()
[ -z "${KERNELS:-}" ] || filter=(--kernel-name "regex:$KERNELS")
MOE_LAYER_PROFILE=1 MOE_LAYER_TOKENS=$tokens ncu --clock-control none --profile-from-start off \
  "${filter[@]}" --csv --metrics "$metrics" "$pack/bin/moe_layer" "$layer" 2>&1 \
  | grep -v '^==PROF=='
