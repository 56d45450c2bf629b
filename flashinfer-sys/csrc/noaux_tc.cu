// noaux_tc.cu: fi_noaux_tc_run, upstream's separate DeepSeekV3 router (`fused_topk_deepseek`,
// csrc/fused_moe/noAuxTcKernels.cu), which FlashInfer supports on sm_90. We use it to
// cross-check our DeepSeekV3 routing. Its own translation unit: its headers (nv_internal's
// cudaUtils.h) clash with the routing kernels' copy of the same utilities.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "flashinfer/trtllm/fused_moe/noAuxTcKernels.h"
#include "flashinfer_rs.h"
#include "info.h"
#include "status.h"

extern "C" fi_status fi_noaux_tc_run(const fi_noaux_tc_params* params, const void* scores,
                                     const void* bias, void* topk_values, int32_t* topk_indices,
                                     int16_t* replay, void* stream_ptr) {
  return fi::guarded([&] {
    fi::require(params != nullptr, "params must not be NULL");
    const int32_t num_tokens = params->num_tokens, num_experts = params->num_experts,
                  top_k = params->top_k, n_group = params->n_group,
                  topk_group = params->topk_group;
    const float routed_scaling_factor = params->routed_scaling_factor;
    const fi_dtype scores_dtype = params->scores_dtype, bias_dtype = params->bias_dtype;
    fi::require(scores && bias && topk_values && topk_indices,
                "scores, bias, topk_values and topk_indices must not be NULL");
    fi::require(num_tokens >= 0 && num_experts > 0 && top_k > 0 && top_k <= num_experts,
                "need num_tokens >= 0 and 0 < top_k <= num_experts");
    fi::require_routing_arch();
    if (num_tokens == 0) return;
    auto stream = static_cast<cudaStream_t>(stream_ptr);
    using tensorrt_llm::kernels::invokeNoAuxTc;
    // Upstream instantiates output type == score type, for f32 and bf16 biases.
    auto s = const_cast<void*>(scores);
    auto bi = const_cast<void*>(bias);
    bool pdl = params->use_pdl != 0;
    if (scores_dtype == FI_DTYPE_F32 && bias_dtype == FI_DTYPE_F32) {
      invokeNoAuxTc<float, float, float, int32_t>(
          static_cast<float*>(s), static_cast<float*>(bi), static_cast<float*>(topk_values),
          topk_indices, num_tokens, num_experts, n_group, topk_group, top_k,
          routed_scaling_factor, pdl, stream, replay);
    } else if (scores_dtype == FI_DTYPE_F32 && bias_dtype == FI_DTYPE_BF16) {
      invokeNoAuxTc<float, __nv_bfloat16, float, int32_t>(
          static_cast<float*>(s), static_cast<__nv_bfloat16*>(bi),
          static_cast<float*>(topk_values), topk_indices, num_tokens, num_experts, n_group,
          topk_group, top_k, routed_scaling_factor, pdl, stream, replay);
    } else if (scores_dtype == FI_DTYPE_BF16 && bias_dtype == FI_DTYPE_BF16) {
      invokeNoAuxTc<__nv_bfloat16, __nv_bfloat16, __nv_bfloat16, int32_t>(
          static_cast<__nv_bfloat16*>(s), static_cast<__nv_bfloat16*>(bi),
          static_cast<__nv_bfloat16*>(topk_values), topk_indices, num_tokens, num_experts,
          n_group, topk_group, top_k, routed_scaling_factor, pdl, stream, replay);
    } else if (scores_dtype == FI_DTYPE_BF16 && bias_dtype == FI_DTYPE_F32) {
      invokeNoAuxTc<__nv_bfloat16, float, __nv_bfloat16, int32_t>(
          static_cast<__nv_bfloat16*>(s), static_cast<float*>(bi),
          static_cast<__nv_bfloat16*>(topk_values), topk_indices, num_tokens, num_experts,
          n_group, topk_group, top_k, routed_scaling_factor, pdl, stream, replay);
    } else {
      throw fi::Failure(FI_STATUS_INVALID_ARGUMENT, "scores/bias dtype must be F32 or BF16");
    }
    fi::check_cuda(cudaGetLastError(), "NoAuxTc kernel launch");
  });
}
