#!/usr/bin/env bash
# The decode kernels' workbench (flashinfer-sys/csrc/probe/moe_decode_probe.cu) on a GPU
# machine with nvcc (no cargo needed): checks them on a few shapes, then times them at the
# Qwen3-30B-A3B and DeepSeek-V3-sized layers. Run from the repository root:
#
#     bash scripts/decode-probe.sh [DIR ...]     # MOE_DECODE_PROBE_TOKENS=1,8 times those sizes only
#     bash scripts/decode-probe.sh build         # only builds this tree's probe (CI, no GPU)
#
# Each DIR (optional): a folder holding another moe_decode.cu and moe_decode.h of the same
# interface (e.g. from `git show <rev>:flashinfer-sys/csrc/moe_decode.cu`, a variant on a branch);
# the probe is then also built against each and run first, in the order given, so all are timed
# in one session beside this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
csrc=flashinfer-sys/csrc
out=${TMPDIR:-/tmp}/moe_decode_probe
if [ "${1:-}" = build ]; then
  nvcc -std=c++17 -O3 -arch=sm_90a -I"$csrc" "$csrc/probe/moe_decode_probe.cu" \
    "$csrc/moe_decode.cu" -o "$out"
  echo "decode probe built: $out"
  exit 0
fi
n=0
failed=0
for dir in "$@"; do
  n=$((n + 1))
  nvcc -std=c++17 -O3 -arch=sm_90a -I"$dir" -I"$csrc" \
    "$csrc/probe/moe_decode_probe.cu" "$dir/moe_decode.cu" -o "$out-$n"
  echo "== $dir"
  # A failing candidate (a wrong result, a fault) is reported and the others still run.
  rc=0
  "$out-$n" || rc=$?
  if [ "$rc" != 0 ]; then failed=$((failed + 1)); echo "== $dir: exit $rc"; fi
done
[ "$n" = 0 ] || echo "== this tree"
nvcc -std=c++17 -O3 -arch=sm_90a -I"$csrc" "$csrc/probe/moe_decode_probe.cu" "$csrc/moe_decode.cu" -o "$out"
"$out"
[ "$failed" = 0 ]
