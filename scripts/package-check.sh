#!/usr/bin/env bash
# Proves the published crates are self-contained: packages flashinfer-sys and flashinfer-rs
# (`cargo package`), unpacks the .crate files into a clean directory outside the workspace, and
# builds a small application against the unpacked crates there, as a user of crates.io would:
#   1. without features (no nvcc, no fetched sources);
#   2. `DOCS_RS=1 cargo doc`, as docs.rs builds it;
#   3. with `sm90`, after running the packaged `vendor/fetch.py` as the build's error message
#      tells a user to (the object cache makes this cheap after the main build).
# and checks that none of these builds wrote into the unpacked crates.
#
# `cargo package`'s own verification is off (--no-verify) because it cannot be trusted with a
# kept target dir: it builds the packaged crates under the same name, version and path on
# every run, and cargo judges such a build by those (flashinfer-rs sees the packaged
# flashinfer-sys as a registry crate of a version it has built before) and by mtimes (a .crate's
# files all carry one fixed 2006 mtime), so it reuses the last run's build. CI built the new
# flashinfer-rs against a flashinfer-sys packaged before the CUTLASS MoE existed that way, and
# failed. The unpacked crates here live in a fresh directory, so cargo has never built them:
# the no-feature build below is that verification, from sources no older build can stand for.
# CI runs it from scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
work=$(mktemp -d "${TMPDIR:-/tmp}/flashinfer-rs-package.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "== package-check: cargo package"
rm -f "$target"/package/flashinfer-*.crate
cargo package --workspace --exclude flashinfer-rs-serve --exclude xtask \
  --allow-dirty --no-verify --quiet
mkdir -p "$work/crates"
for c in "$target"/package/flashinfer-sys-*.crate "$target"/package/flashinfer-rs-*.crate; do
  tar xzf "$c" -C "$work/crates"
done
sys=$(echo "$work"/crates/flashinfer-sys-*)
rs=$(echo "$work"/crates/flashinfer-rs-*)
for f in csrc/flashinfer_rs.h vendor/MANIFEST.toml vendor/fetch.py LICENSE README.md; do
  [ -f "$sys/$f" ] || { echo "package-check: flashinfer-sys lacks $f" >&2; exit 1; }
done

# What the unpacked crates hold, to show at the end that no build wrote into them.
contents() { (cd "$work/crates" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }
contents > "$work/contents.before"

mkdir -p "$work/app/src"
cat > "$work/app/Cargo.toml" <<EOF
[package]
name = "package-check-app"
version = "0.0.0"
edition = "2021"
publish = false

[features]
sm90 = ["flashinfer-rs/sm90"]

[dependencies]
flashinfer-rs = "=0.1.0"

[patch.crates-io]
flashinfer-rs = { path = "$rs" }
flashinfer-sys = { path = "$sys" }
EOF
cat > "$work/app/src/main.rs" <<'EOF'
fn main() {
    let info = flashinfer_rs::build_info();
    println!("built against FlashInfer {}: {info:?}", flashinfer_rs::FLASHINFER_VERSION);
}
EOF
# The workspace's lock file pins the same dependency versions the crates were tested with.
cp "$root/Cargo.lock" "$work/app/Cargo.lock"
cd "$work/app"
# The workspace's target dir: the unpacked crates build from their own paths (so cargo builds
# them afresh), and the registry dependencies they share with the workspace are reused.
export CARGO_TARGET_DIR=$target

echo "== package-check: build without features"
cargo build --quiet
"$CARGO_TARGET_DIR/debug/package-check-app"

echo "== package-check: DOCS_RS=1 cargo doc"
DOCS_RS=1 cargo doc --quiet --no-deps -p flashinfer-rs -p flashinfer-sys

echo "== package-check: build with sm90 from the package's own vendor/fetch.py"
python3 "$sys/vendor/fetch.py" all
cargo build --quiet --features sm90
"$CARGO_TARGET_DIR/debug/package-check-app"
contents > "$work/contents.after"
if ! diff -u "$work/contents.before" "$work/contents.after"; then
  echo "package-check: a build wrote into the unpacked crates (diff above)" >&2
  exit 1
fi
echo "== package-check: passed"
