#!/usr/bin/env bash
# A candidate kernel's pack, to run beside main's in one GPU call: builds the GPU test binary and
# the layer and routing benches of REV (a commit or branch, e.g. decode-fused-quant-pdl) with
# PATCHES applied on top (git apply, e.g. a candidate of flashinfer-sys/csrc/probe/variants) in a
# git worktree, and packs them as NAME/bin/{gpu,moe_layer,moe_routing} into NAME.tar.xz
# (git-ignored):
#
#     bash scripts/gpu-pack-variant.sh REV NAME [PATCH ...]   # here, e.g.
#         bash scripts/gpu-pack-variant.sh main gpu-pack-vN \
#           flashinfer-sys/csrc/probe/variants/000N-....patch   # or flashinfer-sys/candidates/
#     PACK=NAME OUT=<dir> bash scripts/gpu-proof.sh layer-tests <filters>   # there
#     PACK=NAME OUT=<dir> bash scripts/gpu-proof.sh variant-bench
#
# A pack whose kernels (flashinfer-sys/csrc, and the vendored trees' patches and pins in
# flashinfer-sys/vendor) equal HEAD's is refused: it would time main against itself (session 20
# did, from a branch that carried a candidate's patch file but not its code). The kernels' object
# cache is shared with main's builds, so only the changed sources compile; a REV whose vendor
# patches differ re-extracts the shared source trees for its build (vendor/fetch.py), and this
# script puts HEAD's back when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
rev=${1:?usage: $0 REV NAME [PATCH ...]}
name=${2:?usage: $0 REV NAME [PATCH ...]}
patches=()
for patch in "${@:3}"; do patches+=("$(realpath "$patch")"); done
features=${FEATURES:-sm90-moe-fp8}
root=$(pwd)
tree=$(mktemp -d)/tree
trap 'git -C "$root" worktree remove --force "$tree" 2>/dev/null || true
  python3 "$root/flashinfer-sys/vendor/fetch.py" all > /dev/null || true' EXIT
git worktree add --detach "$tree" "$rev"
# The fetched upstream trees are git-ignored: the worktree borrows main's.
for fetched in flashinfer-sys/vendor/fetched*; do
  [ -e "$fetched" ] && ln -s "$root/$fetched" "$tree/$fetched"
done
for patch in "${patches[@]}"; do git -C "$tree" apply "$patch"; done
kernels=(flashinfer-sys/csrc flashinfer-sys/vendor)
if git -C "$tree" diff --quiet HEAD -- "${kernels[@]}" \
  && [ -z "$(git -C "$root" diff HEAD "$rev" -- "${kernels[@]}")" ]; then
  echo "$rev with ${#patches[@]} patch(es) has HEAD's kernels (${kernels[*]}): nothing to compare" >&2
  exit 1
fi
rm -rf "$name" && mkdir -p "$name/bin"
(
  cd "$tree"
  export CARGO_TARGET_DIR=$root/target/variant
  python3 flashinfer-sys/vendor/fetch.py all
  cargo xtask executables --tests --copy-to "$root/$name/bin" -- \
    test --release -p flashinfer-rs --features "$features" --test gpu --no-run
  cargo xtask executables --target moe_layer --target moe_routing --copy-to "$root/$name/bin" -- \
    bench -p flashinfer-rs --features "$features" --no-run
)
strip "$name/bin/"* 2>/dev/null || true
{ git rev-parse "$rev"; for patch in "${patches[@]}"; do echo "+ $(basename "$patch")"; done; } > "$name/REV"
XZ_OPT=${XZ_OPT:--T0} tar cJf "$name.tar.xz" "$name"
du -sh "$name.tar.xz"
