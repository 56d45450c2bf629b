// status.cpp: the thread-local last-error message and the one place where C++ exceptions
// become fi_status codes (see status.h).
#include "status.h"

#include <flashinfer/exception.h>
#include <tvm/ffi/error.h>

#include <new>

namespace fi {
namespace {
thread_local std::string last_error;
thread_local const char* last_call = "";
thread_local int32_t last_cuda_error = 0;
}

namespace {
// TensorRT-LLM's exceptions append a multi-line native backtrace to what(); a caller's log
// wants the message. Keep the first line (where every upstream message states the problem).
std::string first_line(std::string message) {
  auto nl = message.find('\n');
  if (nl != std::string::npos) message.resize(nl);
  return message;
}
}  // namespace

fi_status fail(fi_status status, std::string message, const char* call,
               int32_t cuda_error) noexcept {
  last_call = call != nullptr ? call : "";
  last_cuda_error = cuda_error;
  try {
    last_error = first_line(std::move(message));
  } catch (...) {
    // Out of memory while storing the message: keep the status, lose the text.
  }
  return status;
}

fi_status translate_current_exception() noexcept {
  try {
    throw;
  } catch (const Failure& e) {
    return fail(e.status, e.message, e.call, e.cuda_error);
  } catch (const tvm::ffi::Error& e) {
    // Upstream's TVM_FFI_ICHECK/TVM_FFI_THROW: kind plus message, without the backtrace.
    return fail(FI_STATUS_UPSTREAM_ERROR, e.kind() + ": " + e.message());
  } catch (const flashinfer::Error& e) {
    return fail(FI_STATUS_UPSTREAM_ERROR, e.what());
  } catch (const std::bad_alloc&) {
    return fail(FI_STATUS_INTERNAL_ERROR, "host allocation failed (std::bad_alloc)");
  } catch (const std::exception& e) {
    return fail(FI_STATUS_UPSTREAM_ERROR, e.what());
  } catch (...) {
    return fail(FI_STATUS_INTERNAL_ERROR, "a non-standard C++ exception reached the C ABI");
  }
}

}  // namespace fi

extern "C" const char* fi_last_error_message(void) { return fi::last_error.c_str(); }
extern "C" const char* fi_last_error_call(void) { return fi::last_call; }
extern "C" int32_t fi_last_error_cuda_code(void) { return fi::last_cuda_error; }
