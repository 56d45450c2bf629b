#!/usr/bin/env bash
# Builds the GPU test binaries and examples here and packs them into gpu-pack/ (git-ignored),
# a folder that runs on a GPU machine with no cargo and no network:
#
#     bash scripts/gpu-pack.sh [extra cargo args]     # here
#     bash gpu-pack/run.sh [test filter]              # there (needs only the NVIDIA driver)
#     bash gpu-pack/bench.sh [section]                # there: the benchmarks (BENCHMARKS.md)
#
# The binaries link cudart statically; they need the driver, libc and libstdc++ only.
# Features default to sm90 (what a Hopper machine runs; it shares the object cache with CI and
# sm90 users); FEATURES=sm90,sm100 also builds Blackwell, whose calls are then refused on Hopper.
set -euo pipefail
cd "$(dirname "$0")/.."
features=${FEATURES:-sm90}
python3 vendor/fetch.py all
rm -rf gpu-pack/bin gpu-pack/run.sh gpu-pack/bench.sh && mkdir -p gpu-pack/bin
cargo build --release -p flashinfer-rs --features "$features" --examples "$@"
cargo test --release --features "$features" --test gpu --no-run --message-format=json "$@" \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        print(msg["executable"])' > gpu-pack/.executables
while read -r exe; do
  cp "$exe" gpu-pack/bin/"$(basename "$exe" | sed 's/-[0-9a-f]\{16\}$//')"
done < gpu-pack/.executables
cargo bench --features "$features" --no-run --message-format=json "$@" \
  | python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["target"]["name"] == "moe_routing":
        print(msg["executable"])' | while read -r exe; do cp "$exe" gpu-pack/bin/moe_routing; done
for ex in flashinfer-rs/examples/*.rs; do
  name=$(basename "$ex" .rs)
  cp "target/release/examples/$name" gpu-pack/bin/
done
strip gpu-pack/bin/* 2>/dev/null || true
rm gpu-pack/.executables
cat > gpu-pack/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs the packed GPU tests (a missing GPU is a failure here), then the examples.
# Arguments go to the test binary (e.g. a test name filter, --nocapture).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export FLASHINFER_RS_REQUIRE_GPU=1
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader || true
"$here/bin/gpu" --test-threads=1 "$@"
for ex in "$here"/bin/[0-9][0-9]_*; do
  echo "== example $(basename "$ex")"
  "$ex"
done
RUN
chmod +x gpu-pack/run.sh
cat > gpu-pack/bench.sh <<'RUN'
#!/usr/bin/env bash
# Runs the benchmarks and prints BENCHMARKS.md's tables (optionally one section:
# replay | capture | readback | peers | host | topk).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader || true
"$here/bin/moe_routing" "$@"
RUN
chmod +x gpu-pack/bench.sh
du -sh gpu-pack/bin/*
# One compressed file to carry to a GPU machine (the device tool caps what it carries at 64 MiB;
# the GPU machines have xz, not zstd):  tar xJf gpu-pack.tar.xz && bash gpu-pack/run.sh
XZ_OPT=${XZ_OPT:--T0} tar cJf gpu-pack.tar.xz gpu-pack
du -sh gpu-pack.tar.xz
