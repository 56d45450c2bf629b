#!/usr/bin/env bash
# The decode kernels' workbench (flashinfer-sys/csrc/probe/moe_decode_probe.cu) on a GPU
# machine with nvcc (no cargo needed): checks them on a few shapes, then times them at the
# Qwen3-30B-A3B and DeepSeek-V3-sized layers. Run from the repository root:
#
#     bash scripts/decode-probe.sh
set -euo pipefail
cd "$(dirname "$0")/.."
csrc=flashinfer-sys/csrc
out=${TMPDIR:-/tmp}/moe_decode_probe
nvcc -std=c++17 -O3 -arch=sm_90a -I"$csrc" "$csrc/probe/moe_decode_probe.cu" "$csrc/moe_decode.cu" -o "$out"
"$out"
