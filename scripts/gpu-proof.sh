#!/usr/bin/env bash
# One GPU session's proof, on the GPU machine: unpacks the packs carried there and runs, each
# part's whole output in <name>.log (its tables in <name>.md) packed into $OUT/logs.tar.xz, and
# a line per part in $OUT/summary.txt (the device tool brings $OUT back, at most 8 files: two
# here, however many parts one call runs):
#
#     bash scripts/gpu-proof.sh suite      # gpu-pack.tar.xz: GPU suite + ranks + examples;
#                                          # gpu-pack-candle.tar.xz: downstream/candle's
#                                          # tests; the layer bench, vLLM's Triton fused MoE
#                                          # on the same GPU (gpu-pack/peers,
#                                          # scripts/fetch-peers.sh), the decode kernels' probe
#                                          # (longer than one 600 s device call since the fp8
#                                          # layers came: on the device tool, run its parts by
#                                          # the modes below)
#     bash scripts/gpu-proof.sh tests [args]  # gpu-pack.tar.xz: the GPU suite (libtest filters)
#                                          # and the ranks harness
#     bash scripts/gpu-proof.sh memcheck [filters]  # gpu-pack.tar.xz: memcheck over those tests
#     bash scripts/gpu-proof.sh layer [filters]  # gpu-pack.tar.xz: the Hopper layer's tests alone
#                                          # (bf16 and fp8; test filters, default cutlass), the
#                                          # layer bench (bf16 beside fp8 per-tensor and block
#                                          # scale), vLLM's Triton fused MoE bf16, fp8 and fp8
#                                          # block scale, PyTorch's grouped-GEMM layer
#                                          # (scripts/bench_torch_moe.py); `layer-tests [filter]` and
#                                          # `layer-bench [qwen3|deepseek]` are its two halves
#                                          # (one call each; layer-bench one layer's tables;
#                                          # layer-bench-ours and layer-bench-peers its own
#                                          # halves, where one layer's does not fit a call)
#     bash scripts/gpu-proof.sh decode-bench [dirs]  # gpu-pack.tar.xz: the decode kernels' probe
#                                          # (beside other moe_decode.cu in dirs) and the
#                                          # layer bench at 1-64 tokens (MOE_LAYER_TOKENS)
#     bash scripts/gpu-proof.sh decode-probe [dirs]  # the probe alone (no pack, no bench)
#     PACK=gpu-pack-v4 bash scripts/gpu-proof.sh variant-bench [layer]  # a candidate's pack (made by
#                                          # scripts/gpu-pack-variant.sh): the layer bench at
#                                          # MOE_LAYER_TOKENS (default: decode sizes), one
#                                          # layer's or both; PACK also points layer-tests
#                                          # and decode-bench at it
#     PACK=gpu-pack-P bash scripts/gpu-proof.sh variant-ab [qwen3|deepseek]  # main's layer bench
#                                          # and the candidate's in turn, twice (A B A B), at
#                                          # MOE_LAYER_TOKENS (default 512,4096)
#     bash scripts/gpu-proof.sh decode-profile [layer:tokens ...]  # the decode kernels under
#                                          # Nsight Compute (scripts/decode-profile.sh; no pack)
#     bash scripts/gpu-proof.sh layer-profile [qwen3|deepseek] [tokens,...]  # gpu-pack.tar.xz:
#                                          # a layer call's kernels under Nsight Compute
#                                          # (scripts/layer-profile.sh)
#     bash scripts/gpu-proof.sh block-gemm-probe  # the fp8 block-scale GEMM candidates' probe
#                                          # (scripts/block-gemm-probe.sh; no gpu-pack, but carry
#                                          # block-gemm-probe-src.tar.xz, made here by
#                                          # `bash scripts/block-gemm-probe.sh pack`)
#     bash scripts/gpu-proof.sh block-bench  # gpu-pack.tar.xz and block-gemm-probe-src.tar.xz: the
#                                          # block-scale GEMM probe, then the layer bench and vLLM's
#                                          # block-fp8 Triton MoE at MOE_LAYER_TOKENS (default
#                                          # 1,8,16,64,512)
#     bash scripts/gpu-proof.sh block-layer  # gpu-pack.tar.xz: the block-scale layer's tests, the
#                                          # layer bench, vLLM's block-fp8 MoE, in one call
#     bash scripts/gpu-proof.sh candle-bench [qwen3|deepseek]  # gpu-pack-candle.tar.xz:
#                                          # candle's own fused MoE (candle-transformers'
#                                          # FusedMoe) on the layer bench's layers and sizes
#                                          # (MOE_LAYER_TOKENS picks rows); its tables,
#                                          # headings and GPU line in bench-candle.md
#     bash scripts/gpu-proof.sh router-bench [PACK...]  # gpu-pack.tar.xz: each candidate
#                                          # PACK's table 6, then main's (`gpu-pack/bench.sh topk`:
#                                          # our top-k router, upstream's, NoAuxTc, the floor),
#                                          # then the peers' routers on the same GPU (SGLang's
#                                          # moe_fused_gate, vLLM's triton_kernels top-k, from
#                                          # gpu-pack/peers: scripts/bench_peer_routers.py)
#     bash scripts/gpu-proof.sh transformers-fp8-blocks  # gpu-pack.tar.xz: a DeepSeek-V3-shaped
#                                          # fp8 block through our layer, then through
#                                          # transformers' fine-grained fp8 experts
#                                          # (scripts/transformers_fp8_blocks.py)
#     bash scripts/gpu-proof.sh serve      # gpu-pack-serve.tar.xz: serve suite on the Hopper
#                                          # backend, client repro, fixtures
#     bash scripts/gpu-proof.sh serve-bench ours|peer|ours-fp8   # the served-model bench, one
#                                          # side (ours-fp8: the model as a fine-grained fp8
#                                          # checkpoint, its experts on the block-scale layer)
#
# Here, first: `bash scripts/gpu-pack.sh` (gpu-pack.tar.xz) and `bash scripts/gpu-pack-candle.sh`
# (gpu-pack-candle.tar.xz: suite and candle-bench), or `bash scripts/gpu-pack-serve.sh && tar cJf
# gpu-pack-serve.tar.xz gpu-pack/serve`.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-proof}
mkdir -p "$out"
summary=$out/summary.txt
# Each part's files, in a folder of this $OUT's own (so several invocations in one device call
# add up), packed into $out/logs.tar.xz whenever this script ends. The device tool empties $OUT
# before each call but the folder outlives a call on a warm machine: the call's first invocation
# (no summary yet) starts it afresh, so that a part this call's limit cut before it began cannot
# come back as an earlier call's (session 26's DeepSeek-V3-sized A B A B came back with the
# call before's Qwen3 round).
logs=${TMPDIR:-/tmp}/gpu-proof-logs-$(printf %s "$out" | cksum | cut -d' ' -f1)
[ -e "$summary" ] || rm -rf "$logs"
mkdir -p "$logs"
trap 'tar cJf "$out/logs.tar.xz" -C "$logs" .' EXIT
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader \
  | tee -a "$summary"

