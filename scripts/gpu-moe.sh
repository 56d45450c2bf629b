#!/usr/bin/env bash
# The Hopper MoE layer's GPU checks and benchmarks (issue 16), on the GPU machine after
# scripts/gpu-pack.sh, one device call per stage, one log per job in LOGDIR:
#
#     bash scripts/gpu-moe.sh LOGDIR stage...
#
#   check    the whole GPU suite, ranks and examples (gpu-pack/run.sh); memcheck of the layer
#   layer    the layer's GPU tests and its example only; memcheck of the layer
#   bench    BENCHMARKS.md section 7: ours (both layers), then PyTorch's
#
# The device tool runs it as
#     tar xJf gpu-pack.tar.xz && bash scripts/gpu-moe.sh "$OUT" check
# with carry ["gpu-pack.tar.xz"]. check takes about 290 s on an H200, layer about 110 s,
# bench about 300 s; a call runs at most 600 s. Every job's exit code and seconds go to
# LOGDIR/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,15p' "$0"; exit 2; }
logs=$1
shift
mkdir -p "$logs"
status=0
job() {
  local name=$1
  shift
  local start=$SECONDS
  "$@" > "$logs/$name.log" 2> "$logs/$name.err"
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$logs/summary.txt"
  [ "$rc" -eq 0 ] || status=$rc
}
for stage in "$@"; do
case $stage in
  check)
    job suite bash gpu-pack/run.sh
    job memcheck env FLASHINFER_RS_SANITIZE_FILTER=cutlass_moe bash scripts/sanitize.sh memcheck
    grep -h "test result\|ranks: all\|ERROR SUMMARY" "$logs"/suite.log "$logs"/memcheck.log
    ;;
  layer)
    export FLASHINFER_RS_REQUIRE_GPU=1 FLASHINFER_RS_REQUIRE_CUTLASS_MOE=1
    job layer-tests gpu-pack/bin/gpu --test-threads=1 cutlass_moe
    job layer-example gpu-pack/bin/04_hopper_moe_layer
    job memcheck env FLASHINFER_RS_SANITIZE_FILTER=cutlass_moe bash scripts/sanitize.sh memcheck
    grep -h "test result\|ERROR SUMMARY" "$logs"/layer-tests.log "$logs"/memcheck.log
    ;;
  bench)
    # The tactic search's timings go to stderr (the .err logs).
    job layer-qwen3 bash gpu-pack/bench.sh layer qwen3
    job layer-deepseek bash gpu-pack/bench.sh layer deepseek
    job torch python3 scripts/bench_torch_moe.py
    cat "$logs"/layer-qwen3.log "$logs"/layer-deepseek.log "$logs"/torch.log
    ;;
  *)
    echo "unknown stage $stage (check, layer, bench)" >&2
    exit 2
    ;;
esac
done
exit $status
