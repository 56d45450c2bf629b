// cutlass_moe.cu: the C ABI of FlashInfer's CUTLASS fused MoE for Hopper (fi_cutlass_moe_*).
//
// A layer owns one runner: `CutlassMoeFCRunner<bf16, bf16>` or, for fp8 weights,
// `CutlassMoeFCRunner<fp8, fp8, bf16>` (per-tensor) or `CutlassMoeFCRunner<bf16, fp8>` (block
// scale) (all in cutlass_moe_runner.cu, the fp8 ones with FLASHINFER_RS_MOE_FP8), through
// upstream's runner interface; its chosen tactics and the
// workspace layout for its largest batch:
//   [ runner workspace at max_tokens | row map (unpermuted->permuted) | decode scratch
//     (moe_decode.h: activations, and block-scale weights' quantised operands) | fp8 input ]
// each part 256-byte aligned. Calls of up to decode_max_tokens tokens take the decode kernels
// (moe_decode.cu) instead of the runner; fp8 calls first quantise their input (moe_fp8.cu).
// The runner keeps per-call state (its workspace pointers, the tactics), so calls on one layer
// are serialised by the layer's mutex.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <climits>
#include <memory>
#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "flashinfer_rs.h"
#include "info.h"
#include "moe_decode.h"
#include "moe_block_scale.h"
#ifdef FLASHINFER_RS_MOE_FP8
#include "moe_fp8.h"
#endif
#include "moe_kernels.h"
#include "status.h"

namespace k = tensorrt_llm::kernels::cutlass_kernels;
using Config = tensorrt_llm::cutlass_extensions::CutlassGemmConfig;
using Runner = k::CutlassMoeFCRunnerInterface;
using Bf16Runner = k::CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>;

// Defined once, in cutlass_moe_runner.cu.
extern template class tensorrt_llm::kernels::cutlass_kernels::CutlassMoeFCRunner<
    __nv_bfloat16, __nv_bfloat16>;
#ifdef FLASHINFER_RS_MOE_FP8
using Fp8Runner = k::CutlassMoeFCRunner<__nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16>;
extern template class tensorrt_llm::kernels::cutlass_kernels::CutlassMoeFCRunner<
    __nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16>;
using BlockRunner = k::CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3>;
extern template class tensorrt_llm::kernels::cutlass_kernels::CutlassMoeFCRunner<
    __nv_bfloat16, __nv_fp8_e4m3>;
#endif

struct fi_cutlass_moe {
  fi_cutlass_moe_params params;
  int device = 0;
  std::unique_ptr<Runner> runner;
  // The GEMMs' tactics: the runner's TMA warp-specialised configs (bf16 and fp8 per-tensor
  // weights); block-scale weights have the block-scale GEMM's tiles instead (moe_block_scale.h,
  // by index: params' tactics name them).
  std::vector<Config> tactics1, tactics2;
  // Tactics -1: the pairs chosen per call (fi_cutlass_moe_run's doc), by rows per expert.
  bool per_call = false;
  std::pair<size_t, size_t> few_rows{0, 0}, some_rows{0, 0}, many_rows{0, 0};
  // The runner's workspace at max_tokens, and where the row map starts (after it, aligned).
  size_t runner_bytes = 0;
  size_t map_offset = 0;
  size_t decode_offset = 0;
  size_t fp8_input_offset = 0;
  size_t total_bytes = 0;
  std::mutex mutex;
};

