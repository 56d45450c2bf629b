#!/usr/bin/env bash
# Packs the reference server (serve/) built for the GPU (`--features cuda`: every MoE layer
# through flashinfer-rs's Hopper layer) with its tests, the transformers fixtures and the
# client repro, for a GPU machine with no cargo and no network:
#
#     bash scripts/gpu-pack-serve.sh [DIR]     # here: DIR (default gpu-pack/serve)
#     bash DIR/run.sh                          # there: the serve tests on the Hopper backend,
#                                              # the client repro, the fixtures' reproduction
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-gpu-pack/serve}
case $out in /*) ;; *) out=$root/$out ;; esac
source scripts/candle-env.sh
rm -rf "$out" && mkdir -p "$out/bin" "$out/fixtures" "$out/client"
cargo build --locked --release -p flashinfer-rs-serve --features cuda --bins
cp "$CARGO_TARGET_DIR/release/flashinfer-serve" "$out/bin/"
[ -x "$CARGO_TARGET_DIR/release/serve-bench" ] && cp "$CARGO_TARGET_DIR/release/serve-bench" "$out/bin/"
cargo xtask executables --tests --copy-to "$out/bin" --prefix test- -- \
  test --locked --release -p flashinfer-rs-serve --features cuda --no-run
strip "$out"/bin/*
cp -r serve/fixtures/tiny-qwen3-moe serve/fixtures/expected.json serve/fixtures/tiny-qwen3-moe-fp8 \
  serve/fixtures/expected-fp8.json serve/fixtures/make_fixtures.py "$out/fixtures/"
cp serve/client/seed_repro.py "$out/client/"
cp scripts/serve-client-test.sh "$out/"
[ -d serve/bench ] && cp -r serve/bench "$out/"
cp scripts/pack-cuda-libs.sh "$out/"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# The reference server on the GPU: its tests with every MoE layer on the Hopper backend, the
# seed's scenario played by a client (curl + numpy), and transformers' fixtures reproduced by
# this machine's transformers. A missing GPU is a failure here.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1 FLASHINFER_RS_SERVE_BACKEND=hopper
export FLASHINFER_RS_SERVE_FIXTURES=$here/fixtures
source "$here/pack-cuda-libs.sh" # candle's CUDA libraries, from PyTorch's wheels
status=0
for t in "$here"/bin/test-*; do
  echo "== $(basename "$t") (MoE on the Hopper backend)"
  "$t" --test-threads=1 --nocapture "$@" || status=1
done
echo "== the seed's scenario, client side (curl + numpy), Hopper backend"
FLASHINFER_SERVE_BIN=$here/bin/flashinfer-serve BACKEND=hopper PYTHON=python3 \
  FIXTURES=$here/fixtures CLIENT=$here/client/seed_repro.py bash "$here/serve-client-test.sh" || status=1
echo "== transformers' fixtures reproduced by this machine's transformers"
python3 "$here/fixtures/make_fixtures.py" --out "$here/fixtures" --check || status=1
exit $status
RUN
chmod +x "$out/run.sh"
du -sh "$out"/bin/*
