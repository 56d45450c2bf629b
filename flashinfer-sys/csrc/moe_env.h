// moe_env.h: what upstream's Python binding provides around a fused MoE call, provided here
// (moe_env.cu), for the entry points (fused_moe.cu) and the marshalling (moe_marshal.cu):
//   - the stream: tvm-ffi's thread-local "current stream", set for the call and restored;
//   - a tensor allocator for upstream's per-call scratch, stream-ordered on that stream;
//   - the cubin loader: upstream calls a process-wide callback; ours forwards to the loader
//     registered with fi_set_cubin_loader (flashinfer-rs implements it with sha256 checks).
// sm_100 builds only.
#pragma once

#ifdef FLASHINFER_RS_SM100

#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include <mutex>
#include <string>

#include "flashinfer_rs.h"
#include "status.h"

namespace fi::moe {

// Upstream keeps its loaded cubins in an unlocked process-wide map
// (globalTrtllmGenBatchedGemmModuleCache in trtllm_batched_gemm_runner.cu) and our scratch
// pools are process-wide too: the host part of fused calls runs one at a time.
extern std::mutex g_call_mutex;

// Points upstream's process-wide cubin hook at our trampoline, once.
void install_cubin_hook();

// Set by the trampoline when the loader fails, so the status survives upstream's safe-call
// wrapper (which turns our exception into a generic tvm::ffi::Error).
extern thread_local std::string t_cubin_error;

// Runs `body`, reporting a failed cubin load (recorded by the trampoline, whatever exception
// reached us) as FI_STATUS_CUBIN_ERROR.
template <typename F>
auto with_cubin_errors(F&& body) -> decltype(body()) {
  t_cubin_error.clear();
  try {
    return body();
  } catch (...) {
    if (!t_cubin_error.empty()) throw fi::Failure(FI_STATUS_CUBIN_ERROR, t_cubin_error);
    throw;
  }
}

// Sets tvm-ffi's thread-local stream and allocator for one call and restores both after.
class CallEnv {
 public:
  CallEnv(int device, void* stream);
  ~CallEnv();
  CallEnv(const CallEnv&) = delete;
  CallEnv& operator=(const CallEnv&) = delete;

 private:
  int device_;
  TVMFFIStreamHandle old_stream_ = nullptr;
  DLPackManagedTensorAllocator old_alloc_ = nullptr;
};

// A borrowed view of an exported upstream function (nothing to free).
inline tvm::ffi::Function upstream(TVMFFISafeCallType symbol) {
  return tvm::ffi::Function::FromExternC(nullptr, symbol, nullptr);
}

}  // namespace fi::moe

// What upstream's batched-GEMM runner calls for a cubin (compiled into the launcher TU).
namespace flashinfer::trtllm_cubin_loader {
std::string getCubin(const std::string& name, const std::string& sha256);
}

#endif  // FLASHINFER_RS_SM100
