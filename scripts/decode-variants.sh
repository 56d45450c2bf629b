#!/usr/bin/env bash
# The decode kernels' candidates as folders for the probe (flashinfer-sys/csrc/probe/variants/
# README.md has their designs): each folder holds a moe_decode.cu and moe_decode.h of this
# tree's interface, made from this tree's kernels and the candidates' patches. No GPU, no cargo;
# seconds. Then, on a GPU machine (the probe builds them with nvcc there):
#
#     bash scripts/decode-variants.sh                    # here: v7 v7b v9 v9s2 (git-ignored)
#     MOE_DECODE_PROBE_TOKENS=1,2,4,8 OUT=<dir> bash scripts/gpu-proof.sh decode-probe v7 v7b v9 v9s2
#     bash scripts/decode-variants.sh build              # here or there: check that each builds
set -euo pipefail
cd "$(dirname "$0")/.."
csrc=flashinfer-sys/csrc
variants=$csrc/probe/variants
fresh() { # folder: this tree's decode kernels
  rm -rf "$1" && mkdir -p "$1" && cp "$csrc/moe_decode.cu" "$csrc/moe_decode.h" "$1/"
}
on() { # folder base patch: base's kernels with the patch applied
  rm -rf "$1" && cp -r "$2" "$1" && patch -s -p3 -d "$1" < "$variants/$3"
}
fresh v7 && patch -s -p3 -d v7 < "$variants/0007-fc1-rows-through-shared-memory.patch"
on v7b v7 0008-fc1-copies-before-routing-scans.patch
on v9 v7 0009-fc2-rounds-through-shared-memory.patch
# 9 with fc1's rounds halved and more blocks (bf16 only: block scale spills).
rm -rf v9s2 && mkdir -p v9s2 && cp v9/moe_decode.h v9s2/
sed -e 's/^constexpr int kStage = 4;/constexpr int kStage = 2;/' \
  -e 's/^constexpr int kFc1Blocks = 6;/constexpr int kFc1Blocks = 8;/' v9/moe_decode.cu > v9s2/moe_decode.cu
grep -q '^constexpr int kStage = 2;' v9s2/moe_decode.cu && grep -q '^constexpr int kFc1Blocks = 8;' v9s2/moe_decode.cu ||
  { echo "v9s2: candidate 9's kStage / kFc1Blocks lines not found" >&2; exit 1; }
echo "decode candidates: v7 v7b v9 v9s2"
if [ "${1:-}" = build ]; then bash scripts/decode-probe.sh build v7 v7b v9 v9s2; fi