namespace {

constexpr size_t kAlign = 256;

// The next multiple of kAlign: where the workspace's next part starts.
size_t align_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

bool block_scale(const fi_cutlass_moe_params& p) {
  return p.weights == FI_CUTLASS_MOE_WEIGHTS_FP8_BLOCK;
}

// What the layer asks for: every tensor dimension the runner supports for bf16 SwiGLU on the
// TMA warp-specialised GEMMs (128-bit aligned rows; multiples of 64 cover every real model and
// every tile), and products that fit the runner's int32 row maps.
void validate(const fi_cutlass_moe_params& p) {
  fi::require(p.num_experts >= 1 && p.num_experts <= 4096, "num_experts must be in 1..=4096");
  fi::require(p.top_k >= 1 && p.top_k <= p.num_experts, "top_k must be in 1..=num_experts");
  fi::require(p.hidden_size >= 64 && p.hidden_size % 64 == 0,
              "hidden_size must be a positive multiple of 64");
  fi::require(p.intermediate_size >= 64 && p.intermediate_size % 64 == 0,
              "intermediate_size must be a positive multiple of 64");
  fi::require(p.hidden_size <= (1 << 16) && p.intermediate_size <= (1 << 16),
              "hidden_size and intermediate_size must be at most 65536");
  fi::require(p.ep_size >= 1 && p.num_experts % p.ep_size == 0,
              "ep_size must be positive and divide num_experts");
  fi::require(p.ep_rank >= 0 && p.ep_rank < p.ep_size, "ep_rank must be in 0..ep_size");
  fi::require(p.max_tokens >= 1, "max_tokens must be positive");
  fi::require(p.decode_max_tokens >= 0, "decode_max_tokens must not be negative");
  fi::require(p.weights == FI_CUTLASS_MOE_WEIGHTS_BF16 || p.weights == FI_CUTLASS_MOE_WEIGHTS_FP8 ||
                  p.weights == FI_CUTLASS_MOE_WEIGHTS_FP8_BLOCK,
              "weights must be FI_CUTLASS_MOE_WEIGHTS_BF16, _FP8 or _FP8_BLOCK");
  if (block_scale(p)) {
    // 128x128 weight blocks and 1x128 activation groups tile both matrices exactly (each half
    // of GEMM 1's rows too); the kernel keeps a row of K / 128 weight scales in shared memory.
    fi::require(p.hidden_size % 128 == 0 && p.intermediate_size % 128 == 0,
                "fp8 block-scale weights: hidden_size and intermediate_size must be multiples "
                "of 128");
    fi::require(p.hidden_size <= 20480 && p.intermediate_size <= 20480,
                "fp8 block-scale weights: hidden_size and intermediate_size must be at most "
                "20480 (the block-scale GEMM's largest K)");
    const auto tile = [](int32_t t) { return t >= -1 && t < fi::block_scale::kTileCount; };
    fi::require(tile(p.tactic_gemm1) && tile(p.tactic_gemm2),
                "fp8 block-scale weights: tactic_gemm1 and tactic_gemm2 must be -1 or a tile of "
                "the block-scale GEMM (0: 128x64, 1: 64x64)");
  }
  fi::require(int64_t(p.max_tokens) * p.num_experts <= INT_MAX &&
                  int64_t(p.max_tokens) * p.top_k <= INT_MAX,
              "max_tokens * num_experts must fit in int32 (the runner's row maps)");
}

k::MOEParallelismConfig parallelism(const fi_cutlass_moe_params& p) {
  return k::MOEParallelismConfig(1, 0, p.ep_size, p.ep_rank);
}

// The runner for the layer's weights; fp8 only in a build with its GEMMs.
std::unique_ptr<Runner> make_runner(const fi_cutlass_moe_params& p) {
  if (p.weights == FI_CUTLASS_MOE_WEIGHTS_BF16) return std::make_unique<Bf16Runner>();
#ifdef FLASHINFER_RS_MOE_FP8
  if (block_scale(p)) return std::make_unique<BlockRunner>();
  return std::make_unique<Fp8Runner>();
#else
  throw fi::Failure(FI_STATUS_KERNELS_NOT_BUILT,
                    "fp8 weights: this library was built without the CUTLASS MoE's fp8 GEMMs "
                    "(feature sm90-moe-fp8)");
#endif
}

size_t runner_bytes(Runner& runner, const fi_cutlass_moe_params& p, int64_t tokens) {
  return runner.getWorkspaceSize(tokens, p.hidden_size, p.intermediate_size, p.num_experts,
                                 p.top_k, k::ActivationType::Swiglu, parallelism(p),
                                 /*use_lora=*/false, block_scale(p),
                                 /*use_mxfp8_act_scaling=*/false, /*min_latency_mode=*/false,
                                 /*use_awq=*/false);
}

std::vector<Config> tma_ws(std::vector<Config> all) {
  std::vector<Config> out;
  for (auto& c : all) {
    if (c.is_tma_warp_specialized) out.push_back(c);
  }
  return out;
}

const Config& pick(const std::vector<Config>& tactics, int32_t index, const char* which) {
  // -1 (chosen per call) starts from the first tactic until the first call picks.
  int32_t i = index == -1 ? 0 : index;
  if (i < 0 || tactics.empty() || size_t(i) >= tactics.size()) {
    throw fi::Failure(FI_STATUS_INVALID_ARGUMENT,
                      std::string(which) + " tactic " + std::to_string(index) + " out of range (" +
                          std::to_string(tactics.size()) + " tactics)");
  }
  return tactics[i];
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

fi_cutlass_moe_tactic describe(const Config& c) {
  auto [m, n, k] = tensorrt_llm::cutlass_extensions::enum_to_shape_tuple(c.tile_config_sm90);
  (void)k;
  return fi_cutlass_moe_tactic{
      int32_t(m), int32_t(n), c.swap_ab ? 1 : 0,
      c.epilogue_fusion_type == Config::EpilogueFusionType::FINALIZE ? 1 : 0};
}

// The index of the tactic with this tile width and operand order, without the fused weighted
// sum (whose atomic scatter changes the output's bits from call to call); the first tactic if
// the build has none such (then every tactic is one of the build's, and correct).
size_t find(const std::vector<Config>& tactics, int32_t tile_n, bool swap_ab) {
  for (size_t i = 0; i < tactics.size(); ++i) {
    fi_cutlass_moe_tactic t = describe(tactics[i]);
    if (t.tile_m == 128 && t.tile_n == tile_n && t.swap_ab == int32_t(swap_ab) && !t.finalize) {
      return i;
    }
  }
  return 0;
}

// Below this many mean rows per expert the 128x16 swapped tactics win (BENCHMARKS.md section 7:
// Qwen3 and DeepSeek-V3-sized layers on an H200).
constexpr int64_t kFewRows = 16;

// Below this many mean rows per expert a 128-row tile is less than half full, and both rules
// below change tile there.
//
// bf16 and fp8 per-tensor weights: from kFewRows on, the 128x64 swapped tactics, whose 64-token
// side pads an expert's tokens half as much as 128x256's 128 rows (on an H100, 7n: 0.97x the
// 128x256's time at 32 Qwen3 rows an expert in bf16 and fp8, the fastest fixed pair at 16 and 32
// DeepSeek-V3-sized rows, 1.2% and 0.4% below 128x256); from kHalfTileRows on, 128x256. At 64 rows
// the two layers part: Qwen3's fastest pair stays 128x64 swapped (3% ahead), but the DeepSeek-V3-
// sized layer (hidden 7168) takes 1.03x the 128x256's time with it in GEMM 1 and 1.09x in GEMM 2,
// and no rule of rows alone gives both.
//
// Block-scale weights: GEMM 1 takes the 64x64 tile (kNarrowTile, two CTAs per SM) below it,
// upstream's 128x64 (kWideTile) from it on; GEMM 2 takes 64x64 at every size. On an H100 the
// 64x64 tile took both GEMMs of both layers in 0.59-0.88x the 128x64's time at 16-512 tokens,
// bit for bit the same output, and at 4096 tokens (256 rows per expert) the fastest pair was
// 128x64 in GEMM 1, 64x64 in GEMM 2 (docs/fp8-on-hopper.md section 10, BENCHMARKS.md 7g).
constexpr int64_t kHalfTileRows = 64;

// Whether a call's mean rows per expert, num_tokens * top_k / num_experts, fall below `rows`
// (in integers, no division): what the per-call tactic rules above decide on.
bool fewer_rows_than(int64_t rows, int64_t num_tokens, const fi_cutlass_moe_params& p) {
  return num_tokens * p.top_k < rows * p.num_experts;
}

int32_t tactic_count(const fi_cutlass_moe& layer, int32_t gemm) {
  if (block_scale(layer.params)) return fi::block_scale::kTileCount;
  return int32_t((gemm == 1 ? layer.tactics1 : layer.tactics2).size());
}

// What a call of num_tokens tokens launches (fi_cutlass_moe_kernels_for's doc): the one rule
// fi_cutlass_moe_run applies and fi_cutlass_moe_kernels_for reports. Host-side, no launch.
fi_cutlass_moe_kernels choose(const fi_cutlass_moe& layer, int32_t num_tokens) {
  const fi_cutlass_moe_params& p = layer.params;
  if (num_tokens == 0) return {FI_CUTLASS_MOE_PATH_NONE, -1, -1};
  if (num_tokens <= p.decode_max_tokens) return {FI_CUTLASS_MOE_PATH_DECODE, -1, -1};
  if (!layer.per_call) return {FI_CUTLASS_MOE_PATH_GEMMS, p.tactic_gemm1, p.tactic_gemm2};
  if (block_scale(p)) {
    const int32_t tile1 = fewer_rows_than(kHalfTileRows, num_tokens, p)
                              ? fi::block_scale::kNarrowTile
                              : fi::block_scale::kWideTile;
    return {FI_CUTLASS_MOE_PATH_GEMMS, tile1, fi::block_scale::kNarrowTile};
  }
  auto [t1, t2] = fewer_rows_than(kFewRows, num_tokens, p)        ? layer.few_rows
                  : fewer_rows_than(kHalfTileRows, num_tokens, p) ? layer.some_rows
                                                                  : layer.many_rows;
  return {FI_CUTLASS_MOE_PATH_GEMMS, int32_t(t1), int32_t(t2)};
}

void validate(const fi_cutlass_moe& layer, const fi_cutlass_moe_buffers& b) {
  const fi_cutlass_moe_params& p = layer.params;
  fi::require(b.num_tokens >= 0 && b.num_tokens <= p.max_tokens,
              "num_tokens must be in 0..=max_tokens");
  fi::require(b.hidden_states && b.expert_ids && b.expert_scales && b.fc1_weights &&
                  b.fc2_weights && b.output && b.workspace,
              "every buffer must be non-NULL");
  fi::require(b.workspace_bytes >= layer.total_bytes,
              "workspace_bytes is smaller than fi_cutlass_moe_workspace_size");
  const bool fp8 = p.weights == FI_CUTLASS_MOE_WEIGHTS_FP8;
  const bool scales = b.fp8_input_quant && b.fp8_fc1_dequant && b.fp8_fc2_quant &&
                      b.fp8_fc2_dequant;
  const bool no_scales = !b.fp8_input_quant && !b.fp8_fc1_dequant && !b.fp8_fc2_quant &&
                         !b.fp8_fc2_dequant;
  fi::require(fp8 ? scales : no_scales,
              fp8 ? "fp8 per-tensor weights need all four fp8 scale pointers"
                  : "only fp8 per-tensor weights take the fp8 scales (their pointers must be "
                    "NULL)");
  const bool block = block_scale(p);
  fi::require(block ? b.fc1_block_scales && b.fc2_block_scales
                    : !b.fc1_block_scales && !b.fc2_block_scales,
              block ? "fp8 block-scale weights need fc1_block_scales and fc2_block_scales"
                    : "only fp8 block-scale weights take block scales (their pointers must be "
                      "NULL)");
  fi::require(reinterpret_cast<uintptr_t>(b.fc1_block_scales) % alignof(float) == 0 &&
                  reinterpret_cast<uintptr_t>(b.fc2_block_scales) % alignof(float) == 0,
              "fc1_block_scales and fc2_block_scales must be 4-byte aligned");
  // TMA reads the activations and weights by 16-byte rows.
  fi::require(aligned16(b.hidden_states) && aligned16(b.fc1_weights) && aligned16(b.fc2_weights) &&
                  aligned16(b.output),
              "hidden_states, fc1_weights, fc2_weights and output must be 16-byte aligned");
  fi::require(reinterpret_cast<uintptr_t>(b.workspace) % kAlign == 0,
              "workspace must be 256-byte aligned");
}

}  // namespace

// The runner's LoRA path calls this (moe_kernels.h); this crate never takes it (every call
// passes use_lora = false), and upstream's definition (lora.cpp) needs cuBLAS. Should it ever be
// reached, it refuses with an error the C ABI reports.
namespace tensorrt_llm::kernels {
int Lora_run(LoraImpl*, int64_t, int64_t, void const*, int32_t const*, void const* const*, int,
             void* const*, void*, cudaStream_t) {
  throw std::runtime_error("flashinfer-rs builds the CUTLASS MoE without LoRA");
}
}  // namespace tensorrt_llm::kernels

namespace fi {
bool cutlass_moe_built() { return true; }
#ifdef FLASHINFER_RS_MOE_FP8
bool cutlass_moe_fp8_built() { return true; }
#else
bool cutlass_moe_fp8_built() { return false; }
#endif
// Its GEMMs are sm_90a code: H100, H200, H20, GH200 (9.0) only.
bool cutlass_moe_built_for(int major, int minor) { return major == 9 && minor == 0; }
}  // namespace fi

extern "C" fi_status fi_cutlass_moe_create(const fi_cutlass_moe_params* params,
                                           fi_cutlass_moe** out) {
  return fi::guarded([&] {
    fi::require(params != nullptr && out != nullptr, "params and out must not be NULL");
    *out = nullptr;
    validate(*params);
    fi::require_cutlass_moe_arch();
    auto layer = std::make_unique<fi_cutlass_moe>();
    layer->params = *params;
    fi::check_cuda(cudaGetDevice(&layer->device), "cudaGetDevice");
    layer->runner = make_runner(*params);
    fi::require((params->tactic_gemm1 == -1) == (params->tactic_gemm2 == -1),
                "tactic_gemm1 and tactic_gemm2 must both be -1 (chosen per call) or neither");
    layer->per_call = params->tactic_gemm1 == -1;
    if (block_scale(*params)) {
      // Its GEMMs are the block-scale runner's (BlockScaleFC1/FC2), which take no config; runMoe
      // still requires one set (and reads only its epilogue schedule, AUTO here). The tactics
      // are our block-scale GEMM's tiles (validated above), told to it around each call
      // (TileScope); tactics -1 choose them per call (kHalfTileRows).
      layer->runner->setTactic(Config{}, Config{});
    } else {
      layer->tactics1 = tma_ws(layer->runner->getTactics(k::MoeGemmId::GEMM_1));
      layer->tactics2 = tma_ws(layer->runner->getTactics(k::MoeGemmId::GEMM_2));
      if (layer->per_call) {
        layer->few_rows = {find(layer->tactics1, 16, true), find(layer->tactics2, 16, true)};
        layer->some_rows = {find(layer->tactics1, 64, true), find(layer->tactics2, 64, true)};
        layer->many_rows = {find(layer->tactics1, 256, false),
                            find(layer->tactics2, 256, false)};
      }
      layer->runner->setTactic(pick(layer->tactics1, params->tactic_gemm1, "GEMM 1"),
                               pick(layer->tactics2, params->tactic_gemm2, "GEMM 2"));
    }
    layer->runner_bytes = runner_bytes(*layer->runner, *params, params->max_tokens);
    layer->map_offset = align_up(layer->runner_bytes);
    size_t map_bytes = size_t(params->max_tokens) * size_t(params->top_k) * sizeof(int);
    layer->decode_offset = align_up(layer->map_offset + map_bytes);
    size_t decode_bytes =
        fi::decode::workspace_bytes(std::min(params->decode_max_tokens, params->max_tokens),
                                    params->top_k, params->hidden_size, params->intermediate_size,
                                    block_scale(*params));
    layer->fp8_input_offset = align_up(layer->decode_offset + decode_bytes);
    size_t fp8_input_bytes = params->weights == FI_CUTLASS_MOE_WEIGHTS_FP8
                                 ? size_t(params->max_tokens) * size_t(params->hidden_size)
                                 : 0;
    layer->total_bytes = layer->fp8_input_offset + fp8_input_bytes;
    *out = layer.release();
  });
}

extern "C" void fi_cutlass_moe_destroy(fi_cutlass_moe* layer) { delete layer; }

extern "C" fi_status fi_cutlass_moe_workspace_size(const fi_cutlass_moe* layer, size_t* bytes) {
  return fi::guarded([&] {
    fi::require(layer != nullptr && bytes != nullptr, "layer and bytes must not be NULL");
    *bytes = layer->total_bytes;
  });
}

extern "C" fi_status fi_cutlass_moe_tactic_count(const fi_cutlass_moe* layer, int32_t* gemm1,
                                                 int32_t* gemm2) {
  return fi::guarded([&] {
    fi::require(layer != nullptr && gemm1 != nullptr && gemm2 != nullptr,
                "layer, gemm1 and gemm2 must not be NULL");
    *gemm1 = tactic_count(*layer, 1);
    *gemm2 = tactic_count(*layer, 2);
  });
}

extern "C" fi_status fi_cutlass_moe_tactic_info(const fi_cutlass_moe* layer, int32_t gemm,
                                                int32_t index, fi_cutlass_moe_tactic* out) {
  return fi::guarded([&] {
    fi::require(layer != nullptr && out != nullptr, "layer and out must not be NULL");
    fi::require(gemm == 1 || gemm == 2, "gemm must be 1 or 2");
    fi::require(index >= 0 && index < tactic_count(*layer, gemm), "tactic index out of range");
    if (block_scale(layer->params)) {
      const fi::block_scale::Tile tile = fi::block_scale::kTiles[index];
      *out = fi_cutlass_moe_tactic{tile.rows, tile.cols, 0, 0};
      return;
    }
    *out = describe((gemm == 1 ? layer->tactics1 : layer->tactics2)[size_t(index)]);
  });
}

extern "C" fi_status fi_cutlass_moe_kernels_for(const fi_cutlass_moe* layer, int32_t num_tokens,
                                                fi_cutlass_moe_kernels* out) {
  return fi::guarded([&] {
    fi::require(layer != nullptr && out != nullptr, "layer and out must not be NULL");
    fi::require(num_tokens >= 0 && num_tokens <= layer->params.max_tokens,
                "num_tokens must be in 0..=max_tokens");
    *out = choose(*layer, num_tokens);
  });
}

extern "C" fi_status fi_cutlass_moe_run(fi_cutlass_moe* layer,
                                        const fi_cutlass_moe_buffers* buffers, void* stream) {
  return fi::guarded([&] {
    fi::require(layer != nullptr && buffers != nullptr, "layer and buffers must not be NULL");
    const fi_cutlass_moe_buffers& b = *buffers;
    validate(*layer, b);
    int device = 0;
    fi::check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    fi::require(device == layer->device, "the current device is not the layer's device");
    const fi_cutlass_moe_kernels kernels = choose(*layer, b.num_tokens);
    if (kernels.path == FI_CUTLASS_MOE_PATH_NONE) return;
    const fi_cutlass_moe_params& p = layer->params;
    char* workspace = static_cast<char*>(b.workspace);
    if (kernels.path == FI_CUTLASS_MOE_PATH_DECODE) {
      // No runner state: no lock.
      const int32_t local = p.num_experts / p.ep_size;
      fi::decode::Problem problem{
          static_cast<const __nv_bfloat16*>(b.hidden_states),
          b.expert_ids,
          b.expert_scales,
          b.fc1_weights,
          b.fc2_weights,
          static_cast<__nv_bfloat16*>(b.output),
          workspace + layer->decode_offset,
          b.num_tokens,
          p.top_k,
          p.hidden_size,
          p.intermediate_size,
          p.ep_rank * local,
          local,
          {b.fp8_input_quant, b.fp8_fc1_dequant, b.fp8_fc2_quant, b.fp8_fc2_dequant},
          {b.fc1_block_scales, b.fc2_block_scales},
      };
      fi::decode::run(problem, static_cast<cudaStream_t>(stream));
      return;
    }
    std::lock_guard<std::mutex> lock(layer->mutex);
    // The runner lays its workspace out for this call's token count; the layer sized it for
    // max_tokens. Never let a smaller count need more (it would overrun the row map).
    if (runner_bytes(*layer->runner, p, b.num_tokens) > layer->runner_bytes) {
      throw fi::Failure(FI_STATUS_INTERNAL_ERROR,
                        "the runner's workspace at " + std::to_string(b.num_tokens) +
                            " tokens exceeds its size at max_tokens");
    }
    if (layer->per_call && !block_scale(p)) {
      // Host-side only: the runner reads its tactics when it launches the GEMMs below (a layer
      // of fixed tactics was given them at creation).
      layer->runner->setTactic(layer->tactics1[size_t(kernels.tactic_gemm1)],
                               layer->tactics2[size_t(kernels.tactic_gemm2)]);
    }
    int* map = reinterpret_cast<int*>(workspace + layer->map_offset);
    k::QuantParams quant{};
    const void* input = b.hidden_states;
#ifdef FLASHINFER_RS_MOE_FP8
    if (p.weights == FI_CUTLASS_MOE_WEIGHTS_FP8) {
      // The runner takes e4m3 input as it is (upstream leaves the quantisation to the caller).
      auto* q = reinterpret_cast<__nv_fp8_e4m3*>(workspace + layer->fp8_input_offset);
      fi::fp8::quantize(static_cast<const __nv_bfloat16*>(b.hidden_states), b.fp8_input_quant, q,
                        int64_t(b.num_tokens) * p.hidden_size, static_cast<cudaStream_t>(stream));
      input = q;
      // One activation scale for GEMM 2's input (not per expert); no fp8 output.
      quant = k::QuantParams::FP8(b.fp8_fc1_dequant, b.fp8_fc2_quant, b.fp8_fc2_dequant);
    }
    std::optional<fi::block_scale::TileScope> tiles;
    if (block_scale(p)) {
      // bf16 input as it is: each GEMM quantises its input per token and 128 columns.
      quant = k::QuantParams::FP8BlockScaling(b.fc1_block_scales, b.fc2_block_scales);
      tiles.emplace(kernels.tactic_gemm1, kernels.tactic_gemm2, p.hidden_size,
                    p.intermediate_size);
    }
#endif
    tensorrt_llm::kernels::LoraParams lora{};
    k::MoeMinLatencyParams min_latency{};
    // Programmatic dependent launch, upstream's default on sm_90 (`device_support_pdl`): each of
    // the runner's kernels may be scheduled while the one before it drains, and waits
    // (griddepcontrol.wait, CUTLASS_ENABLE_GDC_FOR_SM90) for its completion before reading its
    // output. The first one does so for our router too, which lets its dependents launch
    // early since it is launched with programmatic dependent launch itself (topk_router.cu),
    // and whatever the caller launches next waits for the last one as usual. Graph capture keeps
    // these as programmatic edges.
    layer->runner->runMoe(
        input, /*input_sf=*/nullptr, /*swizzled_input_sf=*/false, b.expert_ids,
        b.expert_scales, b.fc1_weights, /*fc1_expert_biases=*/nullptr,
        k::ActivationParams(k::ActivationType::Swiglu), b.fc2_weights,
        /*fc2_expert_biases=*/nullptr, quant, b.num_tokens, p.hidden_size,
        /*unpadded_hidden_size=*/p.hidden_size, p.intermediate_size, p.num_experts, p.top_k,
        workspace, b.output, map, parallelism(p), /*enable_alltoall=*/false, /*use_lora=*/false,
        lora, block_scale(p), /*use_mxfp8_act_scaling=*/false,
        /*min_latency_mode=*/false, min_latency, /*enable_pdl=*/true,
        static_cast<cudaStream_t>(stream));
    fi::check_cuda(cudaGetLastError(), "the CUTLASS MoE's kernel launches");
  });
}
