#!/usr/bin/env bash
# The project's one test command (README quick start and CI run exactly this).
#
# Sets up what it needs (CUDA 13.0 nvcc and the pinned FlashInfer sources, both sha-checked,
# cached under ~/.cache/flashinfer-rs), then runs every test twice over:
#   1. without kernels: what a crate that depends on us gets with no arch feature and no nvcc
#      (builds, documents, every entry point says "kernels not built");
#   2. with `sm90,sm100`: both architectures' kernels compiled and linked, all CPU tests run,
#      GPU tests run where a GPU is present and skip (saying so) where none is;
# then a short coverage-guided fuzz run of every validation layer (scripts/fuzz.sh).
# Extra arguments go to the second `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 vendor/fetch.py all

# One target dir for all three: the dependencies are built once and shared.
echo "== 1/4: no arch feature (no nvcc needed)"
cargo test --workspace
# The serving-loop example's host side (assembly, export) on synthetic rows.
cargo run --quiet --example 02_serving_loop_capture > /dev/null
echo "== 2/4: cargo doc without kernels, as docs.rs builds it"
DOCS_RS=1 cargo doc --workspace --no-deps --quiet
echo "== 3/4: sm90 + sm100 kernels"
cargo test --workspace --features sm90,sm100 "$@"
echo "== 4/4: fuzz smoke (15 s per target; skipped, saying so, without nightly)"
bash scripts/fuzz.sh 15
