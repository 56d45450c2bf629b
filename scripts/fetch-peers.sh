#!/usr/bin/env bash
# Fetches the peers that BENCHMARKS.md times beside ours and extracts from each only what the
# benches need. Third-party code is fetched, sha-pinned, never committed: the wheels go to a
# git-ignored cache, the extracts to PEERS (default gpu-pack/peers, git-ignored).
#
#     bash scripts/fetch-peers.sh [PEERS]      # here (PyPI): PEERS/vllm and PEERS/sglang
#     python3 scripts/bench_vllm_moe.py        # on the GPU machine (torch + triton; no vLLM and
#     python3 scripts/bench_peer_routers.py    # no SGLang installed there)
#
# The pins (below: name, size, sha256 as PyPI lists them); a download is refused unless its
# sha256 matches. Cache: $FLASHINFER_RS_CACHE/peers (default ~/.cache/flashinfer-rs/peers); a
# cached wheel with the right sha256 is not fetched again.
#   - vLLM 0.26.0's linux x86_64 wheel (abi3): section 7's Triton fused MoE and section 6's
#     triton_kernels top-k.
#   - SGLang 0.5.23's linux x86_64 wheel for CPython 3.12 (the GPU machine's Python): section 6's
#     router, `moe_fused_gate`, which 0.5.23 ships as a Triton kernel in this wheel; its CUDA paths
#     no longer call the CUDA op of that name in sgl-kernel (topk.py: "retired"), so that binary
#     wheel (now sglang-kernel 0.4.10, which SGLang 0.5.23 pins with torch 2.14.1; the GPU machine
#     has torch 2.11) is not fetched. The sglang wheel is platform-tagged for five Rust extensions
#     of SGLang's server, none of which is taken: only Python text is.
#
# PEERS/vllm gets:
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
#   triton_kernels/           the `triton_kernels` package vLLM bundles (vllm/third_party/triton_kernels,
#                             Triton's own package, which vLLM imports as `triton_kernels`): `topk.py`
#                             (`topk`, the top-k of vLLM's gpt-oss MoE path) and the modules it imports,
#                             transitively, whole and verbatim in the package's layout, so that
#                             `import triton_kernels.topk` works with this folder on sys.path. No license
#                             text for it ships in the wheel (upstream Triton's is MIT).
#   LICENSE, SOURCE.txt       vLLM's license (Apache-2.0); the wheel, its sha256, each member taken and
#                             its sha256 (checked against the wheel's RECORD).
# PEERS/sglang gets:
#   sglang_moe_fused_gate.py  SGLang's sglang/kernels/ops/moe/moe_fused_gate.py without its imports:
#                             `moe_fused_gate` (the "unified Triton router": scoring, bias, DeepSeek-V3
#                             groups, top-k, renormalisation, scale), its kernel `_router_triton_kernel`,
#                             the SM120 top-22 kernel it may dispatch to and their helpers; and
#                             moe_route_radix.py's `covered` (the test for moe_fused_gate's radix-select
#                             fast path, Kimi-K3's 896 experts, top-16 only); cut verbatim with Python's
#                             ast after a prelude, not SGLang's, that stands in for the SGLang internals
#                             they name (the radix kernel itself, a tvm-ffi JIT CUDA build, is not taken).
#   LICENSE, SOURCE.txt       SGLang's license (Apache-2.0); as for vLLM.
# PEERS/transformers gets (for scripts/transformers_fp8_blocks.py: transformers' own fp8 matmul, which
# transformers 5.x moved out of its wheel into the kernels hub, where the GPU machine cannot reach):
#   transformers_fp8_linear.py  transformers 4.57.1's integrations/finegrained_fp8.py: `FP8Linear`
#                             (the module `replace_with_fp8_linear` put in a checkpoint's fp8 layers) and
#                             what its forward calls, `act_quant` (1x128 activation quantisation, its
#                             kernel "copied from DeepSeek-V3's inference/kernel.py") and
#                             `w8a8_block_fp8_matmul_triton` (the 128x128 block-scale matmul) with their
#                             Triton kernels; cut verbatim with Python's ast after a prelude, not
#                             transformers', for the two utilities they name.
#   LICENSE, SOURCE.txt       transformers' license (Apache-2.0); as for vLLM.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=${1:-gpu-pack/peers}
cache=${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}/peers

