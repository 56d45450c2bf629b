// status.h: how every C ABI entry point turns C++ failures into an fi_status.
//
// Each entry point body runs inside `fi::guarded(...)`. FlashInfer's checks throw
// tvm::ffi::Error (TVM_FFI_ICHECK) or flashinfer::Error (FLASHINFER_CHECK); CUDA failures are
// reported by our own `fi::CudaError`. All of them, and anything else, stop here: nothing
// unwinds across the C ABI. The message lands in a thread-local buffer (status.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <exception>
#include <string>

#include "flashinfer_rs.h"

namespace fi {

// Records `message` (and, for a failed CUDA call, the call and its cudaError_t) as this
// thread's last error and returns `status`.
fi_status fail(fi_status status, std::string message, const char* call = "",
               int32_t cuda_error = 0) noexcept;

// A failure this shim detects itself, with the status it maps to. A failed CUDA call keeps
// its name and its cudaError_t, which the Rust side hands on as Error::Cuda { call, code }.
struct Failure : std::exception {
  fi_status status;
  std::string message;
  const char* call = "";  // a string literal: the CUDA call that failed
  int32_t cuda_error = 0;
  Failure(fi_status s, std::string m) : status(s), message(std::move(m)) {}
  Failure(std::string m, const char* c, int32_t code)
      : status(FI_STATUS_CUDA_ERROR), message(std::move(m)), call(c), cuda_error(code) {}
  const char* what() const noexcept override { return message.c_str(); }
};

inline void require(bool ok, const char* what) {
  if (!ok) throw Failure(FI_STATUS_INVALID_ARGUMENT, what);
}

// `call` must be a string literal (it is kept, not copied).
inline void check_cuda(cudaError_t err, const char* call) {
  if (err != cudaSuccess) {
    throw Failure(std::string(call) + " failed: " + cudaGetErrorName(err) + " (" +
                      cudaGetErrorString(err) + ")",
                  call, static_cast<int32_t>(err));
  }
}

// Translates the exception in flight (call only inside a catch block).
fi_status translate_current_exception() noexcept;

template <typename F>
fi_status guarded(F&& body) noexcept {
  try {
    body();
    return FI_STATUS_OK;
  } catch (...) {
    return translate_current_exception();
  }
}

}  // namespace fi
