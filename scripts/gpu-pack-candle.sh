#!/usr/bin/env bash
# Packs downstream/candle's tests for a GPU machine (no cargo, no network there): logits in a
# candle CUDA tensor routed and captured, and a whole MoE layer from candle tensors against
# candle's own f32 layer; and the peer of the layer bench, candle's own fused MoE
# (downstream/candle/benches/candle_fused_moe.rs).
#
#     bash scripts/gpu-pack-candle.sh [DIR]     # here: DIR (default gpu-pack/candle, then tarred
#                                               # alone into gpu-pack-candle.tar.xz)
#     bash DIR/run.sh                           # there: the tests, FLASHINFER_RS_REQUIRE_GPU=1
#     bash DIR/bench.sh [qwen3|deepseek]        # there: the bench (MOE_LAYER_TOKENS picks rows)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-gpu-pack/candle}
case $out in /*) ;; *) out=$root/$out ;; esac
rm -rf "$out" && mkdir -p "$out/bin"
bash scripts/candle-check.sh --pack "$out/bin"
cp scripts/pack-cuda-libs.sh "$out/"
cat > "$out/run.sh" <<'RUN'
#!/usr/bin/env bash
# downstream/candle's tests; a missing GPU or Hopper layer is a failure here.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1
source "$here/pack-cuda-libs.sh" # candle's CUDA libraries, from PyTorch's wheels
status=0
for t in candle_tensor candle_moe_layer candle_doc_example; do
  echo "== downstream/candle: $t"
  "$here/bin/$t" --nocapture --test-threads=1 "$@" || status=1
done
exit $status
RUN
chmod +x "$out/run.sh"
cat > "$out/bench.sh" <<'RUN'
#!/usr/bin/env bash
# candle's own fused MoE timed on the layer bench's layers and sizes; arguments name the layers
# (qwen3, deepseek; default both), MOE_LAYER_TOKENS=1,8,64 picks the rows.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
source "$here/pack-cuda-libs.sh" # candle's CUDA libraries, from PyTorch's wheels
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
"$here/bin/candle_fused_moe" "$@"
RUN
chmod +x "$out/bench.sh"
du -sh "$out"/bin/*
# The default folder travels in its own tarball (gpu-proof.sh unpacks it beside gpu-pack.tar.xz).
if [ "$out" = "$root/gpu-pack/candle" ]; then
  XZ_OPT=${XZ_OPT:--T0} tar cJf gpu-pack-candle.tar.xz gpu-pack/candle
  du -sh gpu-pack-candle.tar.xz
fi
