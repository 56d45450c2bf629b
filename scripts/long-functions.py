#!/usr/bin/env python3
"""Lists functions longer than a limit (default 120 lines) in flashinfer-rs/src and flashinfer-sys/csrc/.

    python3 scripts/long-functions.py [limit]

Brace counting on lines (strings and comments are not parsed: good enough for this code
base's style, where a function's body opens on its signature's last line)."""
import pathlib
import re
import sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 120
ROOT = pathlib.Path(__file__).resolve().parent.parent
RUST_FN = re.compile(r"^\s*(pub(\([a-z]+\))?\s+)?(const\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")
C_FN = re.compile(r"^(?:[\w:<>,*&\s\"]+?)\b(\w+)\s*\([^;]*$")


def scan(path, pattern, name_group):
    lines = path.read_text().splitlines()
    out = []
    i = 0
    while i < len(lines):
        m = pattern.match(lines[i])
        if not m or lines[i].lstrip().startswith(("//", "#", "return", "if", "for", "while")):
            i += 1
            continue
        # Find the opening brace of the body (the signature may span lines).
        j = i
        while j < len(lines) and "{" not in lines[j] and ";" not in lines[j]:
            j += 1
        if j >= len(lines) or ";" in lines[j] and "{" not in lines[j]:
            i += 1
            continue
        depth = 0
        k = j
        while k < len(lines):
            depth += lines[k].count("{") - lines[k].count("}")
            if depth <= 0:
                break
            k += 1
        length = k - i + 1
        if length > LIMIT:
            out.append((length, f"{path.relative_to(ROOT)}:{i + 1}", m.group(name_group)))
        i += 1
    return out


found = []
for p in sorted((ROOT / "flashinfer-rs/src").rglob("*.rs")):
    found += scan(p, RUST_FN, 6)
for p in sorted((ROOT / "flashinfer-sys" / "csrc").glob("*.c*")):
    found += scan(p, C_FN, 1)
for length, where, name in sorted(found, reverse=True):
    print(f"{length:5} {where} {name}")
sys.exit(1 if found else 0)
