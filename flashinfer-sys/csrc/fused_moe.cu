// fused_moe.cu: the fused MoE entry points of the C ABI (fi_moe_*, fi_cubin_probe).
//
// The job is split by file: moe_env.cu sets up what upstream's Python binding would (stream,
// scratch allocator, cubin hook), moe_marshal.cu turns fi_moe_args into upstream's arguments
// and calls it; this file holds the entry points, which run every check that may refuse a
// call before upstream is touched, and the stubs of builds without the `sm100` feature.
//
// Every entry point passes fi::require_fused_arch() before touching upstream: besides
// refusing non-Blackwell devices with FI_STATUS_UNSUPPORTED_ARCH, it runs the device queries
// that upstream's batched-GEMM runner repeats through `getSMVersion()` in
// flashinfer/trtllm/common.h, whose CUDACHECK *exits the process* on failure. Ours turn the
// same failure into FI_STATUS_CUDA_ERROR first.
#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"
#include "info.h"
#include "status.h"

#ifdef FLASHINFER_RS_SM100

#include <algorithm>
#include <mutex>

#include "moe_env.h"
#include "moe_marshal.h"

extern "C" {
int __tvm_ffi_trtllm_get_valid_moe_configs(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
}

struct fi_moe_outputs {
  tvm::ffi::Array<tvm::ffi::Tensor> tensors;
};

extern "C" fi_status fi_moe_run(const fi_moe_args* args, void* stream,
                                fi_moe_outputs** unfinalized) {
  return fi::guarded([&] {
    fi::require(args != nullptr && unfinalized != nullptr, "args and unfinalized must not be NULL");
    *unfinalized = nullptr;
    fi::require_fused_arch();
    std::lock_guard<std::mutex> lock(fi::moe::g_call_mutex);
    fi::moe::install_cubin_hook();
    fi::moe::CallEnv env(args->device, stream);
    auto out = fi::moe::with_cubin_errors([&] { return fi::moe::call_upstream(*args); });
    if (args->do_finalize == 0) *unfinalized = new fi_moe_outputs{std::move(out)};
  });
}

extern "C" int32_t fi_moe_outputs_count(const fi_moe_outputs* outputs) {
  return outputs == nullptr ? 0 : static_cast<int32_t>(outputs->tensors.size());
}

extern "C" fi_status fi_moe_dry_run_without_device(const fi_moe_args* args) {
  return fi::guarded([&] {
    fi::require(args != nullptr, "args must not be NULL");
    int devices = 0;
    bool has_device = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
    (void)cudaGetLastError();
    if (has_device) {
      throw fi::Failure(FI_STATUS_INVALID_ARGUMENT,
                        "fi_moe_dry_run_without_device runs only where no CUDA device is "
                        "present (upstream would launch)");
    }
    std::lock_guard<std::mutex> lock(fi::moe::g_call_mutex);
    fi::moe::CallEnv env(args->device, nullptr);
    fi::moe::call_upstream(*args);
    throw fi::Failure(FI_STATUS_INTERNAL_ERROR, "upstream returned without a CUDA device");
  });
}

extern "C" fi_status fi_cubin_probe(const char* path, const char* sha256, size_t* size) {
  return fi::guarded([&] {
    fi::require(path != nullptr && sha256 != nullptr && size != nullptr,
                "path, sha256 and size must not be NULL");
    std::lock_guard<std::mutex> lock(fi::moe::g_call_mutex);
    fi::moe::install_cubin_hook();
    *size = fi::moe::with_cubin_errors([&] { return flashinfer::trtllm_cubin_loader::getCubin(path, sha256); })
                .size();
  });
}

extern "C" fi_status fi_moe_outputs_get(const fi_moe_outputs* outputs, int32_t index,
                                        fi_tensor* out) {
  return fi::guarded([&] {
    fi::require(outputs != nullptr && out != nullptr, "outputs and out must not be NULL");
    fi::require(index >= 0 && index < static_cast<int32_t>(outputs->tensors.size()),
                "index out of range");
    *out = fi_tensor{};
    const tvm::ffi::Tensor& t = outputs->tensors[index];
    if (!t.defined()) return;
    const DLTensor* d = t.GetDLTensorPtr();
    fi::require(d->ndim >= 1 && d->ndim <= 4, "upstream returned a tensor of unexpected rank");
    out->data = static_cast<char*>(d->data) + d->byte_offset;
    out->ndim = d->ndim;
    for (int i = 0; i < d->ndim; ++i) out->shape[i] = d->shape[i];
    out->dtype = fi::moe::fi_dtype_of(d->dtype);
  });
}

extern "C" void fi_moe_outputs_free(fi_moe_outputs* outputs) {
  // Dropping the last references runs free_scratch: cudaFreeAsync on the run's stream.
  try {
    delete outputs;
  } catch (...) {
    // Destructors here do not throw; nothing may unwind across the C ABI regardless.
  }
}

extern "C" fi_status fi_moe_valid_configs(const fi_moe_config_query* q, int64_t* pairs,
                                          int32_t capacity, int32_t* count) {
  return fi::guarded([&] {
    fi::require(q != nullptr && count != nullptr, "query and count must not be NULL");
    fi::require(capacity >= 0 && (capacity == 0 || pairs != nullptr),
                "pairs must hold capacity entries");
    fi::require_fused_arch();
    auto configs = fi::moe::upstream(__tvm_ffi_trtllm_get_valid_moe_configs)(
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

namespace {
fi_status not_built() {
  return fi::fail(FI_STATUS_KERNELS_NOT_BUILT,
                  "the fused MoE is built only with the `sm100` feature of flashinfer-sys");
}
}  // namespace

extern "C" fi_status fi_moe_valid_configs(const fi_moe_config_query*, int64_t*, int32_t,
                                          int32_t*) {
  return not_built();
}

extern "C" fi_status fi_moe_run(const fi_moe_args*, void*, fi_moe_outputs** unfinalized) {
  if (unfinalized != nullptr) *unfinalized = nullptr;
  return not_built();
}

extern "C" int32_t fi_moe_outputs_count(const fi_moe_outputs*) { return 0; }

extern "C" fi_status fi_moe_outputs_get(const fi_moe_outputs*, int32_t, fi_tensor*) {
  return not_built();
}

extern "C" void fi_moe_outputs_free(fi_moe_outputs*) {}

extern "C" fi_status fi_cubin_probe(const char*, const char*, size_t* size) {
  if (size != nullptr) *size = 0;
  return not_built();
}

extern "C" fi_status fi_moe_dry_run_without_device(const fi_moe_args*) { return not_built(); }

#endif
