#!/usr/bin/env bash
# The Hopper MoE layer's GPU checks and benchmarks (issue 16), on the GPU machine after
# scripts/gpu-pack.sh, one device call per stage, one log per job in LOGDIR:
#
#     bash scripts/gpu-moe.sh LOGDIR check     # GPU suite, ranks, examples; memcheck of the layer
#     bash scripts/gpu-moe.sh LOGDIR bench     # BENCHMARKS.md section 7: ours, then PyTorch
#
# The device tool runs it as
#     tar xJf gpu-pack.tar.xz && bash scripts/gpu-moe.sh "$OUT" check
# with carry ["gpu-pack.tar.xz"]. Each stage fits one 10-minute call on an H200 (check about
# 330 s, bench about 400 s). Every job's exit code and seconds go to LOGDIR/summary.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { sed -n '2,11p' "$0"; exit 2; }
logs=$1
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
case $2 in
  check)
    job suite bash gpu-pack/run.sh
    job memcheck env FLASHINFER_RS_SANITIZE_FILTER=cutlass_moe bash scripts/sanitize.sh memcheck
    grep -h "test result\|ranks: all\|ERROR SUMMARY" "$logs"/suite.log "$logs"/memcheck.log
    ;;
  bench)
    # The tactic search's timings go to stderr (the .err logs).
    job layer-qwen3 bash gpu-pack/bench.sh layer qwen3
    job layer-deepseek bash gpu-pack/bench.sh layer deepseek
    job torch python3 scripts/bench_torch_moe.py
    cat "$logs"/layer-qwen3.log "$logs"/layer-deepseek.log "$logs"/torch.log
    ;;
  *)
    echo "unknown stage $2 (check, bench)" >&2
    exit 2
    ;;
esac
exit $status
