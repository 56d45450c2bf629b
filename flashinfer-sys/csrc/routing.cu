// routing.cu: the routing entry points of the C ABI (fi_routing_*).
//
// fi_routing_run mirrors `tensorrt_llm::kernels::trtllmgen_moe::Routing::Runner::run` of
// FlashInfer 0.6.13 (csrc/trtllm_fused_moe_runner.cu) method by method: the same Data fields,
// preprocess/postprocess policies and kernels. We do not call Runner::run itself because it
// lives in the same translation unit as the batched-GEMM runners, which exist only for
// Blackwell; building our own dispatch over the same kernels lets routing (and so replay) run
// on Hopper. Differences from Runner::run, all deliberate:
//   - `use_pdl` is the caller's choice (Runner::run always enables PDL);
//   - a call with num_tokens == 0 enqueues nothing and succeeds;
//   - Llama4 with a replay buffer is refused unless the Llama4 replay backport is applied
//     (0.6.13's Llama4 kernels never write replay; see vendor/patches).
// Where our patches change Runner::run (the DeepSeekV3 sum epsilons, vendor/patches/0002 and
// 0003), this dispatch follows the patched Runner::run; each patch defines the macro below
// that says it is applied, so a tree built without it (a regression proof) stays 0.6.13's.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <string>

#include "flashinfer/trtllm/fused_moe/RoutingKernel.h"
#include "flashinfer/trtllm/fused_moe/runner.h"
#include "flashinfer_rs.h"
#include "info.h"
#include "status.h"

