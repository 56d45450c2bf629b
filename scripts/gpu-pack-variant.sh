#!/usr/bin/env bash
# A candidate kernel's pack, to run beside main's in one GPU call: builds the GPU test binary and
# the layer bench of REV (a commit or branch, e.g. decode-fused-quant-pdl) in a git worktree and
# packs them as NAME/bin/{gpu,moe_layer} into NAME.tar.xz (about 5 MB; git-ignored):
#
#     bash scripts/gpu-pack-variant.sh REV NAME      # here, e.g. decode-fused-quant-pdl gpu-pack-v4
#     PACK=NAME OUT=<dir> bash scripts/gpu-proof.sh layer-tests <filters>   # there
#     PACK=NAME OUT=<dir> bash scripts/gpu-proof.sh variant-bench
#
# The kernels' object cache is shared with main's builds, so only the changed sources compile.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: $0 REV NAME}
name=${2:?usage: $0 REV NAME}
features=${FEATURES:-sm90-moe-fp8}
root=$(pwd)
tree=$(mktemp -d)/tree
trap 'git -C "$root" worktree remove --force "$tree" 2>/dev/null || true' EXIT
git worktree add --detach "$tree" "$rev"
# The fetched upstream trees are git-ignored: the worktree borrows main's.
for fetched in flashinfer-sys/vendor/fetched*; do
  [ -e "$fetched" ] && ln -s "$root/$fetched" "$tree/$fetched"
done
rm -rf "$name" && mkdir -p "$name/bin"
(
  cd "$tree"
  export CARGO_TARGET_DIR=$root/target/variant
  cargo xtask executables --tests --copy-to "$root/$name/bin" -- \
    test --release -p flashinfer-rs --features "$features" --test gpu --no-run
  cargo xtask executables --target moe_layer --copy-to "$root/$name/bin" -- \
    bench -p flashinfer-rs --features "$features" --no-run
)
strip "$name/bin/"* 2>/dev/null || true
git rev-parse "$rev" > "$name/REV"
XZ_OPT=${XZ_OPT:--T0} tar cJf "$name.tar.xz" "$name"
du -sh "$name.tar.xz"