VLLM_VERSION=0.26.0
VLLM_WHEEL=vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl
VLLM_SIZE=303698761
VLLM_SHA256=adb1e4c9b46d0dfdb094121ae5aad670a42412dd813ed4e5db069ed6a15006de

SGLANG_VERSION=0.5.23
SGLANG_WHEEL=sglang-0.5.23-cp312-cp312-manylinux_2_34_x86_64.whl
SGLANG_SIZE=39046590
SGLANG_SHA256=8d257a319395b322bb1be327d05e5528859358153c8563b04c0a4a3c8af164b6

TRANSFORMERS_VERSION=4.57.1
TRANSFORMERS_WHEEL=transformers-4.57.1-py3-none-any.whl
TRANSFORMERS_SIZE=11990925
TRANSFORMERS_SHA256=b10d05da8fa67dc41644dbbf9bc45a44cb86ae33da6f9295f5fbf5b7890bd267

mkdir -p "$cache"
cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT
sha_ok() { echo "$1  $2" | sha256sum -c --status; }

fetch() { # project version wheel size sha256 pip-args...: the pinned wheel into the cache
  local project=$1 version=$2 wheel=$3 size=$4 sha=$5 tmp
  shift 5
  if [ -f "$cache/$wheel" ] && sha_ok "$sha" "$cache/$wheel"; then
    echo "fetch-peers: $wheel cached ($cache/$wheel)"
    return
  fi
  rm -f "$cache/$wheel"
  tmp=$(mktemp -d "$cache/download.XXXXXX")
  cleanup+=("$tmp")
  echo "fetch-peers: downloading $wheel ($size bytes)"
  python3 -m pip download "$project==$version" --no-deps --no-cache-dir --only-binary=:all: \
    "$@" -d "$tmp" >&2
  [ -f "$tmp/$wheel" ] || { echo "fetch-peers: pip did not give $wheel: $(ls "$tmp")" >&2; exit 1; }
  if ! sha_ok "$sha" "$tmp/$wheel"; then
    echo "fetch-peers: sha256 mismatch for $wheel: got $(sha256sum "$tmp/$wheel" | cut -d' ' -f1), pinned $sha" >&2
    exit 1
  fi
  mv "$tmp/$wheel" "$cache/$wheel"
}

fetch vllm "$VLLM_VERSION" "$VLLM_WHEEL" "$VLLM_SIZE" "$VLLM_SHA256" \
  --python-version 3.12 --implementation cp --abi abi3 --platform manylinux_2_28_x86_64
fetch sglang "$SGLANG_VERSION" "$SGLANG_WHEEL" "$SGLANG_SIZE" "$SGLANG_SHA256" \
  --python-version 3.12 --implementation cp --abi cp312 --platform manylinux_2_34_x86_64
fetch transformers "$TRANSFORMERS_VERSION" "$TRANSFORMERS_WHEEL" "$TRANSFORMERS_SIZE" "$TRANSFORMERS_SHA256"

# Replace each extract whole, but only a folder this script made (it has SOURCE.txt) or an empty one.
for name in vllm sglang transformers; do
  out=$peers/$name
  if [ -d "$out" ] && [ -n "$(ls -A "$out")" ] && [ ! -f "$out/SOURCE.txt" ]; then
    echo "fetch-peers: $out exists and is not a fetch-peers extract; not touching it" >&2
    exit 1
  fi
  rm -rf "$out.partial"
  mkdir -p "$out.partial"
  cleanup+=("$out.partial")
done
python3 - "$peers" "$cache/$VLLM_WHEEL" "$VLLM_VERSION" "$VLLM_SHA256" \
  "$cache/$SGLANG_WHEEL" "$SGLANG_VERSION" "$SGLANG_SHA256" \
  "$cache/$TRANSFORMERS_WHEEL" "$TRANSFORMERS_VERSION" "$TRANSFORMERS_SHA256" <<'PY'
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

peers = sys.argv[1]
vllm_args, sglang_args, transformers_args = sys.argv[2:5], sys.argv[5:8], sys.argv[8:11]


