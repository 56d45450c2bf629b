#!/usr/bin/env python3
"""Fetch, verify and extract the pinned third-party inputs of flashinfer-rs.

This is the only place in the project that touches the network. Everything it downloads is
named in vendor/MANIFEST.toml with an exact file name and sha256; a wheel whose hash differs
is refused with an error that names the file and both hashes.

    python3 vendor/fetch.py sources     # FlashInfer sources/headers, tvm-ffi, sm100 cubins
    python3 vendor/fetch.py toolchain   # CUDA 13.0 nvcc from the package registry
    python3 vendor/fetch.py all         # both
    python3 vendor/fetch.py print-env   # shell exports for the fetched toolchain/cubins
    python3 vendor/fetch.py sources --skip-patch 0002   # a tree without one of our patches

Idempotent: a tree whose stamp matches the manifest is not fetched or extracted again.

Locations (all overridable):
    FLASHINFER_RS_CACHE     download cache and toolchain prefix   (~/.cache/flashinfer-rs)
    FLASHINFER_RS_VENDOR_DIR  extracted source tree               (<cache>/sources/flashinfer-<version>)
                            (the CUTLASS MoE's tree goes beside it: <that>-cutlass-moe)
    FLASHINFER_CUBIN_DIR    cubin cache root                      (<cache>/cubins)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
STAMP = ".flashinfer-rs-stamp.json"
# Which patches are applied. Kept apart from STAMP (whose content keys flashinfer-sys's object
# cache) because a patch that touches only a .cu file is already covered by that file's hash.
PATCH_STAMP = ".flashinfer-rs-patches.json"


class FetchError(Exception):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("FLASHINFER_RS_CACHE", Path.home() / ".cache" / "flashinfer-rs"))


def vendor_dir(manifest: dict) -> Path:
    """The extracted tree; flashinfer-sys's build.rs uses the same default."""
    default = cache_dir() / "sources" / f"flashinfer-{manifest['flashinfer']['version']}"
    return Path(os.environ.get("FLASHINFER_RS_VENDOR_DIR", default))


def cutlass_moe_dir(manifest: dict) -> Path:
    """The CUTLASS fused MoE's own tree, beside the main one; build.rs derives it the same way."""
    tree = vendor_dir(manifest)
    return tree.with_name(tree.name + "-cutlass-moe")


def cubin_dir() -> Path:
    return Path(os.environ.get("FLASHINFER_CUBIN_DIR", cache_dir() / "cubins"))


def toolchain_prefix() -> Path:
    return cache_dir() / "cuda-13.0"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg: str) -> None:
    print(f"[fetch] {msg}", file=sys.stderr, flush=True)


def verified_wheel(entry: dict, wheels: Path, offline: bool) -> Path:
    """Return the path of the pinned wheel in `wheels`, downloading it if absent.

    A present file with the wrong hash is never silently replaced: it is an error, because it
    means the cache or the registry served something other than what we pinned.
    """
    path = wheels / entry["file"]
    if not path.exists():
        if offline:
            raise FetchError(f"{path} is missing and --offline was given")
        download(entry, wheels)
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise FetchError(
            f"sha256 mismatch for {path}:\n"
            f"  expected {entry['sha256']}\n"
            f"  actual   {actual}\n"
            f"The file is not the pinned {entry['name']}=={entry['version']}. Delete it to fetch "
            f"it again; if the registry keeps serving it, the pin needs review."
        )
    return path


def download(entry: dict, wheels: Path) -> None:
    wheels.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--disable-pip-version-check", "-d", tmp,
            *entry.get("pip_args", []),
            f"{entry['name']}=={entry['version']}",
        ]
        log(f"downloading {entry['name']}=={entry['version']}")
        subprocess.run(cmd, check=True)
        got = Path(tmp) / entry["file"]
        if not got.exists():
            names = ", ".join(p.name for p in Path(tmp).iterdir())
            raise FetchError(f"pip fetched {names or 'nothing'}, not the pinned {entry['file']}")
        got.replace(wheels / entry["file"])


def extract_members(whl: Path, rules: list[tuple[str, Path]], skip: set[str] = frozenset()) -> int:
    """Copy every wheel member under a rule's prefix to the rule's destination."""
    n = 0
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            if info.is_dir() or info.filename in skip:
                continue
            for prefix, dest in rules:
                if info.filename == prefix:
                    target = dest
                elif prefix.endswith("/") and info.filename.startswith(prefix):
                    target = dest / info.filename[len(prefix):]
                else:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                mode = (info.external_attr >> 16) & 0o777
                if mode & 0o111:
                    target.chmod(0o755)
                n += 1
                break
    return n


def stamp_matches(tree: Path, expected: dict, name: str = STAMP) -> bool:
    try:
        return json.loads((tree / name).read_text()) == expected
    except (OSError, ValueError):
        return False


def write_stamp(tree: Path, stamp: dict, name: str = STAMP) -> None:
    (tree / name).write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")