namespace {

namespace routing = moe::dev::routing;
namespace tg = batchedGemm::trtllm::gen;

// The floor of the DeepSeekV3 renormalisation, sum + epsilon: 1e-20 as in DeepSeek-V3's
// reference gate (modeling_deepseek.py) and upstream's fixes c53229efd (no groups) and
// 57b771995 (groups), backported as patches 0002 and 0003; MiniMax2 had it in 0.6.13.
constexpr float kSumEpsilon = 1e-20f;
#ifdef FLASHINFER_RS_DEEPSEEK_UNGROUPED_EPSILON
constexpr float kDeepSeekUngroupedEpsilon = kSumEpsilon;
#else
constexpr float kDeepSeekUngroupedEpsilon = 0.0f;  // 0.6.13: 0/0 = NaN on sigmoid underflow
#endif

tg::Dtype to_tg(fi_dtype d) {
  switch (d) {
    case FI_DTYPE_F32:
      return tg::Dtype::Fp32;
    case FI_DTYPE_BF16:
      return tg::Dtype::Bfloat16;
  }
  throw fi::Failure(FI_STATUS_INVALID_ARGUMENT, "dtype must be FI_DTYPE_F32 or FI_DTYPE_BF16");
}

int32_t log2_exact(int32_t v) {
  int32_t out = 0;
  while ((1 << out) < v) ++out;
  return (1 << out) == v ? out : -1;
}

// The fields every routing Data shares (DataBase), filled as Runner::run fills them.
void fill_common(routing::DataBase& d, const fi_routing_params& p, const void* logits,
                 const fi_routing_buffers& b, int16_t* replay) {
  d.mUsePdl = p.use_pdl != 0;
  d.mPtrScores = logits;
  d.mPtrTopKIds = nullptr;  // logits in, never pre-computed ids
  d.mPtrTopKPacked = b.topk_packed;
  d.mPtrTopKWeights = b.topk_weights;
  d.mPtrExpertCounts = b.expert_counts;
  d.mPtrPermutedIdxSize = b.permuted_idx_size;
  d.mPtrExpandedIdxToPermutedIdx = b.expanded_idx_to_permuted_idx;
  d.mPtrPermutedIdxToExpandedIdx = nullptr;  // only the Mn-bias GEMM path reads it
  d.mPtrPermutedIdxToTokenIdx = b.permuted_idx_to_token_idx;
  d.mPtrCtaIdxXyToBatchIdx = b.cta_idx_xy_to_batch_idx;
  d.mPtrCtaIdxXyToMnLimit = b.cta_idx_xy_to_mn_limit;
  d.mPtrNumNonExitingCtas = b.num_non_exiting_ctas;
  d.mNumTokens = p.num_tokens;
  d.mNumExperts = p.num_experts;
  d.mTopK = p.top_k;
  d.mPaddingLog2 = log2_exact(p.tile_tokens_dim);
  d.mTileTokensDim = p.tile_tokens_dim;
  d.mLocalExpertsStartIdx = p.local_expert_offset;
  d.mLocalExpertsStrideLog2 = 0;
  d.mNumLocalExperts = p.local_num_experts;
  d.mPtrRoutingReplayOut = replay;
}

// Sigmoid + bias selection, scaled sum normalisation: DeepSeekV3 without groups and MiniMax2.
void run_sigmoid_bias(const fi_routing_params& p, const void* logits, const void* bias,
                      const fi_routing_buffers& b, int16_t* replay, float sum_epsilon,
                      cudaStream_t stream) {
  routing::routingCustom::Data d;
  fill_common(d, p, logits, b, replay);
  d.mDtypeOutput = tg::Dtype::Bfloat16;
  d.mDtypeInput = to_tg(p.logits_dtype);
  d.mPreprocessType = routing::RoutingPreprocessType::SigmoidBias;
  d.mPostprocessType = routing::RoutingPostprocessType::ScaledSumNormalize;
  d.mPtrRoutingBias = bias;
  d.mDtypeBias = to_tg(p.bias_dtype);
  d.mRouteScale = p.routed_scaling_factor;
  d.mSumEpsilon = sum_epsilon;
  routing::routingCustom::run(d, stream);
}

void run_deepseek_grouped(const fi_routing_params& p, const void* logits, const void* bias,
                          const fi_routing_buffers& b, int16_t* replay, cudaStream_t stream) {
  routing::routingDeepSeek::Data d;
  fill_common(d, p, logits, b, replay);
  d.mDtypeOutput = tg::Dtype::Bfloat16;
  d.mDtypeInput = to_tg(p.logits_dtype);
  d.mPtrRoutingBias = bias;
  d.mDtypeBias = to_tg(p.bias_dtype);
  d.mHiddenDim = 0;  // unused by the kernels
  d.mNumExpertGroups = p.n_group;
  d.mNumLimitedGroups = p.topk_group;
  d.mRouteScale = p.routed_scaling_factor;
#ifdef FLASHINFER_RS_DEEPSEEK_GROUPED_EPSILON
  d.mSumEpsilon = kSumEpsilon;  // the field exists only with patch 0003
#endif
  d.mUseRoutingSoftmax = false;
  routing::routingDeepSeek::run(d, stream);
}

void run_llama4(const fi_routing_params& p, const void* logits, const fi_routing_buffers& b,
                int16_t* replay, cudaStream_t stream) {
#ifndef FLASHINFER_RS_LLAMA4_REPLAY
  fi::require(replay == nullptr,
              "Llama4 routing does not write routing_replay_out in FlashInfer 0.6.13 and the "
              "Llama4 replay backport is not applied to this build");
#endif
  routing::routingLlama4::Data d;
  fill_common(d, p, logits, b, replay);
  d.mDtypeOutput = tg::Dtype::Bfloat16;
  d.mDtypeInput = to_tg(p.logits_dtype);
  routing::routingLlama4::run(d, stream);
}

// Default, Renormalize(Naive), TopK, SigmoidRenorm, Sigmoid: the policy-based custom kernels.
void run_custom(const fi_routing_params& p, const void* logits, const fi_routing_buffers& b,
                int16_t* replay, cudaStream_t stream) {
  using routing::RoutingPostprocessType;
  using routing::RoutingPreprocessType;
  routing::routingCustom::Data d;
  fill_common(d, p, logits, b, replay);
  d.mDtypeOutput = tg::Dtype::Bfloat16;
  d.mDtypeInput = to_tg(p.logits_dtype);
  switch (p.method) {
    case FI_ROUTING_DEFAULT:  // softmax over all experts, then top-k
      d.mPreprocessType = RoutingPreprocessType::Softmax;
      d.mPostprocessType = RoutingPostprocessType::None;
      break;
    case FI_ROUTING_SIGMOID_RENORM:
      d.mPreprocessType = RoutingPreprocessType::Sigmoid;
      d.mPostprocessType = RoutingPostprocessType::SumNormalize;
      d.mNormTopkProb = p.norm_topk_prob != 0;
      break;
    case FI_ROUTING_SIGMOID:  // SumNormalize with normalisation off, as upstream
      d.mPreprocessType = RoutingPreprocessType::Sigmoid;
      d.mPostprocessType = RoutingPostprocessType::SumNormalize;
      d.mNormTopkProb = false;
      break;
    case FI_ROUTING_RENORMALIZE:
    case FI_ROUTING_RENORMALIZE_NAIVE:  // mathematically the same; upstream shares the kernel
      d.mPreprocessType = RoutingPreprocessType::None;
      d.mPostprocessType = RoutingPostprocessType::Softmax;
      break;
    default:  // FI_ROUTING_TOPK
      d.mPreprocessType = RoutingPreprocessType::None;
      d.mPostprocessType = RoutingPostprocessType::None;
      break;
  }
  routing::routingCustom::run(d, stream);
}

// What this shim must see to stay memory safe; the full per-method limits are checked on the
// Rust side (and again by upstream, whose checks throw).
void check_routing_args(const fi_routing_params* p, const void* logits,
                        const fi_routing_buffers* b) {
  fi::require(p != nullptr && b != nullptr, "params and buffers must not be NULL");
  fi::require(p->num_tokens >= 0, "num_tokens must be >= 0");
  fi::require(p->num_experts > 0 && p->top_k > 0 && p->top_k <= p->num_experts,
              "need 0 < top_k <= num_experts");
  fi::require(p->method >= FI_ROUTING_DEFAULT && p->method <= FI_ROUTING_SIGMOID,
              "unknown routing method");
  fi::require(log2_exact(p->tile_tokens_dim) > 0, "tile_tokens_dim must be a power of two > 1");
  fi::require(p->local_expert_offset >= 0 && p->local_num_experts >= 0 &&
                  p->local_expert_offset + p->local_num_experts <= p->num_experts,
              "local expert range must lie inside [0, num_experts)");
  fi::require(logits != nullptr, "logits must not be NULL");
  fi::require(b->topk_weights && b->topk_packed && b->expert_counts && b->permuted_idx_size &&
                  b->expanded_idx_to_permuted_idx && b->permuted_idx_to_token_idx &&
                  b->cta_idx_xy_to_batch_idx && b->cta_idx_xy_to_mn_limit &&
                  b->num_non_exiting_ctas,
              "every routing buffer must be non-NULL");
}

// The route map's tile padding, -1 (upstream's initRoutingTilePadding, FlashInfer 0.7.1,
// issue #5349): the kernels write the slot of every (token, k) but leave the padding slots of
// each expert's last tile as they were, and a grouped GEMM's TMA gather reads them. The buffers
// are reused across calls, so without this the padding holds tokens of earlier calls (or 0):
// stale rows gathered, and a latency that depends on them. One stream-ordered memset of the
// slots this call can use, before the kernels write theirs.
void fill_tile_padding(const fi_routing_params& p, const fi_routing_buffers& b,
                       cudaStream_t stream) {
  namespace R = tensorrt_llm::kernels::trtllmgen_moe::Routing;
  int64_t slots = R::getMaxPermutedPaddedCount(p.num_tokens, p.top_k, p.num_experts,
                                               p.tile_tokens_dim);
  fi::check_cuda(cudaMemsetAsync(b.permuted_idx_to_token_idx, 0xff,
                                 static_cast<size_t>(slots) * sizeof(int32_t), stream),
                 "cudaMemsetAsync(permuted_idx_to_token_idx)");
}

}  // namespace

