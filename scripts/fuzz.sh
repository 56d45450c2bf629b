#!/usr/bin/env bash
# Coverage-guided fuzzing of every validation layer (targets in fuzz/fuzz_targets, the harness
# in fuzz/src/lib.rs over flashinfer-rs's public plans):
#
#   bash scripts/fuzz.sh [seconds per target]      # default 60; CI runs a 15 s smoke
#   bash scripts/fuzz.sh --build                   # only build the targets (CI does this
#                                                  # beside its kernel build)
#
# Needs a nightly toolchain (libFuzzer instrumentation); installs cargo-fuzz 0.13.2 if it is
# missing. New inputs go to a scratch copy of the corpus unless FUZZ_GROW_CORPUS=1, which
# merges them into fuzz/corpus (then minimise with `cargo +nightly fuzz cmin <target>`).
# Without nightly it says so and exits 0: the corpora still run on stable in `cargo test`
# (flashinfer-rs/tests/fuzz_corpus.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
secs=${1:-60}
[ "${1:-}" = --build ] && build_only=1 secs=0
targets=(routing_config routing_call fused_plan cutlass_plan capture_layout assembly)

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "skipped: fuzzing needs a nightly toolchain (rustup toolchain install nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --version 0.13.2 --locked
fi

if [ "$build_only" = 1 ]; then
  cd fuzz
  # The flags `cargo fuzz run` builds with (its defaults), so that the runs find these fresh.
  cargo +nightly fuzz build
  exit 0
fi

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
for t in "${targets[@]}"; do
  if [[ "${FUZZ_GROW_CORPUS:-0}" == 1 ]]; then
    corpus=(corpus/$t)
  else
    mkdir -p "$scratch/$t"
    corpus=("$scratch/$t" corpus/$t)
  fi
  echo "== fuzz $t for ${secs}s"
  log="$scratch/$t.log"
  if ! cargo +nightly fuzz run "$t" "${corpus[@]}" -- -max_total_time="$secs" \
      -print_final_stats=1 >"$log" 2>&1; then
    grep -E "panicked|ERROR|SUMMARY|Test unit written" -A2 "$log" || tail -20 "$log"
    echo "fuzz $t failed; the input is in fuzz/artifacts/$t/"
    exit 1
  fi
  grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units" "$log"
done
