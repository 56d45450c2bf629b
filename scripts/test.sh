#!/usr/bin/env bash
# The project's one test command (README quick start and CI run exactly this).
#
# Sets up what it needs (CUDA 13.0 nvcc and the pinned FlashInfer sources, both sha-checked,
# cached under ~/.cache/flashinfer-rs), then:
#   1. without kernels: what a crate that depends on us gets with no arch feature and no nvcc
#      (builds, documents, every entry point says "kernels not built"), README doctests, the
#      committed generated sources (`cargo xtask generate --check`), and
#      the reference server (serve/) on its CPU backend: its tests and the seed's scenario
#      played by a real client (scripts/serve-client-test.sh);
#   2. the Hopper kernels (`sm90` with the CUTLASS fused MoE `sm90-moe` and its fp8 GEMMs
#      `sm90-moe-fp8`, and `nccl`, `serde`, `float8`): compiled
#      and linked, all CPU tests run, GPU tests run where a GPU is present and skip (saying so)
#      where none is;
#   3. the MSRV: every crate in the two published libraries' dependency tree declares a
#      rust-version no newer than ours (`cargo xtask msrv`), and clippy's incompatible_msrv
#      lint at the declared rust-version over the two;
#   4. the packaged crates built from a clean directory (no features, DOCS_RS, sm90);
#   5. the prebuilt kernel library (`sm90-moe-fp8`): built, then the CPU suite against it with no
#      nvcc on PATH, no fetched sources and no toolchain;
#   6. beside candle with CUDA (downstream/candle);
#   7. the Blackwell kernels (`sm100`), compiled and linked, CPU tests as in 2;
#   8. a short coverage-guided fuzz run of every validation layer (scripts/fuzz.sh), which runs
#      beside stage 7 (it keeps one core busy, one target at a time).
# The Blackwell objects, candle and the fuzz targets compile in the background from the start;
# `sm90` and `sm100` are separate builds so that the packaged-crate check and `sm90` users
# share the `sm90` objects of the object cache.
# Extra arguments go to the two kernel `cargo test` runs (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
started=$(date +%s)
# CI builds from a clean clone, every crate once: incremental compilation's caches would cost
# time and never be read. Nor would debug info (three quarters of a test binary's 100 MB with
# line tables: a cold run's target dirs took 6.6 GB with them); a failing test still says
# where it failed.
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
  export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-0}
  export CARGO_PROFILE_DEV_STRIP=${CARGO_PROFILE_DEV_STRIP:-debuginfo}
fi
# Elsewhere, line tables instead of full debug info in the dev/test builds (here, in candle's
# and in the packaged crates'): a panic's backtrace still names file and line, and rustc and
# the linker do much less on a run that is bound by compile time.
export CARGO_PROFILE_DEV_DEBUG=${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}
# Each stage line says the disk space left where the builds write (a CI machine's disk once
# filled during a link, which then died of SIGBUS): a failure for want of space shows as such.
free_space() { df -h --output=avail "$root" 2>/dev/null | tail -n 1 | tr -d ' '; }
stage() { echo "== $1 ($(( $(date +%s) - started )) s so far, $(free_space) free)"; }
# A cold run's builds and downloads took 8 GB with line tables (session 22: target dirs 6.6 GB,
# cache 1.3 GB); as CI builds, the target dirs ended at 2.2 GB. Where less is free, say so
# before the hour of building that would end in a dead link.
if [ "$(df --output=avail -k "$root" | tail -n 1)" -lt $((8 * 1024 * 1024)) ]; then
  echo "warning: only $(free_space) of disk free where the builds write; a cold run needs about 8 GB" >&2
fi

python3 flashinfer-sys/vendor/fetch.py all