def fetch_sources(manifest: dict, offline: bool, skip: list[str] = ()) -> None:
    tree = vendor_dir(manifest)
    stamp = {s["name"]: s["sha256"] for s in manifest["source"]}
    patches = [p for p in manifest.get("patch", []) if not any(p["file"].startswith(k) for k in skip)]
    if skip:
        log(f"leaving out {len(manifest.get('patch', [])) - len(patches)} patch(es): {', '.join(skip)}"
            " (the build then needs FLASHINFER_RS_ALLOW_UNPATCHED=1)")
    # Patches that change headers can change any object: they key the main stamp too.
    for p in patches:
        if touches_headers(HERE / "patches" / p["file"]):
            stamp["patch:" + p["file"]] = p["sha256"]
    patch_stamp = {p["file"]: p["sha256"] for p in patches}
    needs_cubins = any("cubins" in s for s in manifest["source"])
    cubins_done = not needs_cubins or check_cubins(manifest, quiet=True)
    if stamp_matches(tree, stamp) and stamp_matches(tree, patch_stamp, PATCH_STAMP) and cubins_done:
        log(f"sources up to date in {tree}")
        return
    wheels = cache_dir() / "wheels"
    fresh = tree.with_name(tree.name + ".partial")
    shutil.rmtree(fresh, ignore_errors=True)
    for entry in manifest["source"]:
        whl = verified_wheel(entry, wheels, offline)
        rules = [(src, fresh / dst) for src, dst in entry["extract"]]
        n = extract_members(whl, rules)
        log(f"{entry['name']}: {n} files -> {tree}")
        if "cubins" in entry and not cubins_done:
            extract_cubins(manifest, whl, entry["cubins"])
    for p in patches:
        apply_patch(p, fresh)
    write_stamp(fresh, stamp)
    write_stamp(fresh, patch_stamp, PATCH_STAMP)
    shutil.rmtree(tree, ignore_errors=True)
    fresh.rename(tree)
    log(f"sources ready in {tree}")


def fetch_cutlass_moe(manifest: dict, offline: bool) -> None:
    """The CUTLASS fused MoE's tree (feature `sm90-moe`): its sources extracted from the
    flashinfer-python wheel, the grouped GEMMs upstream's generator makes from them, and its
    own patches. Its stamp records all of that and keys only its own objects, so the routing
    and TRTLLM objects keep their cache keys whatever this tree holds."""
    spec = manifest.get("cutlass_moe")
    if spec is None:  # a manifest without the CUTLASS MoE (the fetch script's own tests)
        return
    entry = next(s for s in manifest["source"] if s["name"] == spec["source"])
    patches = spec.get("patch", [])
    stamp = {
        "wheel": entry["sha256"],
        "extract": spec["extract"],
        "generator": [spec["generator"], spec["generator_archs"]],
        "patches": {p["file"]: p["sha256"] for p in patches},
    }
    tree = cutlass_moe_dir(manifest)
    if stamp_matches(tree, stamp):
        log(f"CUTLASS MoE sources up to date in {tree}")
        return
    whl = verified_wheel(entry, cache_dir() / "wheels", offline)
    fresh = tree.with_name(tree.name + ".partial")
    shutil.rmtree(fresh, ignore_errors=True)
    n = extract_members(whl, [(src, fresh / dst) for src, dst in spec["extract"]])
    log(f"CUTLASS MoE: {n} files -> {tree}")
    generate_cutlass_gemms(whl, spec, fresh / spec["generated"])
    for p in patches:
        apply_patch(p, fresh)
    write_stamp(fresh, stamp)
    shutil.rmtree(tree, ignore_errors=True)
    fresh.rename(tree)
    log(f"CUTLASS MoE sources ready in {tree}")


# Imports upstream's generator as gen_cutlass_fused_moe_sm90_module does, without the
# `flashinfer` package itself (which imports torch): its three parent packages are empty
# stand-ins and its one toolchain query answers for the pinned CUDA 13.0.
GENERATOR_DRIVER = """
import sys, types
from pathlib import Path
scratch, out, archs = sys.argv[1:4]
sys.path.insert(0, scratch)
for pkg in ["flashinfer", "flashinfer.jit", "flashinfer.jit.gemm"]:
    m = types.ModuleType(pkg)
    m.__path__ = [str(Path(scratch, *pkg.split(".")))]
    sys.modules[pkg] = m
cpp_ext = types.ModuleType("flashinfer.jit.cpp_ext")
cpp_ext.is_cuda_version_at_least = lambda version: True
sys.modules["flashinfer.jit.cpp_ext"] = cpp_ext
from flashinfer.jit.gemm.cutlass.generate_kernels import generate_gemm_operations
generate_gemm_operations(out, archs)
"""


def generate_cutlass_gemms(whl: Path, spec: dict, out: Path) -> None:
    """Runs upstream's CUTLASS MoE GEMM generator (a package of its own in the wheel) from
    the wheel; its output is a build input, never edited."""
    with tempfile.TemporaryDirectory() as scratch:
        extract_members(whl, [(spec["generator"], Path(scratch) / spec["generator"])])
        out.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", GENERATOR_DRIVER, scratch, str(out),
                        spec["generator_archs"]], check=True, stdout=subprocess.DEVNULL)
    log(f"CUTLASS MoE: {sum(1 for _ in out.rglob('*.cu'))} generated GEMM files")


