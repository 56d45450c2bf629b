#!/usr/bin/env bash
# The main demo: routes a batch with replay on a GPU and prints the captured experts; without
# a GPU it says so and shows what was built. Sets up its own toolchain and sources first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 vendor/fetch.py all
exec cargo run --release -p flashinfer-rs --features "${FEATURES:-sm90}" --example 01_route "$@"
