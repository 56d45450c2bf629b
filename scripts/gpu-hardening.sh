#!/usr/bin/env bash
# The GPU half of the hardening checks, on the GPU machine after scripts/gpu-pack.sh, with one
# log per job in LOGDIR and a summary (exit code and seconds per job) in LOGDIR/summary.txt:
#
#     bash scripts/gpu-hardening.sh LOGDIR stage...
#
# stages (each fits one 10-minute device call on an H100; measured times in docs/hardening.md):
#   suite             the GPU suite and the examples (gpu-pack/run.sh), alone on the GPU
#   soak              the capture soak, FLASHINFER_RS_SOAK_STEPS steps (default 10000) per model
#                     and mode, alone on the GPU (it checks that free device memory stays flat)
#   sanitize          compute-sanitizer as four parallel jobs: memcheck, initcheck and synccheck
#                     over every GPU test; racecheck over every test but the capture tests and
#                     the routing matrix
#   sanitize:T1,T2..  the listed tools (of memcheck, initcheck, synccheck, racecheck) in
#                     parallel over every GPU test
#   racecheck-capture racecheck over the capture soak and the capture ordering test, in parallel
#   racecheck-routing:I-J  racecheck over shards I..J of the routing matrix (16 shards, one
#                     after another, 111-150 s each on an H100: three fit one call)
#   layer             the Hopper MoE layer's GPU tests (cutlass_moe), its example (04) and
#                     memcheck over its tests: about 110 s on an H200
#   bench-layer       BENCHMARKS.md section 7: the layer bench for Qwen3 and the
#                     DeepSeek-V3-sized layer, then scripts/bench_torch_moe.py: about 100 s
#   released          the degenerate-input tests (Router's; NoAuxTc's numeric edges) on
#                     FlashInfer 0.6.13's kernels as released (gpu-pack/released, from
#                     scripts/gpu-pack-released.sh): each must FAIL there; the stage fails if
#                     one passes
#
# Parallel sanitizer jobs share the GPU: each gets its own TMPDIR, so the tests' GPU lock
# (flashinfer-rs/tests/gpu/common.rs) serialises tests within a job only. Under the sanitizers nothing
# measures device memory, and each job checks its own results against the oracle.
# JOB_TIMEOUT (seconds, default 540) bounds every job; a job that runs out exits 124.
set -uo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n '2,30p' "$0"; exit 2; }
logs=$1
shift
mkdir -p "$logs"
status=0

# job NAME COMMAND...: runs COMMAND with its own TMPDIR, output to LOGDIR/NAME.log.
job() {
  local name=$1 start rc
  shift
  start=$(date +%s)
  TMPDIR=$(mktemp -d) timeout "${JOB_TIMEOUT:-540}" "$@" >"$logs/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc in $(($(date +%s) - start))s" | tee -a "$logs/summary.txt"
  return $rc
}

# Waits for every background job; fails if any failed.
wait_all() {
  local rc=0
  for pid in $(jobs -p); do wait "$pid" || rc=$?; done
  return $rc
}

for stage in "$@"; do
  case $stage in
  suite) job suite bash gpu-pack/run.sh --nocapture || status=1 ;;
  soak)
    job soak env FLASHINFER_RS_REQUIRE_GPU=1 \
      FLASHINFER_RS_SOAK_STEPS="${FLASHINFER_RS_SOAK_STEPS:-10000}" \
      gpu-pack/bin/gpu --test-threads=1 --nocapture capture::captured_rows || status=1
    ;;
  sanitize)
    for tool in memcheck initcheck synccheck; do
      job "$tool" bash scripts/sanitize.sh "$tool" &
    done
    FLASHINFER_RS_SANITIZE_FILTER="--skip routing::every --skip capture::" \
      job racecheck-rest bash scripts/sanitize.sh racecheck &
    wait_all || status=1
    ;;
  sanitize:*)
    IFS=, read -r -a tools <<<"${stage#sanitize:}"
    for tool in "${tools[@]}"; do
      job "$tool" bash scripts/sanitize.sh "$tool" &
    done
    wait_all || status=1
    ;;
  racecheck-capture)
    FLASHINFER_RS_SANITIZE_FILTER="capture::captured_rows" \
      job racecheck-soak bash scripts/sanitize.sh racecheck &
    FLASHINFER_RS_SANITIZE_FILTER="capture::the_next_step" \
      job racecheck-ordering bash scripts/sanitize.sh racecheck &
    wait_all || status=1
    ;;
  racecheck-routing:*)
    # One shard after another: racecheck keeps the GPU busy, and 8 shards in parallel
    # finished none within 285 s where one alone takes 111-150 s.
    range=${stage#racecheck-routing:}
    for i in $(seq "${range%-*}" "${range#*-}"); do
      FLASHINFER_RS_SANITIZE_FILTER="routing::every" FLASHINFER_RS_ROUTING_SHARD="$i/16" \
        job "racecheck-routing-$i" bash scripts/sanitize.sh racecheck || status=1
    done
    ;;
  layer)
    # The Hopper MoE layer (issue 16): its GPU tests, its example, memcheck over its tests.
    job layer-tests env FLASHINFER_RS_REQUIRE_GPU=1 FLASHINFER_RS_REQUIRE_CUTLASS_MOE=1 \
      gpu-pack/bin/gpu --test-threads=1 --nocapture cutlass_moe || status=1
    job layer-example gpu-pack/bin/04_hopper_moe_layer || status=1
    FLASHINFER_RS_SANITIZE_FILTER=cutlass_moe job layer-memcheck \
      bash scripts/sanitize.sh memcheck || status=1
    ;;
  bench-layer)
    # BENCHMARKS.md section 7: both layers (the tactic search's timings are the lines
    # "tokens N: tactics A/C"), then PyTorch's layer, in one call.
    job bench-layer-qwen3 bash gpu-pack/bench.sh layer qwen3 || status=1
    job bench-layer-deepseek bash gpu-pack/bench.sh layer deepseek || status=1
    job bench-layer-torch python3 scripts/bench_torch_moe.py || status=1
    ;;
  released)
    if job released bash gpu-pack/released/run.sh --nocapture; then
      echo "released: the degenerate tests PASSED on the unpatched kernels" | tee -a "$logs/summary.txt"
      status=1
    fi
    ;;
  *)
    echo "unknown stage $stage" >&2
    exit 2
    ;;
  esac
done
exit $status
