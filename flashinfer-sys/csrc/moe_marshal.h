// moe_marshal.h: fi_moe_args into upstream's fused MoE entry points (moe_marshal.cu).
// sm_100 builds only.
#pragma once

#ifdef FLASHINFER_RS_SM100

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>

#include "flashinfer_rs.h"

namespace fi::moe {

// Calls the upstream entry point of `a.op` with `a` (inside a CallEnv, under g_call_mutex),
// after refusing any tensor the op does not take; returns upstream's tensors.
tvm::ffi::Array<tvm::ffi::Tensor> call_upstream(const fi_moe_args& a);

// The fi_dtype of a DLPack dtype upstream returned (FI_STATUS_INTERNAL_ERROR if none).
int32_t fi_dtype_of(DLDataType dt);

}  // namespace fi::moe

#endif  // FLASHINFER_RS_SM100
