#!/usr/bin/env bash
# Profiles the top-k router with Nsight Compute on the GPU machine (after scripts/gpu-pack.sh
# here and `tar xJf gpu-pack.tar.xz` there), for BENCHMARKS.md's "what bounds it":
#
#     bash scripts/profile-topk.sh [MODEL_PREFIX] [TOKENS] [OUT_DIR]
#
# e.g. `bash scripts/profile-topk.sh DeepSeek 32768`: the bench's table 6 for that row, the
# first two top-k launches profiled (topk_route or topk_rows, whichever the row picks: speed
# of light, occupancy, launch, warp states, scheduler, memory workload, and the warp-state
# samples per SASS instruction: where a small batch's serial chain stalls), the report written
# to OUT_DIR/topk-MODEL-TOKENS.ncu-rep and printed, the per-instruction samples to
# OUT_DIR/topk-MODEL-TOKENS-sass.csv.
# The warp-state samples at ncu's shortest interval (2^5 cycles): at its default, session 26's
# one-token Kimi-K2 launch (10,740 cycles, one warp) got 4 samples in all, too few to say where
# the chain stalls.
# ncu writes its own errors to stdout: the profiled run's whole output goes to stderr (session
# 25's run failed with exit 1 and nothing in its log while it went to /dev/null).
set -euo pipefail
model=${1:-DeepSeek}
tokens=${2:-32768}
out=${3:-${OUT:-.}}
ncu=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -n "$ncu" ] || { echo "ncu (Nsight Compute) not found" >&2; exit 1; }
export FLASHINFER_RS_BENCH_MODEL=$model FLASHINFER_RS_BENCH_TOKENS=$tokens
"$ncu" --kernel-name regex:"topk_(route|rows)" --launch-count 2 \
  --section SpeedOfLight --section Occupancy --section LaunchStats \
  --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
  --section ComputeWorkloadAnalysis --section InstructionStats \
  --section SourceCounters --sampling-interval 0 \
  -o "$out/topk-$model-$tokens" -f \
  "$(dirname "$0")/../gpu-pack/bin/moe_routing" topk >&2
"$ncu" --import "$out/topk-$model-$tokens.ncu-rep" --print-summary none
"$ncu" --import "$out/topk-$model-$tokens.ncu-rep" --page source --print-source sass --csv \
  > "$out/topk-$model-$tokens-sass.csv"
