#!/usr/bin/env bash
# The Blackwell (GB200/B200) suite, for owners of an sm_100 GPU: sets up the pinned sources,
# cubins and nvcc (sha-checked, cached under ~/.cache/flashinfer-rs), then runs every test with
# the sm100 kernels, the fused MoE suite (flashinfer-rs/tests/gpu/fused_sm100.rs) included.
#
#   FLASHINFER_RS_REQUIRE_SM100=1 FLASHINFER_RS_REQUIRE_GPU=1 bash scripts/test-sm100.sh
#
# Without the variables, tests that need a GPU or an sm_100 GPU skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 flashinfer-sys/vendor/fetch.py all
eval "$(python3 flashinfer-sys/vendor/fetch.py print-env)"
cargo test --workspace --features sm100 "$@"