class Wheel:
    """A pinned wheel; member() reads one file, checks it against the wheel's RECORD and notes it
    in the manifest (SOURCE.txt)."""

    def __init__(self, path, project, dist, version, sha):
        self.zip = zipfile.ZipFile(path)
        self.name = os.path.basename(path)
        self.project, self.version, self.sha = project, version, sha
        self.record = {}
        for name, digest, _ in csv.reader(self.zip.read(f"{dist}-{version}.dist-info/RECORD").decode().splitlines()):
            if digest.startswith("sha256="):
                self.record[name] = digest[len("sha256="):]
        self.manifest = [f"{self.name} sha256 {sha} ({project} {version}, PyPI)", "members taken (sha256):"]

    def member(self, name):
        data = self.zip.read(name)
        digest = hashlib.sha256(data)
        want = self.record.get(name)
        got = base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()
        if want != got:
            sys.exit(f"fetch-peers: {name}: sha256 {got} is not the wheel RECORD's {want}")
        self.manifest.append(f"  {name} {digest.hexdigest()}")
        return data

    def write(self, out, name, path):
        """A member, verbatim, to out/path."""
        os.makedirs(os.path.dirname(os.path.join(out, path)) or out, exist_ok=True)
        with open(os.path.join(out, path), "wb") as f:
            f.write(self.member(name))


def top_level_names(node):
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def cut(wheel, take, internal):
    """The top-level statements named in take ([(member, [names])], each in the given order) as
    source text, verbatim, each under a line naming where it came from; an import of the
    project's own package (`internal`) inside a body is replaced by a comment (the prelude has
    the name)."""
    parts = []
    for name, wanted in take:
        text = wheel.member(name).decode()
        lines = text.splitlines(keepends=True)
        defs = {n: node for node in ast.parse(text).body for n in top_level_names(node)}
        for fn in wanted:
            node = defs.get(fn)
            if node is None:
                sys.exit(f"fetch-peers: {name} has no top-level {fn}")
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            body = lines[first - 1:node.end_lineno]
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    mod = sub.module if isinstance(sub, ast.ImportFrom) else sub.names[0].name
                    if not (mod or "").startswith(internal):
                        continue
                    if sub.lineno != sub.end_lineno:
                        sys.exit(f"fetch-peers: {name}:{sub.lineno}: a multi-line {wheel.project} import in {fn}")
                    i = sub.lineno - first
                    old = body[i]
                    indent = old[: len(old) - len(old.lstrip())]
                    body[i] = f'{indent}# fetch-peers.sh: was "{old.strip()}" (the prelude has it)\n'
            parts.append(f"\n\n# ---- {name}, {wheel.project} {wheel.version} (lines {first}-{node.end_lineno}) ----\n")
            parts.append("".join(body))
    return "".join(parts)


def check_names(source, filename):
    """Every global name the source uses must be defined in it (or be a builtin)."""
    compile(source, filename, "exec")
    top = symtable.symtable(source, filename, "exec")
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
        sys.exit(f"fetch-peers: names {filename} uses but does not define: " + ", ".join(sorted(missing)))


def write_cut(wheel, out, filename, prelude, take, internal):
    """prelude + cut(...) as out/filename, once every name it uses is defined."""
    source = prelude + cut(wheel, take, internal)
    check_names(source, filename)
    with open(os.path.join(out, filename), "w") as f:
        f.write(source)


def write_license_and_manifest(wheel, out, dist):
    wheel.write(out, f"{dist}-{wheel.version}.dist-info/licenses/LICENSE", "LICENSE")
    with open(os.path.join(out, "SOURCE.txt"), "w") as f:
        f.write("\n".join(wheel.manifest) + "\n")


# ---- vLLM ------------------------------------------------------------------------------------

wheel_path, version, wheel_sha = vllm_args
vllm = Wheel(wheel_path, "vLLM", "vllm", version, wheel_sha)
out = os.path.join(peers, "vllm.partial")
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
# The bundled triton_kernels package, and the module whose imports are followed from it.
TRITON_KERNELS = "vllm/third_party/triton_kernels/"
TOPK = TRITON_KERNELS + "topk.py"