# PACK: another pack's folder (its tarball PACK.tar.xz carried beside gpu-pack.tar.xz), e.g. a
# candidate kernel's build from scripts/gpu-pack-variant.sh; layer-tests, decode-bench,
# variant-bench and block-layer then run its bin/gpu and bin/moe_layer, their logs named
# <part>-PACK.
pack=${PACK:-gpu-pack}
tag=${PACK:+-$PACK}

unpack() { # pack.tar.xz: the pack this call carried, over whatever an earlier call left here
  if [ -f "$1" ]; then tar xJf "$1"; fi
}

# A `timeout` around this script (how a device call keeps a part inside its limit) signals this
# script's process group, but a part run under a `timeout` of its own (gpu_tests, the benches
# below) is in that timeout's group, out of reach: session 29's `timeout 190 ... layer-tests` went
# on for 135 s beside the parts after it. So each part runs in the background, and a TERM or INT
# here is passed on to it (a `timeout` passes it to its command's group) and waited for, before
# the EXIT trap packs the logs.
running=
trap 'if [ -n "$running" ]; then kill -TERM "$running" 2>/dev/null; wait "$running"; fi; exit 143' \
  TERM INT

part() { # name command...: runs one part, its output to $logs/name.log, a line to the summary
  local name=$1 start rc
  shift
  start=$(date +%s)
  "$@" > "$logs/$name.log" 2>&1 &
  running=$!
  rc=0
  wait "$running" || rc=$?
  running=
  echo "$name: exit $rc, $(($(date +%s) - start)) s; $(grep -E '^test result:' "$logs/$name.log" \
    | awk '{p+=$4; f+=$6; i+=$8} END {printf "%d passed, %d failed, %d ignored", p, f, i}')" \
    | tee -a "$summary"
}

