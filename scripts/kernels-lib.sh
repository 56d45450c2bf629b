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
set -euo pipefail
cd "$(dirname "$0")/.."
features=${1:-sm90}
out=${2:-$PWD/target/kernels-lib}
mkdir -p "$out"
python3 flashinfer-sys/vendor/fetch.py all >&2
# The kernels as the normal build makes them (object cache included); the build script
# writes its link line to OUT_DIR/kernels-link.txt. The dev profile: nvcc's flags do not depend
# on cargo's profile (the library is the same either way), and a workspace that built these
# features already has this build script's output.
out_dir=$(env -u FLASHINFER_RS_KERNELS_LIB cargo build -p flashinfer-sys \
    --features "$features" --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and m["package_id"].find("flashinfer-sys") >= 0:
        print(m["out_dir"])' | tail -n 1)
[ -f "$out_dir/kernels-link.txt" ] || { echo "kernels-lib: no kernels-link.txt in $out_dir" >&2; exit 1; }

search=() whole=() libs=() targets=
while read -r kind value; do
  case $kind in
    targets) targets=$value ;;
    search) search+=("-L$value") ;;
    lib)
      case $value in
        static=flashinfer_rs_*) whole+=("$out_dir/lib${value#static=}.a") ;;
        static=*) libs+=("-l${value#static=}") ;;
        dylib=*) libs+=("-l${value#dylib=}") ;;
      esac
      ;;
  esac
done <"$out_dir/kernels-link.txt"

version=$(sed -n 's/^version = "\([^+"]*\)+flashinfer\.\([^"]*\)"/\1-flashinfer\2/p' flashinfer-sys/Cargo.toml)
# With the CUTLASS fused MoE (feature sm90-moe) the name says so.
moe=
case ",$features," in *,sm90-moe,*) moe=-cutlass-moe ;; esac
name="libflashinfer-rs-kernels-${version}-${targets//,/-}${moe}.so"
map=$(mktemp)
trap 'rm -f "$map"' EXIT
echo '{ global: fi_*; local: *; };' >"$map"
g++ -shared -o "$out/$name" \
  -Wl,--whole-archive "${whole[@]}" -Wl,--no-whole-archive \
  "${search[@]}" "${libs[@]}" \
  -Wl,-soname,"$name" -Wl,--version-script="$map" -Wl,-z,defs -Wl,--as-needed
(cd "$out" && sha256sum "$name" >"$name.sha256")
echo "$out/$name"
