#!/usr/bin/env bash
# The MoE layer bench's markdown tables (flashinfer-rs/benches/moe_layer.rs, scripts/bench_vllm_moe.py,
# scripts/bench_torch_moe.py, or BENCHMARKS.md's sections 7-7e) as one PNG per layer: time per layer
# call against tokens, log-log, ours beside each peer and the weight-read bound
# (scripts/plot_layer.py). No GPU needed. Run from anywhere:
#
#     bash scripts/plot-layer.sh --out DIR FILE.md [FILE.md ...]    # DIR/<layer>.png
#     bash scripts/plot-layer.sh --out DIR --section '## 7c.' BENCHMARKS.md   # one run's tables
#     bash scripts/plot-layer.sh --check                            # the parser's self-test
#
# The first run makes a venv with matplotlib (pinned below) from PyPI at
# ${FLASHINFER_RS_CACHE:-~/.cache/flashinfer-rs}/plot-venv; later runs reuse it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
matplotlib=matplotlib==3.10.9
venv=${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}/plot-venv
# The marker names the pinned version, so a changed pin reinstalls into the same venv.
if [ ! -e "$venv/.$matplotlib" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$matplotlib"
  touch "$venv/.$matplotlib"
fi
# Relative paths in the arguments stay relative to the caller's folder.
exec "$venv/bin/python" "$root/scripts/plot_layer.py" "$@"
