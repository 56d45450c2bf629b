#!/usr/bin/env python3
"""Checks that the declared MSRV (workspace `rust-version`) holds for the whole dependency
tree of the published libraries: every crate they depend on (normal and build dependencies,
with the features `cargo metadata` resolves) must declare a `rust-version` no newer than ours.
Every optional dependency the libraries' features add is included. A crate that declares
none is listed (its MSRV is unknown), not failed.

    python3 scripts/msrv-tree.py
"""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

LIBRARIES = ("flashinfer-rs", "flashinfer-sys")


def version(v: str) -> tuple[int, int, int]:
    parts = [int(x) for x in v.split(".")] + [0, 0]
    return (parts[0], parts[1], parts[2])


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    ours = tomllib.loads((root / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    meta = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--features",
             "flashinfer-rs/nccl,flashinfer-rs/serde,flashinfer-rs/float8"],
            cwd=root, check=True, capture_output=True, text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    todo = [i for i, p in packages.items() if p["name"] in LIBRARIES and p["source"] is None]
    seen = set()
    while todo:
        i = todo.pop()
        if i in seen:
            continue
        seen.add(i)
        for dep in nodes[i]["deps"]:
            if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]):
                todo.append(dep["pkg"])
    newer, unknown = [], []
    for i in sorted(seen, key=lambda i: packages[i]["name"]):
        p = packages[i]
        rv = p.get("rust_version")
        if rv is None:
            unknown.append(f"{p['name']} {p['version']}")
        elif version(rv) > version(ours):
            newer.append(f"{p['name']} {p['version']} needs Rust {rv}")
    print(f"MSRV {ours}: {len(seen)} crates in the libraries' tree; "
          f"{len(unknown)} declare no rust-version ({', '.join(unknown)})")
    if newer:
        print("newer than the declared MSRV:\n  " + "\n  ".join(newer), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
