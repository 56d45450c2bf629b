#!/usr/bin/env bash
# The decode kernels' workbench (flashinfer-sys/csrc/probe/moe_decode_probe.cu) on a GPU
# machine with nvcc (no cargo needed): checks them on a few shapes, then times them at the
# Qwen3-30B-A3B and DeepSeek-V3-sized layers. Run from the repository root:
#
#     bash scripts/decode-probe.sh [DIR ...]     # MOE_DECODE_PROBE_TOKENS=1,8 times those sizes only
#     bash scripts/decode-probe.sh build [DIR ...]  # only builds the probes: this tree's and each
#                                                 # DIR's (CI, candidates' folders; no GPU)
#
# Each DIR (optional): a folder holding another moe_decode.cu and moe_decode.h of the same
# interface (e.g. from `git show <rev>:flashinfer-sys/csrc/moe_decode.cu`, a variant on a branch);
# the probe is then also built against each and run first, in the order given, so all are timed
# in one session beside this tree's.
set -euo pipefail
cd "$(dirname "$0")/.."
csrc=flashinfer-sys/csrc
out=${TMPDIR:-/tmp}/moe_decode_probe
probe() { # dir binary: the probe against dir's moe_decode.cu (and header, found first)
  nvcc -std=c++17 -O3 -arch=sm_90a -I"$1" -I"$csrc" "$csrc/probe/moe_decode_probe.cu" \
    "$1/moe_decode.cu" -o "$2"
}
if [ "${1:-}" = build ]; then
  probe "$csrc" "$out"
  echo "decode probe built: $out"
  n=0
  for dir in "${@:2}"; do
    n=$((n + 1))
    probe "$dir" "$out-$n"
    echo "decode probe of $dir built: $out-$n"
  done
  exit 0
fi
n=0
failed=0
for dir in "$@"; do
  n=$((n + 1))
  probe "$dir" "$out-$n"
  echo "== $dir"
  # A failing candidate (a wrong result, a fault) is reported and the others still run.
  rc=0
  "$out-$n" || rc=$?
  if [ "$rc" != 0 ]; then failed=$((failed + 1)); echo "== $dir: exit $rc"; fi
done
[ "$n" = 0 ] || echo "== this tree"
probe "$csrc" "$out"
"$out"
[ "$failed" = 0 ]
