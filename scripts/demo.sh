#!/usr/bin/env bash
# The main demo: the reference server (serve/) on the small Qwen3-MoE test checkpoint
# (serve/fixtures/tiny-qwen3-moe), sent the seed's request over HTTP as a client would; it
# prints the answer with its routed experts decoded, then stops. Sets up what it needs.
#
#     bash scripts/demo.sh                  # MoE on flashinfer-rs's CPU reference (any machine)
#     BACKEND=hopper bash scripts/demo.sh   # MoE on the Hopper layer: an sm_90 GPU, and CUDA 13's
#                                           # cuBLAS/cuRAND/NVRTC on the library path (candle's)
#     bash scripts/demo.sh --serve          # keep serving on 127.0.0.1:8000 (Ctrl-C stops it)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
backend=${BACKEND:-cpu}
features=()
if [ "$backend" != cpu ]; then
  source scripts/candle-env.sh # nvcc for candle's and our kernels
  features=(--features cuda)
fi
mode=(--demo)
[ "${1:-}" = --serve ] && mode=(--port 8000)
exec cargo run --quiet -p flashinfer-rs-serve "${features[@]}" --bin flashinfer-serve -- \
  --model serve/fixtures/tiny-qwen3-moe --backend "$backend" --enable-return-routed-experts \
  "${mode[@]}"
