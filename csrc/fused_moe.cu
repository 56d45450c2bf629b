// fused_moe.cu: the fused MoE entry points of the C ABI (sm_100a builds only).
//
// Upstream's launchers (csrc/trtllm_fused_moe_kernel_launcher.cu) are exported as tvm-ffi
// "safe call" symbols (`__tvm_ffi_<name>`). We call them through tvm::ffi::Function, which
// unpacks our arguments exactly as upstream's Python binding does and rethrows upstream's
// errors as tvm::ffi::Error, which fi::guarded turns into FI_STATUS_UPSTREAM_ERROR.
// Without the `sm100` feature every entry point answers FI_STATUS_KERNELS_NOT_BUILT.
//
// Every entry point passes fi::require_fused_arch() before touching upstream: besides
// refusing non-Blackwell devices with FI_STATUS_UNSUPPORTED_ARCH, it runs the device queries
// that upstream's batched-GEMM runner repeats through `getSMVersion()` in
// flashinfer/trtllm/common.h, whose CUDACHECK *exits the process* on failure. Ours turn the
// same failure into FI_STATUS_CUDA_ERROR first.
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/function.h>

#include <algorithm>

#include "flashinfer_rs.h"
#include "info.h"
#include "status.h"

#ifdef FLASHINFER_RS_SM100

extern "C" int __tvm_ffi_trtllm_get_valid_moe_configs(void* self, const TVMFFIAny* args,
                                                      int32_t num_args, TVMFFIAny* result);

namespace {

// A borrowed view of an exported upstream function (nothing to free).
tvm::ffi::Function upstream(TVMFFISafeCallType symbol) {
  return tvm::ffi::Function::FromExternC(nullptr, symbol, nullptr);
}

}  // namespace

extern "C" fi_status fi_moe_valid_configs(const fi_moe_config_query* q, int64_t* pairs,
                                          int32_t capacity, int32_t* count) {
  return fi::guarded([&] {
    fi::require(q != nullptr && count != nullptr, "query and count must not be NULL");
    fi::require(capacity >= 0 && (capacity == 0 || pairs != nullptr),
                "pairs must hold capacity entries");
    fi::require_fused_arch();
    auto configs = upstream(__tvm_ffi_trtllm_get_valid_moe_configs)(
                       q->dtype_act, q->dtype_weights, q->fp8_quantization, q->top_k,
                       q->hidden_size, q->intermediate_size, q->num_local_experts, q->activation,
                       q->use_shuffled_weight != 0, int64_t{q->weight_layout},
                       q->use_per_token_scaling != 0, q->num_tokens, q->has_gemm1_bias_delta != 0)
                       .cast<tvm::ffi::Array<tvm::ffi::Array<int64_t>>>();
    *count = static_cast<int32_t>(configs.size());
    int32_t n = std::min<int32_t>(capacity, *count);
    for (int32_t i = 0; i < n; ++i) {
      auto pair = configs[i];
      fi::require(pair.size() == 2, "upstream returned a config that is not a (tile_n, config) pair");
      pairs[2 * i] = pair[0];
      pairs[2 * i + 1] = pair[1];
    }
  });
}

#else  // no sm100 feature: the fused MoE is not in this build

extern "C" fi_status fi_moe_valid_configs(const fi_moe_config_query*, int64_t*, int32_t,
                                          int32_t*) {
  return fi::fail(FI_STATUS_KERNELS_NOT_BUILT,
                  "the fused MoE is built only with the `sm100` feature of flashinfer-sys");
}

#endif