extern "C" fi_status fi_routing_buffer_sizes_for(int32_t num_tokens, int32_t top_k,
                                                 int32_t num_experts, int32_t tile_tokens_dim,
                                                 fi_routing_buffer_sizes* out) {
  return fi::guarded([&] {
    fi::require(out != nullptr, "out must not be NULL");
    fi::require(num_tokens >= 0 && top_k > 0 && num_experts > 0,
                "need num_tokens >= 0, top_k > 0, num_experts > 0");
    fi::require(log2_exact(tile_tokens_dim) > 0, "tile_tokens_dim must be a power of two > 1");
    namespace R = tensorrt_llm::kernels::trtllmgen_moe::Routing;
    out->topk = int64_t{num_tokens} * top_k;
    out->expert_counts = std::max<int64_t>(int64_t{num_experts} * 2, 512);
    out->max_ctas = R::getMaxNumCtasInBatchDim(num_tokens, top_k, num_experts, tile_tokens_dim);
    out->max_padded =
        R::getMaxPermutedPaddedCount(num_tokens, top_k, num_experts, tile_tokens_dim);
  });
}

extern "C" fi_status fi_routing_run(const fi_routing_params* params, const void* logits,
                                    const void* bias, const fi_routing_buffers* buffers,
                                    int16_t* replay, void* stream_ptr) {
  return fi::guarded([&] {
    check_routing_args(params, logits, buffers);
    fi::require_routing_arch();
    const fi_routing_params& p = *params;
    if (p.num_tokens == 0) return;
    auto stream = static_cast<cudaStream_t>(stream_ptr);
    fill_tile_padding(p, *buffers, stream);
    switch (p.method) {
      case FI_ROUTING_DEEPSEEK_V3:
        fi::require(bias != nullptr, "DeepSeekV3 routing needs a bias");
        if (p.n_group <= 1) {
          run_sigmoid_bias(p, logits, bias, *buffers, replay, kDeepSeekUngroupedEpsilon, stream);
        } else {
          run_deepseek_grouped(p, logits, bias, *buffers, replay, stream);
        }
        break;
      case FI_ROUTING_MINIMAX2:
        fi::require(bias != nullptr, "MiniMax2 routing needs a bias");
        run_sigmoid_bias(p, logits, bias, *buffers, replay, kSumEpsilon, stream);
        break;
      case FI_ROUTING_LLAMA4:
        run_llama4(p, logits, *buffers, replay, stream);
        break;
      default:
        run_custom(p, logits, *buffers, replay, stream);
        break;
    }
    fi::check_cuda(cudaGetLastError(), "routing kernel launch");
  });
}