gpu_tests() { # name seconds [libtest args]: PACK's GPU test binary as a part, one test at a
  # time, cut at `seconds` (0: no limit); a missing GPU or CUTLASS MoE fails its tests instead of
  # skipping them. Each test's time beside its result (libtest's --report-time: unstable, which a
  # stable-built test binary allows where RUSTC_BOOTSTRAP is set), so a log says where a suite's
  # minutes go.
  local name=$1 seconds=$2
  shift 2
  FLASHINFER_RS_REQUIRE_GPU=1 FLASHINFER_RS_REQUIRE_CUTLASS_MOE=1 RUSTC_BOOTSTRAP=1 \
    part "$name" timeout "$seconds" "$pack/bin/gpu" --test-threads=1 \
    -Z unstable-options --report-time "$@"
}

tables() { # name [pattern]: the part's table lines (default: those starting with |) to name.md
  grep -E "${2:-^\|}" "$logs/$1.log" > "$logs/$1.md" || true
}

# A layer bench's tables with their headings and GPU lines (the Rust bench's `GPU:`, the Python
# benches' `vLLM ... on NVIDIA ...` and `PyTorch ... on NVIDIA ...`): what scripts/plot-layer.sh
# reads to name each table's layer and GPU. The logs themselves interleave the Rust bench's
# stderr with its table rows, which splits the tables for the plot.
layer_tables='^(#|\||GPU:|vLLM |PyTorch )'

