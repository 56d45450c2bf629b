#!/usr/bin/env bash
# Packs the issue-16 prototype for a GPU machine: the pinned FlashInfer sources (fetched by
# vendor/fetch.py), CUTLASS's tools/util headers and the generated grouped GEMMs (both from the
# pinned flashinfer-python wheel), the TMA-WS-only patch applied, the harness and its scripts.
#
#     bash scripts/probes/cutlass-moe/pack.sh            # here: writes target/p16/p16.tar.xz
#     (device tool, carry target/p16/p16.tar.xz)
#     mkdir -p /tmp/w && cd /tmp/w && tar xJf $OLDPWD/target/p16/p16.tar.xz && bash src/proto/device.sh
set -euo pipefail
cd "$(dirname "$0")/../../.."
root=$PWD
python3 vendor/fetch.py all
# Where vendor/fetch.py put the tree and the wheels.
read -r vendor wheels < <(python3 -c '
import sys, tomllib
sys.path.insert(0, "vendor")
import fetch
print(fetch.vendor_dir(tomllib.load(open("vendor/MANIFEST.toml", "rb"))), fetch.cache_dir() / "wheels")')
wheel=$(ls "$wheels"/flashinfer_python-*.whl)
here=scripts/probes/cutlass-moe
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/src
mkdir -p "$src/flashinfer/csrc" "$src/cutlass" "$src/proto" "$src/compat"
cp -r "$vendor/flashinfer/csrc/nv_internal" "$vendor/flashinfer/csrc/fused_moe" "$src/flashinfer/csrc/"
cp "$vendor"/flashinfer/csrc/*.h "$src/flashinfer/csrc/"
cp -r "$vendor/flashinfer/include" "$src/flashinfer/"
cp -r "$vendor/cutlass/include" "$src/cutlass/"
# CUTLASS's tools/util headers, with vendor/fetch.py's own wheel extraction.
python3 -c '
import sys
from pathlib import Path
sys.path.insert(0, "vendor")
import fetch
fetch.extract_members(Path(sys.argv[1]), [("flashinfer/data/cutlass/tools/util/include/", Path(sys.argv[2]))])
' "$wheel" "$src/cutlass-util"
python3 $here/generate.py "$wheel" "$src/gen"
patch -p1 -d "$src/flashinfer" -i "$root/$here/tma-ws-only.patch"
cp $here/harness.cu $here/build.sh $here/device.sh "$src/proto/"
cp csrc/compat/*.h "$src/compat/"
mkdir -p target/p16
tar cf - -C "$work" src | xz -2 > target/p16/p16.tar.xz
ls -la target/p16/p16.tar.xz