VLLM_PRELUDE = f'''\
# vllm_fused_moe_kernel.py: made by scripts/fetch-peers.sh (flashinfer-rs); not to be committed.
# From {vllm.name}
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
VLLM_WHEEL = "{vllm.name}"
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

write_cut(vllm, out, "vllm_fused_moe_kernel.py", VLLM_PRELUDE, TAKE, "vllm")

os.makedirs(os.path.join(out, "configs"))
pattern = re.compile(r"E=(\d+),N=(\d+),device_name=([^,]+)(|,dtype=fp8_w8a8,block_shape=\[128,128\])\.json")
found = {(kind, layer): [] for kind in KINDS for layer in LAYERS}
for name in sorted(vllm.zip.namelist()):
    if not name.startswith(FUSED + "configs/"):
        continue
    m = pattern.fullmatch(os.path.basename(name))
    if m and (m[4], (int(m[1]), int(m[2]))) in found:
        vllm.write(out, name, os.path.join("configs", os.path.basename(name)))
        found[(m[4], (int(m[1]), int(m[2])))].append(m[3])


def triton_kernels_module(module):
    """The wheel member of a `triton_kernels...` module (a module, else a package), or None."""
    rel = module.split(".")[1:]
    for name in (TRITON_KERNELS + "/".join(rel) + ".py", TRITON_KERNELS + "/".join(rel + ["__init__.py"])):
        if name in vllm.record:
            return name
    return None


# topk.py and every triton_kernels module it imports, transitively (imports inside functions
# too), with the __init__.py of each package on the way; relative imports resolved as Python does.
taken, todo = set(), [TOPK]
while todo:
    name = todo.pop()
    if name in taken:
        continue
    taken.add(name)
    package = ["triton_kernels"] + os.path.dirname(name[len(TRITON_KERNELS):]).split("/")
    package = [p for p in package if p]
    for i in range(1, len(package) + 1):
        init = triton_kernels_module(".".join(package[:i]))
        if init and init.endswith("__init__.py"):
            todo.append(init)
    for node in ast.walk(ast.parse(vllm.zip.read(name).decode())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            candidates = [module] + [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        for module in candidates:
            if module.split(".")[0] == "triton_kernels" and (member := triton_kernels_module(module)):
                todo.append(member)
for name in sorted(taken):
    vllm.write(out, name, os.path.join("triton_kernels", name[len(TRITON_KERNELS):]))
print(f"fetch-peers: triton_kernels: {len(taken)} modules for triton_kernels.topk")

for (kind, (e, n)), gpus in found.items():
    line = f"tuned {KINDS[kind]} configs E={e},N={n}: {', '.join(gpus) or 'none (vLLM uses get_default_config)'}"
    vllm.manifest.append(line)
    print("fetch-peers:", line)
write_license_and_manifest(vllm, out, "vllm")

# ---- SGLang ----------------------------------------------------------------------------------

wheel_path, version, wheel_sha = sglang_args
sglang = Wheel(wheel_path, "SGLang", "sglang", version, wheel_sha)
out = os.path.join(peers, "sglang.partial")
OPS = "sglang/kernels/ops/moe/"
# (wheel member, top-level statements taken from it verbatim): moe_fused_gate.py's every one but
# its imports, in the module's order; before them, what it reads of moe_route_radix.
TAKE = [
    (OPS + "moe_route_radix.py", ["_NUM_EXPERTS", "_TOPK", "covered"]),
    (OPS + "moe_fused_gate.py", [
        "_SCORING_FUNC_MAP", "_sm120_router_top22_kernel", "_topk_gate_small_m",
        "_router_triton_kernel", "_DUMMY_I32", "_dummy_i32", "moe_fused_gate",
    ]),
]
SGLANG_PRELUDE = f'''\
# sglang_moe_fused_gate.py: made by scripts/fetch-peers.sh (flashinfer-rs); not to be committed.
# From {sglang.name}
# (SGLang {version}, PyPI), sha256 {wheel_sha}.
# SGLang is Apache-2.0: LICENSE beside this file. The statements after the prelude are SGLang's
# source text, cut verbatim with Python's ast from the wheel member named above each one; the only
# change: an import of an SGLang internal inside a function body is replaced by a comment (the
# prelude has the name). The prelude is not SGLang's: it stands in for the SGLang internals they
# use, at SGLang's defaults, on an NVIDIA GPU (or the CPU, under TRITON_INTERPRET=1).
import functools
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

