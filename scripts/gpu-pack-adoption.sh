#!/usr/bin/env bash
# Packs what proves adoption on a GPU machine (no cargo, no network there):
#   - the GPU suite built against the prebuilt kernel library (FLASHINFER_RS_KERNELS_LIB),
#     with the library and its sha256;
#   - downstream/candle's test: logits in a candle CUDA tensor, routed and captured.
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
FLASHINFER_RS_KERNELS_LIB=$lib CARGO_TARGET_DIR=$root/target/prebuilt \
  cargo test --release --features sm90 --test gpu --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' | while read -r exe; do cp "$exe" "$out/bin/gpu-prebuilt"; done
strip "$out/bin/gpu-prebuilt"
bash scripts/candle-check.sh --pack "$root/$out/bin"
cat > "$out/run.sh" <<RUN
#!/usr/bin/env bash
# The GPU suite against the prebuilt kernel library, then the candle-tensor test.
set -uo pipefail
here=\$(cd "\$(dirname "\$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1
status=0
echo "== GPU suite against \$(basename "$lib")"
FLASHINFER_RS_KERNELS_LIB=\$here/lib/$(basename "$lib") "\$here/bin/gpu-prebuilt" --test-threads=1 "\$@" || status=1
# candle links the CUDA 13 libraries it uses by SONAME: take them from the machine's
# PyTorch wheels (nvidia-cublas, nvidia-curand, nvidia-cuda-nvrtc, nvidia-cuda-runtime).
libs=\$(python3 - <<'PY'
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pat in ("libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libnvrtc.so.*",
                "libcudart.so.*"):
        for f in glob.glob(os.path.join(sp, "nvidia", "**", pat), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
PY
)
echo "== candle tensor test (LD_LIBRARY_PATH=\$libs)"
LD_LIBRARY_PATH=\$libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH} "\$here/bin/candle_tensor" --nocapture || status=1
exit \$status
RUN
chmod +x "$out/run.sh"
du -sh "$out"/bin/* "$out"/lib/*
