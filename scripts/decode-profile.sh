#!/usr/bin/env bash
# Where the decode kernels' time goes, by Nsight Compute, on a GPU machine with nvcc and ncu (no
# cargo needed): builds the probe (flashinfer-sys/csrc/probe/moe_decode_probe.cu) and profiles
# one eager call of each case named (default: Qwen3-30B-A3B and DeepSeek-V3-sized at one token),
# every kernel of the decode path: duration, DRAM throughput, achieved occupancy, waves, registers.
# Clocks are left alone (--clock-control none), as the GPU machines' METHOD.md asks.
#
#     bash scripts/decode-profile.sh [layer:tokens ...]      # e.g. qwen3:1 deepseek:1 qwen3:8,
#                                                            # qwen3-fp8:1 (fp8 per-tensor weights)
#     DECODE_DIR=v7 bash scripts/decode-profile.sh qwen3:1   # a candidate's moe_decode.cu (a
#                                                            # folder as decode-probe.sh takes)
set -euo pipefail
cd "$(dirname "$0")/.."
csrc=flashinfer-sys/csrc
dir=${DECODE_DIR:-$csrc}
out=${TMPDIR:-/tmp}/moe_decode_probe
echo "== kernels of $dir/moe_decode.cu"
nvcc -std=c++17 -O3 -arch=sm_90a -lineinfo -I"$dir" -I"$csrc" "$csrc/probe/moe_decode_probe.cu" \
  "$dir/moe_decode.cu" -o "$out"
metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,dram__bytes_read.sum,sm__warps_active.avg.pct_of_peak_sustained_active
metrics+=,launch__waves_per_multiprocessor,launch__registers_per_thread,launch__grid_size
metrics+=,launch__occupancy_limit_registers,sm__throughput.avg.pct_of_peak_sustained_elapsed
for case in "${@:-qwen3:1 deepseek:1}"; do
  for c in $case; do
    echo "== ${c%%:*} at ${c##*:} tokens (three calls)"
    ncu --clock-control none -k regex:'fc1_swiglu|fc2_sum|quantize_groups' --csv --metrics "$metrics" \
      "$out" profile "${c%%:*}" "${c##*:}" 2>&1 | grep -v "^==PROF=="
  done
done