case ${1:-suite} in
  suite)
    tar xJf gpu-pack.tar.xz
    tar xJf gpu-pack-candle.tar.xz
    part suite bash gpu-pack/run.sh
    part candle bash gpu-pack/candle/run.sh
    part bench-layer bash gpu-pack/bench.sh layer
    tables bench-layer
    part bench-layer-vllm python3 scripts/bench_vllm_moe.py
    part decode-probe bash scripts/decode-probe.sh
    ;;
  tests) # [libtest args]: the GPU suite alone (the tests of the GPU binary of PACK, then the
    # ranks harness): what `suite` runs first, without candle's tests, the benches and the probe.
    # The whole suite takes longer than one call allows on an H100: split it with libtest's
    # filters, e.g. `tests --skip cutlass_moe_fp8` and `tests cutlass_moe_fp8` (ranks run with
    # the first half only, where no filter is a plain name, and with main's pack only: a
    # candidate's pack carries no ranks binary)
    unpack "$pack.tar.xz"
    gpu_tests "tests$tag" 0 "${@:2}"
    if [ -z "${PACK:-}" ] && { [ $# -le 1 ] || [ "$2" = --skip ]; }; then
      part ranks bash gpu-pack/ranks.sh
    fi
    ;;
  memcheck) # [test filters]: compute-sanitizer's memcheck over the GPU tests the filters name
    # (scripts/sanitize.sh; default: the kernels of our own written since the last whole-suite
    # memcheck: the decode kernels of the three precisions and the GPU weight quantisers)
    unpack "$pack.tar.xz"
    filters=("${@:2}")
    [ ${#filters[@]} -gt 0 ] || filters=(decode_kernels prepare::)
    FLASHINFER_RS_SANITIZE_PACK=$pack FLASHINFER_RS_SANITIZE_FILTER="${filters[*]}" \
      part "memcheck$tag" \
      bash scripts/sanitize.sh memcheck
    ;;
  layer | layer-tests | layer-bench | layer-bench-ours | layer-bench-peers) # layer,
    # layer-tests: [test filters..., default cutlass]; layer-bench: [qwen3|deepseek] (one layer's
    # tables, ours, vLLM's and PyTorch's: a call each where both do not fit one), and its halves
    # layer-bench-ours (our bench alone: the DeepSeek-V3-sized layer's took 262 s on an H100 in
    # session 25, before its third tile added pairs to the tactic search) and layer-bench-peers
    # (vLLM's three and PyTorch's), for a layer whose whole bench does not fit one call
    unpack "$pack.tar.xz"
    if [ "$1" = layer ] || [ "$1" = layer-tests ]; then
      filters=("${@:2}")
      gpu_tests "layer-tests$tag" 0 --nocapture "${filters[@]:-cutlass}"
    fi
    if [ "$1" != layer-tests ]; then
      one=()
      vllm_layers=()
      if [ "$1" != layer ] && [ $# -gt 1 ]; then
        one=("$2")
        vllm_layers=(--layers "$2")
      fi
      name=bench-layer${one:+-$one}
      if [ "$1" != layer-bench-peers ]; then
        part "$name" bash gpu-pack/bench.sh layer "${one[@]}"
        tables "$name" "$layer_tables"
      fi
      if [ "$1" != layer-bench-ours ]; then
        part "$name-vllm" python3 scripts/bench_vllm_moe.py "${vllm_layers[@]}"
        tables "$name-vllm" "$layer_tables"
        part "$name-vllm-fp8" python3 scripts/bench_vllm_moe.py --fp8 "${vllm_layers[@]}"
        tables "$name-vllm-fp8" "$layer_tables"
        part "$name-vllm-fp8-blocks" python3 scripts/bench_vllm_moe.py --fp8-blocks \
          "${vllm_layers[@]}"
        tables "$name-vllm-fp8-blocks" "$layer_tables"
        part "$name-torch" python3 scripts/bench_torch_moe.py "${vllm_layers[@]}"
        tables "$name-torch" "$layer_tables"
      fi
    fi
    ;;
  decode-bench | variant-bench) # decode-bench [dirs] first runs the decode kernels' probe
    # (beside other moe_decode.cu in dirs, scripts/decode-probe.sh); then both run the layer
    # bench (of the pack PACK names) at MOE_LAYER_TOKENS (default: decode sizes), variant-bench
    # [qwen3|deepseek] one layer's only
    unpack "$pack.tar.xz"
    layer=()
    name=bench-layer-decode$tag
    if [ "$1" = decode-bench ]; then
      part "decode-probe$tag" bash scripts/decode-probe.sh "${@:2}"
    else
      # Named for what it ran: not decode sizes only, where MOE_LAYER_TOKENS says otherwise.
      name=bench-layer-variant${2:+-$2}$tag
      layer=(${2:+"$2"})
    fi
    MOE_LAYER_TOKENS=${MOE_LAYER_TOKENS:-1,2,4,8,16,32,64} part "$name" \
      "$pack/bin/moe_layer" "${layer[@]}"
    tables "$name"
    ;;
  variant-ab) # [qwen3|deepseek]: main's layer bench and PACK's in turn, twice (A B A B), at
    # MOE_LAYER_TOKENS (default 512,4096): a comparison that a GPU drifting within the call
    # cannot tilt toward whichever runs second (session 24's main-then-candidate runs differed
    # by more than the kernels); logs ab-<layer>-<PACK>-main-<round> and ab-<layer>-<PACK>-<round>
    # (named for both, so that two A B A Bs in one call keep their own main rounds: session 30's
    # lost its DeepSeek-V3-sized ones to the next run's Qwen3 rounds)
    : "${PACK:?variant-ab compares the main pack with the pack PACK names}"
    unpack gpu-pack.tar.xz
    unpack "$PACK.tar.xz"
    for round in 1 2; do
      for p in gpu-pack "$PACK"; do
        side=
        if [ "$p" = gpu-pack ]; then side=-main; fi
        name=ab-${2:-qwen3}-$PACK$side-$round
        MOE_LAYER_TOKENS=${MOE_LAYER_TOKENS:-512,4096} part "$name" "$p/bin/moe_layer" "${2:-qwen3}"
        tables "$name"
      done
    done
    ;;
  decode-probe) # [dirs]: the decode kernels' probe alone, beside other moe_decode.cu in dirs
    part decode-probe bash scripts/decode-probe.sh "${@:2}"
    ;;
  decode-profile) # [layer:tokens ...]: the decode kernels under Nsight Compute (DECODE_DIR: a
    # candidate's folder instead of this tree's kernels, its log named after it)
    part "decode-profile${DECODE_DIR:+-$(basename "$DECODE_DIR")}" \
      bash scripts/decode-profile.sh "${@:2}"
    ;;
  layer-profile) # [qwen3|deepseek] [tokens,...]: a layer call's kernels under Nsight Compute
    # (scripts/layer-profile.sh; PACK's bench)
    unpack "$pack.tar.xz"
    PACK=$pack part "layer-profile-${2:-qwen3}$tag" bash scripts/layer-profile.sh "${@:2}"
    ;;
  block-gemm-probe) # the fp8 block-scale GEMM candidates on the carried upstream sources (cut
    # at 400 s: candidate 5's register reconfiguration is new code, and a hang must not take the
    # whole call)
    part block-gemm-probe timeout 400 bash scripts/block-gemm-probe.sh
    tables block-gemm-probe
    ;;
  block-bench) # the block-scale GEMM's candidates, then the layer beside vLLM's block-fp8 MoE
    part block-gemm-probe bash scripts/block-gemm-probe.sh
    tables block-gemm-probe
    unpack gpu-pack.tar.xz
    export MOE_LAYER_TOKENS=${MOE_LAYER_TOKENS:-1,8,16,64,512}
    part bench-layer bash gpu-pack/bench.sh layer
    tables bench-layer
    part bench-layer-vllm-fp8-blocks python3 scripts/bench_vllm_moe.py --fp8-blocks \
      --tokens ${MOE_LAYER_TOKENS//,/ }
    ;;
  block-layer) # the block-scale layer's tests (but the tile pairs' and the decode kernels'), the
    # layer bench and vLLM's block-fp8 Triton MoE, each part cut at a time of its own so that the
    # whole fits one device call (600 s)
    unpack "$pack.tar.xz"
    gpu_tests "layer-tests$tag" 200 --nocapture cutlass_moe_fp8_blocks --skip both_tiles \
      --skip decode_kernels
    part "bench-layer$tag" timeout 300 "$pack/bin/moe_layer"
    tables "bench-layer$tag"
    part bench-layer-vllm-fp8-blocks timeout 85 python3 scripts/bench_vllm_moe.py --fp8-blocks
    ;;
  candle-bench) # [qwen3|deepseek]: candle's own fused MoE, the layer bench's peer
    unpack gpu-pack.tar.xz
    tar xJf gpu-pack-candle.tar.xz
    part bench-candle bash gpu-pack/candle/bench.sh "${@:2}"
    # The headings and the GPU line too: scripts/plot-layer.sh reads the layer and GPU from them.
    tables bench-candle '^(#|\||GPU:)'
    ;;
  router-bench) # [PACK...]: table 6, then the peers' routers, in one call (the same GPU, the
    # same session); each candidate's pack named (e.g. gpu-pack-R, from
    # flashinfer-sys/candidates/router-*; PACK as well), its table 6 first
    unpack gpu-pack.tar.xz
    for candidate in ${PACK:-} "${@:2}"; do
      unpack "$candidate.tar.xz"
      part "bench-topk-$candidate" "$candidate/bin/moe_routing" topk
      tables "bench-topk-$candidate"
    done
    part bench-topk bash gpu-pack/bench.sh topk
    tables bench-topk
    part bench-topk-peers python3 scripts/bench_peer_routers.py
    # The heading (GPU, versions) and the peers' provenance lines too.
    tables bench-topk-peers '^(#|- |\|)'
    ;;
  transformers-fp8-blocks)
    unpack gpu-pack.tar.xz
    export FLASHINFER_RS_FP8_BLOCKS_EXPORT=/tmp/fp8-blocks-export
    gpu_tests fp8-blocks-export 0 --nocapture fp8_blocks_a_checkpoint_shaped_block_for_transformers
    part transformers-fp8-blocks python3 scripts/transformers_fp8_blocks.py \
      "$FLASHINFER_RS_FP8_BLOCKS_EXPORT"
    ;;
  serve)
    tar xJf gpu-pack-serve.tar.xz
    part serve bash gpu-pack/serve/run.sh
    ;;
  serve-bench) # [ours|peer|ours-fp8]: one side per call (each loads a 30B model's random weights)
    unpack gpu-pack-serve.tar.xz
    cd gpu-pack/serve && source ./pack-cuda-libs.sh
    side=${2:-ours}
    fp8=()
    [ "$side" = ours-fp8 ] && side=ours && fp8=(--fp8-experts)
    part "serve-bench-${2:-ours}" bin/serve-bench --config bench/qwen3-30b-a3b.json \
      --only "$side" "${fp8[@]}" --json "$logs/serve-bench-${2:-ours}.json"
    ;;
  *)
    echo "usage: $0 suite | tests [args] | memcheck [filters] | layer|layer-tests [filters] | layer-bench[-ours|-peers] [layer] | router-bench |" \
      "transformers-fp8-blocks |" \
      "decode-bench [dirs] | decode-probe [dirs] | variant-bench [layer] | variant-ab [layer] | block-layer |" \
      "decode-profile [cases] | block-gemm-probe |" \
      "block-bench | candle-bench [layers] | serve | serve-bench ours|peer|ours-fp8" >&2
    exit 2
    ;;
esac