# The run is bound by compile time on few cores (a cold CI machine has 2): upstream's
# routing_custom alone takes ~18 min of one core for sm_90a and ~22 for sm_100f. So what needs
# nothing of the stages before it is compiled in the background from the start, and each
# stage waits only for what it uses:
#   - the Blackwell kernel objects (their own target dir; the object cache is shared and
#     written atomically, so stage 7 finds them there);
#   - candle and the candle check's other dependencies (stage 6): at normal priority, since
#     candle-kernels' static library compiles its 15 CUDA files one at a time (a ~15-minute
#     chain on one core that, at nice 10, waited for the kernel build and then ran alone);
#   - the fuzz targets (stage 8), at a lower priority: they fill idle cores.
mkdir -p "$root/target"
declare -A bg_pid
background() { # name, priority, command...
  local name=$1 nice=$2
  shift 2
  nice -n "$nice" "$@" >"$root/target/$name.log" 2>&1 &
  bg_pid[$name]=$!
}
await() { # name
  if ! wait "${bg_pid[$1]}"; then
    cat "$root/target/$1.log" >&2
    echo "background build $1 failed (log above: target/$1.log)" >&2
    exit 1
  fi
  unset "bg_pid[$1]"
}
# A failing stage must not leave them running, and says what the disk held then.
on_exit() {
  local rc=$?
  for p in "${bg_pid[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ "$rc" != 0 ]; then
    echo "failed (exit $rc) after $(( $(date +%s) - started )) s, $(free_space) of disk free" >&2
    du -sh "$root"/target/* "${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}" 2>/dev/null \
      | sort -h | tail -n 8 >&2 || true
  fi
}
trap on_exit EXIT
background blackwell-objects 0 env CARGO_TARGET_DIR="$root/target/blackwell-objects" \
  cargo build -p flashinfer-sys --features sm100
background candle-deps 0 bash scripts/candle-check.sh --prebuild
background fuzz-build 10 bash scripts/fuzz.sh --build

# One target dir for the feature sets: the dependencies are built once and shared.
stage "1/8: no arch feature (no nvcc needed), doctests included"
# (It includes tests/fuzz_corpus.rs: the fuzz corpora and past crash inputs, replayed through
# the fuzz harness on the public plans.)
cargo test --workspace
# No function over 120 lines in flashinfer-rs/src or flashinfer-sys/csrc/.
cargo xtask long-functions
# flashinfer-sys/src/generated/ is what `cargo xtask generate` makes of the C header and the
# bindings (flashinfer-sys's build script generates no Rust).
cargo xtask generate --check
# The seed's scenario as a client plays it: the reference server on the transformers fixture
# model, curl and Python (numpy, requests, openai) decoding routed_experts (CPU backend).
bash scripts/serve-client-test.sh
# The serving-loop example's host side (assembly, export) on synthetic rows.
cargo run --quiet -p flashinfer-rs --example 02_serving_loop_capture > /dev/null
DOCS_RS=1 cargo doc --workspace --no-deps --quiet

stage "2/8: sm90 kernels and the CUTLASS MoE, bf16 and fp8 (with nccl: the multi-rank harness builds, and skips without a GPU)"
cargo test --workspace --features sm90,sm90-moe,sm90-moe-fp8,nccl,serde,float8 "$@"
# The device sessions' workbenches, which a GPU machine builds with nvcc alone against this
# tree's kernels (the decode probe and the block-scale GEMM probe): built here too, so that
# neither breaks unseen between GPU sessions (not run: no GPU).
probe_path=$PATH
command -v nvcc >/dev/null ||
  probe_path=${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}/cuda-13.0/nvidia/cu13/bin:$PATH
PATH=$probe_path bash scripts/decode-probe.sh build
PATH=$probe_path bash scripts/block-gemm-probe.sh build

# Stages 3-6 need no Blackwell object: they run while the background build finishes them.
stage "3/8: MSRV (rust-version): the dependency tree's declared versions, and clippy's incompatible_msrv lint"
cargo xtask msrv
# What a user compiles: the libraries, with every feature that adds Rust code (`nccl`; the
# arch features add kernels only). Our tests, examples and benches may use a newer Rust: no
# user builds them, and checking them here cost CI more than a CPU-minute.
cargo clippy -p flashinfer-sys -p flashinfer-rs --lib --features flashinfer-rs/nccl --quiet \
  -- -D clippy::incompatible_msrv

stage "4/8: packaged crates from a clean directory"
bash scripts/package-check.sh

stage "5/8: prebuilt kernel library, no nvcc"
lib=$(bash scripts/kernels-lib.sh sm90-moe-fp8 "$root/target/kernels-lib" | tail -n 1)
empty=$(mktemp -d)
# No nvcc on PATH, an empty cache (no toolchain, no sources, no objects): only the library.
path_without_cuda=$(echo "$PATH" | tr ':' '\n' | grep -v -i cuda | paste -sd: -)
if PATH=$path_without_cuda command -v nvcc >/dev/null; then
  echo "an nvcc is still on PATH: $(PATH=$path_without_cuda command -v nvcc)" >&2
  exit 1
fi
# The same target dir as the stages above: only the crates that see the library rebuild.
PATH=$path_without_cuda FLASHINFER_RS_CACHE=$empty FLASHINFER_RS_KERNELS_LIB=$lib \
  cargo test --workspace --features sm90-moe-fp8
rm -rf "$empty"

stage "6/8: beside candle with CUDA"
await candle-deps
bash scripts/candle-check.sh
# Nothing after this reads candle's build (1.5 GB): on CI's clean clone, give the space back.
if [ "${CI:-}" = true ]; then rm -rf "$root/target/candle-check"; fi

# The fuzz smoke keeps one core busy for a minute and a half: it runs beside stage 7.
await fuzz-build
background fuzz-smoke 0 bash scripts/fuzz.sh 15

await blackwell-objects
grep -h "kernels for" "$root/target/blackwell-objects.log" || true
stage "7/8: sm100 kernels (Blackwell: compiled, linked and CPU-tested; no Blackwell here)"
cargo test --workspace --features sm100 "$@"

stage "8/8: fuzz smoke (15 s per target, beside stage 7; skipped, saying so, without nightly)"
await fuzz-smoke
cat "$root/target/fuzz-smoke.log"

stage "all passed"
