#!/usr/bin/env bash
# Fetches the peer that BENCHMARKS.md (section 7) times beside our MoE layer, vLLM's Triton fused
# MoE, and extracts from it only what scripts/bench_vllm_moe.py needs. Third-party code is fetched,
# sha-pinned, never committed: the wheel goes to a git-ignored cache, the extract to OUT.
#
#     bash scripts/fetch-peers.sh [OUT]        # here (PyPI); OUT defaults to gpu-pack/peers/vllm
#     python3 scripts/bench_vllm_moe.py        # on the GPU machine (torch + triton, no vLLM needed)
#
# The pin: vLLM 0.26.0's linux x86_64 wheel (below: name, size, sha256 as PyPI lists them); the
# download is refused unless its sha256 matches. Cache: $FLASHINFER_RS_CACHE/peers (default
# ~/.cache/flashinfer-rs/peers); a cached wheel with the right sha256 is not fetched again.
#
# OUT gets:
#   vllm_fused_moe_kernel.py  vLLM's source text of `fused_moe_kernel` and the `@triton.jit` helper
#                             it calls (`write_zeros_to_output`), its launcher
#                             (`invoke_fused_moe_triton_kernel`), the config choice (`get_config_file_name`,
#                             `get_moe_configs`, `get_default_config`, `try_get_optimal_moe_config`)
#                             and `_prepare_expert_assignment`; and (for --fp8-blocks) fp8_utils.py's
#                             `_per_token_group_quant_fp8`, the Triton kernel of per_token_group_quant_fp8's
#                             fallback; cut verbatim with Python's ast from the wheel (fused_moe.py imports
#                             vLLM internals, so it cannot be imported alone), after a prelude, not vLLM's,
#                             that stands in for the internals they name.
#                             vLLM's `moe_align_block_size` is a CUDA op in vllm._C (0.26 has no Triton
#                             or torch fallback): the bench supplies a torch one.
#   configs/                  vLLM's tuned configs for the two benched layers (E=128,N=768 and
#                             E=256,N=2048, every GPU the wheel has one for; get_moe_configs reads them
#                             from configs/ beside the module, as in vLLM): bf16 (no dtype in the name) and
#                             block fp8 (`,dtype=fp8_w8a8,block_shape=[128,128]`, for --fp8-blocks).
#   LICENSE, SOURCE.txt       vLLM's license (Apache-2.0); the wheel, its sha256, each member taken and
#                             its sha256 (checked against the wheel's RECORD).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-pack/peers/vllm}
cache=${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}/peers

VLLM_VERSION=0.26.0
VLLM_WHEEL=vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl
VLLM_SIZE=303698761
VLLM_SHA256=adb1e4c9b46d0dfdb094121ae5aad670a42412dd813ed4e5db069ed6a15006de

mkdir -p "$cache"
wheel=$cache/$VLLM_WHEEL
sha_ok() { echo "$VLLM_SHA256  $1" | sha256sum -c --status; }
if [ -f "$wheel" ] && sha_ok "$wheel"; then
  echo "fetch-peers: $VLLM_WHEEL cached ($wheel)"
