#!/usr/bin/env bash
# Proves flashinfer-rs builds beside candle with CUDA: downstream/candle is a crate outside the
# workspace that depends on candle-core (feature `cuda`, hence cudarc's `dynamic-linking`) and
# on flashinfer-rs with `sm90`; cargo unifies one cudarc 0.19 for both, whose CUDA version is
# candle's choice (nvcc's, 13.0 here); then the same with CUDA 12.8's bindings.
#
#     bash scripts/candle-check.sh            # build and run its tests (they skip without a GPU)
#     bash scripts/candle-check.sh --pack DIR # release build; also copy the test binaries and
#                                             # candle's fused MoE bench to DIR
#     bash scripts/candle-check.sh --prebuild # candle and the rest of the check's dependencies
#                                             # (candle-kernels: 14 min of nvcc on one core),
#                                             # built without our kernels: CI runs this beside
#                                             # its own kernel build
#
# The check builds in cargo's test profile (unoptimised: minutes less of candle's Rust on a
# cold 2-core CI); the packed binary for GPU runs is a release build.
#
# What the link step needs that a GPU-less build machine lacks (libcuda, and the CUDA 13
# libraries candle links) comes from link-time stand-ins (downstream/candle/make_link_stubs.py);
# at run time the real libraries are loaded by SONAME.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
source scripts/candle-env.sh
cd downstream/candle
profile=()
features=sm90
if [ "${1:-}" = --pack ]; then
  profile=(--release)
  # The pack also carries benches/candle_fused_moe.rs (candle-transformers' fused MoE): its
  # feature is on for the tests too, so that tests and bench share one build of the
  # dependencies (candle-transformers turns on features of some that the tests share).
  features=sm90,candle-fused-moe
fi
if [ "${1:-}" = --prebuild ]; then
  # The same environment (RUSTFLAGS included) and dependency features as the check, so that it
  # finds them fresh; without `sm90` (which changes no dependency's features) nothing of ours
  # is compiled with nvcc, and the check then rebuilds only flashinfer-sys, flashinfer-rs and
  # itself.
  cargo test --locked --no-run
  exit 0
fi
cargo test --locked "${profile[@]}" --features "$features" --no-run
# A binary that links libcuda cannot start without one. Without a driver (a CI machine) it
# starts on the stand-ins, finds no device and says the test is skipped; with a driver the
# real libraries load by SONAME.
if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  cargo test --locked "${profile[@]}" --features "$features" -- --nocapture
else
  LD_LIBRARY_PATH=$stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} \
    cargo test --locked "${profile[@]}" --features "$features" -- --nocapture
fi
# flashinfer-rs picks no CUDA version for cudarc's bindings (the program does): the crate
# also builds with CUDA 12.x bindings (CUDARC_CUDA_VERSION overrides every other choice,
# candle's nvcc detection included). Last, since it rebuilds cudarc and what depends on it.
if [ "${1:-}" != --pack ]; then
  CUDARC_CUDA_VERSION=12080 cargo test --locked --features sm90 --no-run
fi
if [ "${1:-}" = --pack ]; then
  dest=$(mkdir -p "$2" && cd "$2" && pwd)
  # From the workspace root, where the xtask package is (the build above, found fresh).
  (cd "$root" && cargo xtask executables --tests --target candle_tensor --target candle_moe_layer \
    --target candle_doc_example \
    --copy-to "$dest" -- test --locked --manifest-path downstream/candle/Cargo.toml \
    "${profile[@]}" --features "$features" --no-run)
  (cd "$root" && cargo xtask executables --target candle_fused_moe --copy-to "$dest" -- \
    bench --locked --manifest-path downstream/candle/Cargo.toml --features "$features" --no-run)
  strip "$dest/candle_tensor" "$dest/candle_moe_layer" "$dest/candle_doc_example" \
    "$dest/candle_fused_moe"
fi
