// moe_fp8.h: the fp8 per-tensor Hopper MoE layer's input quantisation (moe_fp8.cu), which
// fi_cutlass_moe_run enqueues before the runner's kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fi::fp8 {

// out[i] = e4m3(x[i] * quant[0]) for i < n, saturated to +-448 (NaN stays NaN), rounded to
// nearest even: the quantisation the runner expects of its fp8 input (upstream leaves it to
// the caller). `n` is a multiple of 8 and both pointers are 16-byte aligned.
void quantize(const __nv_bfloat16* x, const float* quant, __nv_fp8_e4m3* out, int64_t n,
              cudaStream_t stream);

}  // namespace fi::fp8