def touches_headers(patch: Path) -> bool:
    names = [l.split()[1] for l in patch.read_text().splitlines() if l.startswith("+++ ")]
    return any(not n.endswith((".cu", ".cpp", ".cc")) for n in names)


def apply_patch(entry: dict, tree: Path) -> None:
    path = HERE / "patches" / entry["file"]
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise FetchError(
            f"sha256 mismatch for {path}:\n  expected {entry['sha256']}\n  actual   {actual}\n"
            "Update its sha256 in vendor/MANIFEST.toml when you change a patch."
        )
    target = tree / entry["directory"]
    if shutil.which("patch"):
        cmd = ["patch", "-p1", "--forward", "--quiet", "-d", str(target), "-i", str(path)]
    else:  # git applies patches outside a repository too, and CI always has git
        cmd = ["git", "apply", "-p1", str(path)]
    subprocess.run(cmd, check=True, cwd=target)
    log(f"applied {entry['file']}")


def artifact_dir(manifest: dict) -> Path:
    return cubin_dir() / manifest["flashinfer"]["bmm_artifact"]


def extract_cubins(manifest: dict, whl: Path, prefix: str) -> None:
    dest = artifact_dir(manifest)
    log(f"extracting cubins to {dest}")
    extract_members(whl, [(prefix, dest)])
    if not check_cubins(manifest, quiet=False):
        raise FetchError(f"cubins in {dest} do not match their checksums.txt")


def check_cubins(manifest: dict, quiet: bool) -> bool:
    """Every cubin named in checksums.txt exists with the listed sha256."""
    root = artifact_dir(manifest)
    listing = root / "checksums.txt"
    if not listing.exists():
        return False
    ok = True
    for line in listing.read_text().splitlines():
        if not line.strip():
            continue
        digest, name = line.split()
        if not name.endswith(".cubin"):
            continue
        p = root / name
        if not p.exists() or sha256_of(p) != digest:
            ok = False
            if not quiet:
                log(f"cubin {p} missing or altered")
    return ok


def fetch_toolchain(manifest: dict, offline: bool) -> None:
    prefix = toolchain_prefix()
    stamp = {t["name"]: t["sha256"] for t in manifest["toolchain"]}
    if stamp_matches(prefix, stamp):
        log(f"toolchain up to date in {prefix}")
        return
    wheels = cache_dir() / "toolchain-wheels"
    fresh = prefix.with_name(prefix.name + ".partial")
    shutil.rmtree(fresh, ignore_errors=True)
    for entry in manifest["toolchain"]:
        whl = verified_wheel(entry, wheels, offline)
        rules = [(p, fresh / p) for p in entry.get("only", ["nvidia/"])]
        n = extract_members(whl, rules, skip=set(entry.get("skip", [])))
        log(f"{entry['name']}: {n} files")
    cuda_home = fresh / "nvidia" / "cu13"
    (cuda_home / "lib64").symlink_to("lib")  # nvcc links from lib64
    write_stamp(fresh, stamp)
    shutil.rmtree(prefix, ignore_errors=True)
    fresh.rename(prefix)
    log(f"nvcc ready: {prefix / 'nvidia/cu13/bin/nvcc'}")


def print_env(manifest: dict) -> None:
    cuda_home = toolchain_prefix() / "nvidia" / "cu13"
    print(f'export FLASHINFER_CUBIN_DIR="{cubin_dir()}"')
    if (cuda_home / "bin" / "nvcc").exists():
        print(f'export FLASHINFER_RS_CUDA_HOME="{cuda_home}"')


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["sources", "toolchain", "all", "print-env", "check-cubins"])
    ap.add_argument("--manifest", type=Path, default=HERE / "MANIFEST.toml")
    ap.add_argument("--offline", action="store_true", help="never download; use the cache only")
    ap.add_argument("--skip-patch", action="append", default=[], metavar="NNNN",
                    help="leave out the patch whose file name starts with NNNN (regression "
                         "proofs only; use with FLASHINFER_RS_VENDOR_DIR set elsewhere)")
    args = ap.parse_args(argv)
    manifest = tomllib.loads(args.manifest.read_text())
    try:
        if args.what in ("toolchain", "all"):
            fetch_toolchain(manifest, args.offline)
        if args.what in ("sources", "all"):
            fetch_sources(manifest, args.offline, args.skip_patch)
            fetch_cutlass_moe(manifest, args.offline)
        if args.what == "print-env":
            print_env(manifest)
        if args.what == "check-cubins" and not check_cubins(manifest, quiet=False):
            raise FetchError(f"cubins in {artifact_dir(manifest)} are missing or altered")
    except FetchError as e:
        print(f"fetch.py: error: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        print(f"fetch.py: error: {' '.join(e.cmd)} exited with {e.returncode}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