else
  rm -f "$wheel"
  tmp=$(mktemp -d "$cache/download.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT
  echo "fetch-peers: downloading $VLLM_WHEEL ($VLLM_SIZE bytes)"
  python3 -m pip download "vllm==$VLLM_VERSION" --no-deps --no-cache-dir --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi abi3 --platform manylinux_2_28_x86_64 \
    -d "$tmp" >&2
  [ -f "$tmp/$VLLM_WHEEL" ] || { echo "fetch-peers: pip did not give $VLLM_WHEEL: $(ls "$tmp")" >&2; exit 1; }
  if ! sha_ok "$tmp/$VLLM_WHEEL"; then
    echo "fetch-peers: sha256 mismatch for $VLLM_WHEEL: got $(sha256sum "$tmp/$VLLM_WHEEL" | cut -d' ' -f1), pinned $VLLM_SHA256" >&2
    exit 1
  fi
  mv "$tmp/$VLLM_WHEEL" "$wheel"
fi

# Replace OUT whole, but only a folder this script made (it has SOURCE.txt) or an empty one.
if [ -d "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/SOURCE.txt" ]; then
  echo "fetch-peers: $out exists and is not a fetch-peers extract; not touching it" >&2
  exit 1
fi
rm -rf "$out.partial"
mkdir -p "$out.partial"
trap 'rm -rf "$out.partial" ${tmp:+"$tmp"}' EXIT
python3 - "$wheel" "$VLLM_VERSION" "$VLLM_SHA256" "$out.partial" <<'PY'
import ast
import base64
import builtins
import csv
import hashlib
import os
import re
import symtable
import sys
import zipfile

wheel_path, version, wheel_sha, out = sys.argv[1:]
wheel = os.path.basename(wheel_path)
FUSED = "vllm/model_executor/layers/fused_moe/"
# (wheel member, top-level functions taken from it verbatim), in the module's order.
TAKE = [
    ("vllm/utils/platform_utils.py", ["get_device_name_as_file_name"]),
    (FUSED + "utils.py", ["enable_swap_ab"]),
    (FUSED + "fused_moe.py", [
        "write_zeros_to_output", "fused_moe_kernel", "invoke_fused_moe_triton_kernel",
        "get_config_file_name", "get_moe_configs", "should_moe_wna16_use_cuda",
        "get_default_config", "try_get_optimal_moe_config", "_prepare_expert_assignment",
    ]),
    # The Triton kernel only: its wrapper, per_token_group_quant_fp8, calls vllm._C's CUDA op first.
    ("vllm/model_executor/layers/quantization/utils/fp8_utils.py", ["_per_token_group_quant_fp8"]),
]
# The tuned configs of the benched layers: bf16 (no dtype, no block shape in the name) and block
# fp8 (what try_get_optimal_moe_config reads for DeepSeek-V3's format); never fp8 per tensor's.
LAYERS = [(128, 768), (256, 2048)]
KINDS = {"": "bf16", ",dtype=fp8_w8a8,block_shape=[128,128]": "block fp8"}

z = zipfile.ZipFile(wheel_path)
record = {}
for name, digest, _ in csv.reader(z.read(f"vllm-{version}.dist-info/RECORD").decode().splitlines()):
    if digest.startswith("sha256="):
        record[name] = digest[len("sha256="):]


def member(name):
    data = z.read(name)
    want = record.get(name)
    got = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if want != got:
        sys.exit(f"fetch-peers: {name}: sha256 {got} is not the wheel RECORD's {want}")
    return data, hashlib.sha256(data).hexdigest()


manifest = [f"{wheel} sha256 {wheel_sha} (vLLM {version}, PyPI)", "members taken (sha256):"]
PRELUDE = f'''\
# vllm_fused_moe_kernel.py: made by scripts/fetch-peers.sh (flashinfer-rs); not to be committed.
# From {wheel}
# (vLLM {version}, PyPI), sha256 {wheel_sha}.
# vLLM is Apache-2.0: LICENSE beside this file. The functions after the prelude are vLLM's source
# text, cut verbatim with Python's ast from the wheel member named above each one; the only change:
# an import of a vLLM internal inside a function body is replaced by a comment (the prelude has
# the name). The prelude is not vLLM's: it stands in for the vLLM internals those functions use,
# as they are for an unquantized bf16 MoE on an NVIDIA GPU (or the CPU, under TRITON_INTERPRET=1).
import functools
import json
import os
import re
import sys
from functools import cache
from typing import Any

import torch
import triton
import triton.language as tl

VLLM_VERSION = "{version}"
VLLM_WHEEL = "{wheel}"
VLLM_WHEEL_SHA256 = "{wheel_sha}"


class envs:  # vllm.envs: the two settings these functions read, at vLLM's defaults
    VLLM_BATCH_INVARIANT = False
    VLLM_TUNED_CONFIG_FOLDER = os.environ.get("VLLM_TUNED_CONFIG_FOLDER")


class _Logger:  # vllm.logger: the *_once calls, to stderr
    _seen = set()

    def _once(self, level, msg, *args, **_):
        text = msg % args if args else msg
        if text not in self._seen:
            self._seen.add(text)
            print(f"vllm {{level}}: {{text}}", file=sys.stderr)

    def info_once(self, msg, *args, **kw):
        self._once("info", msg, *args, **kw)

    def warning_once(self, msg, *args, **kw):
        self._once("warning", msg, *args, **kw)


logger = _Logger()


class current_platform:  # vllm.platforms.current_platform: CUDA (no ROCm)
    @staticmethod
    def is_rocm():
        return False

    @staticmethod
    def is_cuda():
        return torch.cuda.is_available()

    @staticmethod
    def get_device_name(device_id=0):
        return torch.cuda.get_device_name(device_id) if torch.cuda.is_available() else "cpu"

    @staticmethod
    def is_device_capability(capability):
        if not torch.cuda.is_available():
            return False
        major, minor = torch.cuda.get_device_capability()
        if isinstance(capability, tuple):
            return (major, minor) == capability
        return major * 10 + minor == capability


def get_config():  # vllm.model_executor.layers.fused_moe.get_config: no override config
    return None


def moe_align_block_size(*args, **kwargs):  # vllm._C's CUDA op behind it: not loadable here
    raise NotImplementedError(
        "vLLM's moe_align_block_size is a CUDA op in vllm._C; set this module's "
        "moe_align_block_size to a stand-in (scripts/bench_vllm_moe.py has a torch one)"
    )

'''

parts = [PRELUDE]
for name, funcs in TAKE:
    data, sha = member(name)
    manifest.append(f"  {name} {sha}")
    text = data.decode()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for fn in funcs:
        node = defs.get(fn)
        if node is None:
            sys.exit(f"fetch-peers: {name} has no top-level function {fn}")
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        body = lines[first - 1:node.end_lineno]
        # Imports of vLLM internals inside the body: a comment instead (the prelude has the names).
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                mod = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                if not (mod or "").startswith("vllm"):
                    continue
                if sub.lineno != sub.end_lineno:
                    sys.exit(f"fetch-peers: {name}:{sub.lineno}: a multi-line vLLM import in {fn}")
                i = sub.lineno - first
                old = body[i]
                indent = old[: len(old) - len(old.lstrip())]
                body[i] = f'{indent}# fetch-peers.sh: was "{old.strip()}" (the prelude has it)\n'
        parts.append(f"\n\n# ---- {name}, vLLM {version} (lines {first}-{node.end_lineno}) ----\n")
        parts.append("".join(body))
source = "".join(parts)

# Every global name the functions use must be defined here (prelude, taken functions, builtins).
compile(source, "vllm_fused_moe_kernel.py", "exec")
top = symtable.symtable(source, "vllm_fused_moe_kernel.py", "exec")
defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
defined |= {"__file__", "__name__"}
missing = set()


def walk(table):
    for s in table.get_symbols():
        if (table.get_type() == "module" or s.is_global()) and s.is_referenced():
            if s.get_name() not in defined and not hasattr(builtins, s.get_name()):
                missing.add(f"{table.get_name()}: {s.get_name()}")
    for child in table.get_children():
        walk(child)


walk(top)
if missing:
    sys.exit("fetch-peers: names the extract uses but does not define: " + ", ".join(sorted(missing)))
with open(os.path.join(out, "vllm_fused_moe_kernel.py"), "w") as f:
    f.write(source)

os.makedirs(os.path.join(out, "configs"))
pattern = re.compile(r"E=(\d+),N=(\d+),device_name=([^,]+)(|,dtype=fp8_w8a8,block_shape=\[128,128\])\.json")
found = {(kind, layer): [] for kind in KINDS for layer in LAYERS}
for name in sorted(z.namelist()):
    if not name.startswith(FUSED + "configs/"):
        continue
    m = pattern.fullmatch(os.path.basename(name))
    if m and (m[4], (int(m[1]), int(m[2]))) in found:
        data, sha = member(name)
        with open(os.path.join(out, "configs", os.path.basename(name)), "wb") as f:
            f.write(data)
        manifest.append(f"  {name} {sha}")
        found[(m[4], (int(m[1]), int(m[2])))].append(m[3])
data, sha = member(f"vllm-{version}.dist-info/licenses/LICENSE")
manifest.append(f"  vllm-{version}.dist-info/licenses/LICENSE {sha}")
with open(os.path.join(out, "LICENSE"), "wb") as f:
    f.write(data)
for (kind, (e, n)), gpus in found.items():
    line = f"tuned {KINDS[kind]} configs E={e},N={n}: {', '.join(gpus) or 'none (vLLM uses get_default_config)'}"
    manifest.append(line)
    print("fetch-peers:", line)
with open(os.path.join(out, "SOURCE.txt"), "w") as f:
    f.write("\n".join(manifest) + "\n")
PY
rm -rf "$out"
mv "$out.partial" "$out"
echo "fetch-peers: vLLM $VLLM_VERSION extract in $out"
ls -la "$out" "$out/configs"
