#!/usr/bin/env bash
# Builds the GPU test binaries and examples here and packs them into gpu-pack/ (git-ignored),
# a folder that runs on a GPU machine with no cargo and no network:
#
#     bash scripts/gpu-pack.sh [extra cargo args]     # here
#     bash gpu-pack/run.sh [test filter]              # there (needs only the NVIDIA driver)
#     bash gpu-pack/bench.sh [section]                # there: the benchmarks (BENCHMARKS.md)
#
# The binaries link cudart statically; they need the driver, libc and libstdc++ only.
# Features default to sm90-moe-fp8 (what a Hopper machine runs: routing and the CUTLASS fused
# MoE, bf16 and fp8; it shares the object cache with CI); FEATURES=sm90-moe-fp8,sm100 also
# builds Blackwell, whose calls are then refused on Hopper.
# `nccl` is always added: the multi-rank harness (flashinfer-rs/tests/ranks) runs from the pack too.
set -euo pipefail
cd "$(dirname "$0")/.."
features=${FEATURES:-sm90-moe-fp8},nccl
python3 flashinfer-sys/vendor/fetch.py all
# The peers the benches are compared with (vLLM's Triton fused MoE and triton_kernels top-k,
# SGLang's moe_fused_gate): sha-pinned, extracted to gpu-pack/peers/vllm and gpu-pack/peers/sglang.
bash scripts/fetch-peers.sh gpu-pack/peers
rm -rf gpu-pack/bin gpu-pack/run.sh gpu-pack/bench.sh gpu-pack/ranks.sh && mkdir -p gpu-pack/bin
cargo build --release -p flashinfer-rs --features "$features" --examples "$@"
# The test and bench executables cargo built, copied under their target names (xtask/).
cargo xtask executables --tests --copy-to gpu-pack/bin -- \
  test --release -p flashinfer-rs --features "$features" --test gpu --test ranks --no-run "$@"
cargo xtask executables --target moe_routing --target moe_layer --copy-to gpu-pack/bin -- \
  bench -p flashinfer-rs --features "$features" --no-run "$@"
for ex in flashinfer-rs/examples/*.rs; do
  name=$(basename "$ex" .rs)
  cp "target/release/examples/$name" gpu-pack/bin/
done
strip gpu-pack/bin/* 2>/dev/null || true
cat > gpu-pack/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs the packed GPU tests (a missing GPU is a failure here), then the examples.
# Arguments go to the test binary (e.g. a test name filter, --nocapture).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader || true
"$here/bin/gpu" --test-threads=1 "$@"
bash "$here/ranks.sh"
for ex in "$here"/bin/[0-9][0-9]_*; do
  echo "== example $(basename "$ex")"
  "$ex"
done
RUN
# A pack with the CUTLASS MoE must run it: its tests then fail instead of skipping.
case ",$features," in
  *,sm90-moe,* | *,sm90-moe-fp8,*) sed -i 's/^export FLASHINFER_RS_REQUIRE_GPU=1$/&\nexport FLASHINFER_RS_REQUIRE_CUTLASS_MOE=1/' gpu-pack/run.sh ;;
esac
chmod +x gpu-pack/run.sh
cat > gpu-pack/bench.sh <<'RUN'
#!/usr/bin/env bash
# Runs the benchmarks and prints BENCHMARKS.md's tables (optionally one section:
# replay | capture | readback | peers | host | topk | layer [qwen3|deepseek], the last the
# Hopper MoE layer of a pack built with sm90-moe).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
if [ "${1:-}" != layer ]; then "$here/bin/moe_routing" "$@"; fi
if [ -z "${1:-}" ] || [ "${1:-}" = layer ]; then
  if [ -x "$here/bin/moe_layer" ]; then
    "$here/bin/moe_layer" "${@:2}"
  else
    echo "(no moe_layer bench: pack built without sm90-moe)"
  fi
fi
RUN
chmod +x gpu-pack/bench.sh
cat > gpu-pack/ranks.sh <<'RUN'
#!/usr/bin/env bash
# The multi-rank capture harness (flashinfer-rs/tests/ranks): FLASHINFER_RS_RANKS processes (default: the
# GPU count, at least 2) over NCCL; on one GPU the ranks share it. cudarc loads `libnccl.so`:
# this finds NCCL (NCCL_LIB_DIR, the system's, or the nvidia-nccl wheel of the machine's
# python) and links that name to it in a scratch folder on the library path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1 NCCL_NVLS_ENABLE=0
lib=${NCCL_LIB_DIR:-}
if [ -z "$lib" ]; then
  so=$(ldconfig -p 2>/dev/null | awk '/libnccl\.so/ {print $NF; exit}')
  [ -n "$so" ] && lib=$(dirname "$so")
fi
if [ -z "$lib" ]; then
  lib=$(python3 -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null || true)
fi
[ -n "$lib" ] && [ -e "$lib/libnccl.so.2" ] || { echo "ranks.sh: no libnccl.so.2 found (set NCCL_LIB_DIR)" >&2; exit 1; }
names=$(mktemp -d)
trap 'rm -rf "$names"' EXIT
ln -s "$lib/libnccl.so.2" "$names/libnccl.so"
echo "== ranks harness: NCCL from $lib"
LD_LIBRARY_PATH=$names:$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} "$here/bin/ranks" "$@"
RUN
chmod +x gpu-pack/ranks.sh
du -sh gpu-pack/bin/*
# One compressed file to carry to a GPU machine (the device tool caps what it carries at 64 MiB;
# the GPU machines have xz, not zstd):  tar xJf gpu-pack.tar.xz && bash gpu-pack/run.sh
# gpu-pack/serve and gpu-pack/candle (scripts/gpu-pack-serve.sh, gpu-pack-candle.sh) travel in
# their own tarballs: candle's binaries alone are 31 MB compressed, and this pack with a
# candidate's beside it must stay under 64 MiB.
XZ_OPT=${XZ_OPT:--T0} tar cJf gpu-pack.tar.xz --exclude=gpu-pack/serve --exclude=gpu-pack/candle \
  gpu-pack
du -sh gpu-pack.tar.xz
