#!/usr/bin/env bash
# Builds the GPU test binary against FlashInfer 0.6.13 *as released*: without our numeric
# fixes (flashinfer-sys/vendor/patches/0002-0006 and 0010; the Llama4 replay backport 0001 stays, or Llama4
# routing with replay is refused). It exists to prove that the degenerate-input tests fail without
# those patches (issue: "the same tests fail on the unpatched tree"):
#
#     bash scripts/gpu-pack-released.sh          # here: gpu-pack/released/ (sm_90a only)
#     bash gpu-pack/released/run.sh              # there: the degenerate tests, expected to FAIL
#
# It fetches a second tree into flashinfer-sys/vendor/fetched-released and builds in target/released, so the
# normal build is untouched (xtask itself stays built in target/); FLASHINFER_RS_ALLOW_UNPATCHED=1 lets flashinfer-sys take that tree.
set -euo pipefail
cd "$(dirname "$0")/.."
skip=(--skip-patch 0002 --skip-patch 0003 --skip-patch 0004 --skip-patch 0005 --skip-patch 0006
  --skip-patch 0010)
export FLASHINFER_RS_VENDOR_DIR="$PWD/flashinfer-sys/vendor/fetched-released"
export FLASHINFER_RS_ALLOW_UNPATCHED=1
target_dir="$PWD/target/released"
python3 flashinfer-sys/vendor/fetch.py toolchain
python3 flashinfer-sys/vendor/fetch.py sources "${skip[@]}"
out=gpu-pack/released
rm -rf "$out" && mkdir -p "$out/bin"
cargo xtask executables --tests --copy-to "$out/bin" --rename gpu -- \
  test --release -p flashinfer-rs --features sm90 --test gpu --no-run --target-dir "$target_dir"
strip "$out/bin/gpu"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# The degenerate-input tests (Router's, and NoAuxTc's numeric edges) on kernels as FlashInfer
# 0.6.13 released them: each is expected to FAIL. Prints each verdict; exits 0 only when one
# of them passed (the patches would then prove nothing), as scripts/gpu-hardening.sh's
# `released` stage reads it.
here=$(cd "$(dirname "$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1
passed=0
for filter in degenerate:: noaux::noaux_tc_matches_the_oracle_at_the_numeric_edges; do
  if "$here/bin/gpu" --test-threads=1 "$filter" "$@"; then
    echo "released kernels: $filter PASSED (expected to fail)"
    passed=1
  else
    echo "released kernels: $filter failed, as expected without our patches"
  fi
done
[ "$passed" = 1 ]
RUN
chmod +x "$out/run.sh"
du -sh "$out/bin/gpu"
