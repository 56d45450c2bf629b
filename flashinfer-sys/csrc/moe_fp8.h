// moe_fp8.h: the fp8 per-tensor Hopper MoE layer's input quantisation (moe_fp8.cu), which
// fi_cutlass_moe_run enqueues before the runner's kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fi::fp8 {

// Eight bf16 values (one 16-byte load) times `scale`, to e4m3 (saturating to +-448, NaN stays
// NaN, nearest even): the one conversion of the layer's fp8 input, which quantize() and the
// decode kernels (moe_decode.cu) both use so that they agree bit for bit.
__device__ __forceinline__ uint2 quantize8(uint4 bf16x8, float scale) {
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&bf16x8);
  uint2 packed;
  uint16_t* codes = reinterpret_cast<uint16_t*>(&packed);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float2 f = __bfloat1622float2(pairs[j]);
    f.x *= scale;
    f.y *= scale;
    codes[j] = __nv_cvt_float2_to_fp8x2(f, __NV_SATFINITE, __NV_E4M3);
  }
  return packed;
}

// out[i] = e4m3(x[i] * quant[0]) for i < n, saturated to +-448 (NaN stays NaN), rounded to
// nearest even: the quantisation the runner expects of its fp8 input (upstream leaves it to
// the caller). `n` is a multiple of 8 and both pointers are 16-byte aligned.
void quantize(const __nv_bfloat16* x, const float* quant, __nv_fp8_e4m3* out, int64_t n,
              cudaStream_t stream);

}  // namespace fi::fp8
