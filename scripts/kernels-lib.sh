#!/usr/bin/env bash
# Builds the prebuilt kernel library: the kernels and the C ABI of flashinfer-sys as one
# shared library, so that downstream builds need neither nvcc nor the FlashInfer sources:
#
#     bash scripts/kernels-lib.sh [FEATURES] [OUT_DIR]      # default: sm90 target/kernels-lib
#     FLASHINFER_RS_KERNELS_LIB=$PWD/target/kernels-lib/<name>.so cargo build ...
#
# The name carries the crate version, the FlashInfer version and the machine-code targets
# (libflashinfer-rs-kernels-0.1.0-flashinfer0.6.13-sm_90a.so, `-cutlass-moe` added with the
# sm90-moe feature); a `<name>.sha256` is written
# beside it. The library exports only the C ABI (fi_*): its static cudart and tvm-ffi stay
# private. At run time it needs the NVIDIA driver, libc, libstdc++ and nothing else.
# flashinfer-sys checks the sha256 and the library's record (crate, FlashInfer and ABI
# versions, targets) before first use (flashinfer-sys/src/prebuilt.rs).
#
# The work is `cargo xtask kernels-lib` (xtask/src/kernels_lib.rs): it fetches the sources,
# builds flashinfer-sys with FEATURES as the normal build does (object cache included), links
# the build script's link line (kernels-link.txt) into the library with g++ and prints the
# library's path last.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo xtask kernels-lib "$@"
