#!/usr/bin/env bash
# Packs downstream/candle's tests for a GPU machine (no cargo, no network there): logits in a
# candle CUDA tensor routed and captured, and a whole MoE layer from candle tensors against
# candle's own f32 layer.
#
#     bash scripts/gpu-pack-candle.sh [DIR]     # here: DIR (default gpu-pack/candle)
#     bash DIR/run.sh                           # there: both, FLASHINFER_RS_REQUIRE_GPU=1
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
du -sh "$out"/bin/*
