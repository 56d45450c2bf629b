#!/usr/bin/env bash
# Packs what proves adoption on a GPU machine (no cargo, no network there):
#   - the GPU suite built against the prebuilt kernel library (FLASHINFER_RS_KERNELS_LIB),
#     with the library and its sha256;
#   - downstream/candle's tests (scripts/gpu-pack-candle.sh): logits in a candle CUDA tensor,
#     routed and captured; a whole MoE layer from candle tensors.
#
#     bash scripts/gpu-pack-adoption.sh        # here: gpu-pack/adoption/
#     bash gpu-pack/adoption/run.sh            # there: both, FLASHINFER_RS_REQUIRE_GPU=1
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=gpu-pack/adoption
rm -rf "$out" && mkdir -p "$out/bin" "$out/lib"
lib=$(bash scripts/kernels-lib.sh sm90 "$root/target/kernels-lib" | tail -n 1)
cp "$lib" "$lib.sha256" "$out/lib/"
# Its own target dir (--target-dir: xtask itself stays built in target/).
FLASHINFER_RS_KERNELS_LIB=$lib \
  cargo xtask executables --tests --copy-to "$out/bin" --rename gpu-prebuilt -- \
  test --release -p flashinfer-rs --features sm90 --test gpu --no-run --target-dir "$root/target/prebuilt"
strip "$out/bin/gpu-prebuilt"
bash scripts/gpu-pack-candle.sh "$out/candle"
cat > "$out/run.sh" <<RUN
#!/usr/bin/env bash
# The GPU suite against the prebuilt kernel library, then downstream/candle's tests.
set -uo pipefail
here=\$(cd "\$(dirname "\$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1
status=0
echo "== GPU suite against \$(basename "$lib")"
FLASHINFER_RS_KERNELS_LIB=\$here/lib/$(basename "$lib") "\$here/bin/gpu-prebuilt" --test-threads=1 "\$@" || status=1
bash "\$here/candle/run.sh" || status=1
exit \$status
RUN
chmod +x "$out/run.sh"
du -sh "$out"/bin/* "$out"/lib/*
