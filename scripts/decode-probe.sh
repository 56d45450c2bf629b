#!/usr/bin/env bash
# The decode kernels' workbench (flashinfer-sys/csrc/probe/moe_decode_probe.cu) on a GPU
# machine with nvcc (no cargo needed): checks them on a few shapes, then times them at the
# Qwen3-30B-A3B and DeepSeek-V3-sized layers. Run from the repository root:
#
#     bash scripts/decode-probe.sh [DIR]
#
# DIR (optional): a folder holding another moe_decode.cu and moe_decode.h of the same interface
# (e.g. from `git show <rev>:flashinfer-sys/csrc/moe_decode.cu`); the probe is then also built
# against them and run first, so both are timed in one session.
set -euo pipefail
cd "$(dirname "$0")/.."
csrc=flashinfer-sys/csrc
out=${TMPDIR:-/tmp}/moe_decode_probe
if [ -n "${1:-}" ]; then
  nvcc -std=c++17 -O3 -arch=sm_90a -I"$1" -I"$csrc" \
    "$csrc/probe/moe_decode_probe.cu" "$1/moe_decode.cu" -o "$out-baseline"
  echo "== $1"
  "$out-baseline"
  echo "== this tree"
fi
nvcc -std=c++17 -O3 -arch=sm_90a -I"$csrc" "$csrc/probe/moe_decode_probe.cu" "$csrc/moe_decode.cu" -o "$out"
"$out"
