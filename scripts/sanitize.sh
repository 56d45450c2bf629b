#!/usr/bin/env bash
# Runs the packed GPU tests under compute-sanitizer's memcheck, racecheck, initcheck and
# synccheck (on the GPU machine, after scripts/gpu-pack.sh). Zero errors expected; exits
# non-zero if any tool reports one. The tools slow kernels down 10-100x, so the routing matrix
# runs a reduced token set (every tier still reached) and the capture soak 4 layers per model
# for 100 steps (10 under racecheck, the slowest tool: 10 steps of the two Renormalize
# models take about 55 s per mode on an H100).
#
#     bash scripts/sanitize.sh [tool ...]      # default: all four
#
# FLASHINFER_RS_SANITIZE_FILTER=<test name filter> runs a subset, and
# FLASHINFER_RS_ROUTING_SHARD=i/n a slice of the routing matrix: racecheck over the whole
# suite takes longer than one device call allows, so it runs in slices, e.g.
#     FLASHINFER_RS_SANITIZE_FILTER=routing:: FLASHINFER_RS_ROUTING_SHARD=0/4 \
#       bash scripts/sanitize.sh racecheck
# FLASHINFER_RS_SANITIZE_PACK=<folder> runs another pack's tests (default gpu-pack).
set -uo pipefail
cd "$(dirname "$0")/.."
# The GPU machines ship compute-sanitizer with the toolkit, outside the default PATH.
export PATH=$PATH:/usr/local/cuda/bin
export FLASHINFER_RS_REQUIRE_GPU=1
export FLASHINFER_RS_ROUTING_TOKENS=${FLASHINFER_RS_ROUTING_TOKENS:-1,5,17,257,2048}
export FLASHINFER_RS_SOAK_LAYERS=${FLASHINFER_RS_SOAK_LAYERS:-4}
# The tools allocate device memory for their own bookkeeping: the capture soak's check that
# free device memory stays flat would measure them, so it is skipped (and says so) here.
export FLASHINFER_RS_UNDER_SANITIZER=1
tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(memcheck racecheck initcheck synccheck)
status=0
for tool in "${tools[@]}"; do
  echo "== compute-sanitizer --tool $tool"
  start=$(date +%s)
  [ "$tool" = racecheck ] && steps=10 || steps=100
  FLASHINFER_RS_SOAK_STEPS=${FLASHINFER_RS_SOAK_STEPS:-$steps} \
    compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
    "${FLASHINFER_RS_SANITIZE_PACK:-gpu-pack}/bin/gpu" --test-threads=1 --nocapture ${FLASHINFER_RS_SANITIZE_FILTER:-} 2>&1
  rc=$?
  echo "== $tool: exit $rc in $(( $(date +%s) - start ))s"
  [ "$rc" -eq 0 ] || status=$rc
done
exit $status