SGLANG_VERSION = "{version}"
SGLANG_WHEEL = "{sglang.name}"
SGLANG_WHEEL_SHA256 = "{wheel_sha}"


class _ArchInfo(NamedTuple):
    major: int
    minor: int


def get_jit_cuda_arch():  # sglang.kernels.jit.utils: the GPU's compute capability (0.0 without one)
    return _ArchInfo(*torch.cuda.get_device_capability()) if torch.cuda.is_available() else _ArchInfo(0, 0)


@functools.cache
def is_arch_support_pdl():  # sglang.kernels.jit.utils: programmatic dependent launch from SM90 on
    return get_jit_cuda_arch().major >= 9


def debug_kernel_api(func=None, *, op_name=None):  # sglang.kernels.kernel_api_logging, logging off
    return func if func is not None else (lambda f: f)


class envs:  # sglang.srt.environ.envs: the one setting moe_fused_gate reads, at SGLang's default
    class SGLANG_OPT_SM120_MTP_ROUTER_TOP22:
        @staticmethod
        def get():
            return False


class moe_route_radix:  # sglang.kernels.ops.moe.moe_route_radix: its `covered` (below), no kernel
    @staticmethod
    def covered(scores, bias, topk):
        return covered(scores, bias, topk)

    @staticmethod
    def route_radix(*args, **kwargs):
        raise NotImplementedError("SGLang's radix-select router is a tvm-ffi JIT CUDA kernel, not taken")

'''
write_cut(sglang, out, "sglang_moe_fused_gate.py", SGLANG_PRELUDE, TAKE, "sglang")
write_license_and_manifest(sglang, out, "sglang")

# ---- transformers ----------------------------------------------------------------------------

wheel_path, version, wheel_sha = transformers_args
hf = Wheel(wheel_path, "transformers", "transformers", version, wheel_sha)
out = os.path.join(peers, "transformers.partial")
TAKE = [
    ("transformers/integrations/finegrained_fp8.py", [
        "act_quant_kernel", "act_quant", "_w8a8_block_fp8_matmul", "w8a8_block_fp8_matmul_triton",
        "FP8Linear",
    ]),
]
TRANSFORMERS_PRELUDE = f'''\
# transformers_fp8_linear.py: made by scripts/fetch-peers.sh (flashinfer-rs); not to be committed.
# From {hf.name}
# (transformers {version}, PyPI), sha256 {wheel_sha}.
# transformers is Apache-2.0: LICENSE beside this file. The statements after the prelude are
# transformers' source text, cut verbatim with Python's ast from the wheel member named above each
# one. The prelude is not transformers': its module's imports, and a stand-in for the one utility
# FP8Linear.forward calls, as transformers.utils defines it.
from typing import Optional

import torch
import torch.nn as nn
import triton
import triton.language as tl
from torch.nn import functional as F

TRANSFORMERS_VERSION = "{version}"
TRANSFORMERS_WHEEL = "{hf.name}"
TRANSFORMERS_WHEEL_SHA256 = "{wheel_sha}"


def is_torch_accelerator_available():  # transformers.utils.import_utils, as in {version}
    return hasattr(torch, "accelerator")

'''
write_cut(hf, out, "transformers_fp8_linear.py", TRANSFORMERS_PRELUDE, TAKE, "transformers")
write_license_and_manifest(hf, out, "transformers")
PY
for name in vllm sglang transformers; do
  rm -rf "${peers:?}/$name"
  mv "$peers/$name.partial" "$peers/$name"
done
echo "fetch-peers: vLLM $VLLM_VERSION extract in $peers/vllm, SGLang $SGLANG_VERSION extract in $peers/sglang," \
  "transformers $TRANSFORMERS_VERSION extract in $peers/transformers"
ls -la "$peers/vllm" "$peers/vllm/configs" "$peers/vllm/triton_kernels" "$peers/sglang" "$peers/transformers"
