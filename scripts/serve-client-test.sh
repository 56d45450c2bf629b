#!/usr/bin/env bash
# The seed's scenario as a client plays it: the reference server (serve/) on the small
# Qwen3-MoE fixture checkpoint, `curl .../v1/completions` with "return_routed_experts", and
# Python decoding `routed_experts` with numpy, compared with Hugging Face transformers' own
# routing of the same weights (serve/client/seed_repro.py says what is checked).
#
#     bash scripts/serve-client-test.sh                  # builds the server (CPU), installs the
#                                                        # client's numpy/requests/openai in a venv
#     FLASHINFER_SERVE_BIN=DIR/flashinfer-serve BACKEND=hopper PYTHON=python3 \
#       FIXTURES=DIR/fixtures bash serve-client-test.sh  # the GPU pack (no cargo, no network)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
fixtures=${FIXTURES:-$root/serve/fixtures}
client=${CLIENT:-$root/serve/client/seed_repro.py}
backend=${BACKEND:-cpu}
bin=${FLASHINFER_SERVE_BIN:-}
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --quiet -p flashinfer-rs-serve --bin flashinfer-serve)
  bin=${CARGO_TARGET_DIR:-$root/target}/debug/flashinfer-serve
fi
python=${PYTHON:-}
if [ -z "$python" ]; then
  # The client's packages from PyPI, pinned, in a venv of their own (cached).
  venv=${FLASHINFER_RS_CACHE:-$HOME/.cache/flashinfer-rs}/client-venv
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import numpy, requests, openai' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check numpy==2.4.6 requests==2.34.2 openai==3.63.0
  fi
  python=$venv/bin/python
fi
work=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" --model "$fixtures/tiny-qwen3-moe" --backend "$backend" --port 0 \
  --enable-return-routed-experts > "$work/server.out" 2> "$work/server.err" &
server=$!
for _ in $(seq 600); do
  addr=$(sed -n 's|^flashinfer-serve: \(http://[^ ]*\) .*|\1|p' "$work/server.out")
  [ -n "$addr" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.err" >&2; echo "the server exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$addr" ] || { echo "the server did not start in 60 s" >&2; exit 1; }
curl -sf "$addr/health" > /dev/null
prompt=$("$python" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["cases"][0]["prompt"]))' "$fixtures/expected.json")
# The seed's request, as its report sent it.
curl -sf "$addr/v1/completions" -H 'Content-Type: application/json' \
  -d "{\"prompt\": $prompt, \"max_tokens\": 16, \"temperature\": 0, \"return_routed_experts\": true, \"return_token_ids\": true}" \
  > "$work/seed.json"
"$python" "$client" --base-url "$addr" --fixtures "$fixtures/expected.json" \
  --curl-response "$work/seed.json" --backend "$backend"
