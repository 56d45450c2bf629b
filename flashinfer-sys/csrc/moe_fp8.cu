// moe_fp8.cu: the bf16 -> e4m3 input quantisation of the fp8 per-tensor Hopper MoE layer.
// Reading the scale on the device (not as a launch argument) keeps a recorded CUDA graph
// valid when the caller rewrites it.
#include "moe_fp8.h"

#include <algorithm>

#include "launch.h"
#include "status.h"

namespace fi::fp8 {
namespace {

constexpr int kVec = 8;  // bf16 per 16-byte load (quantize8)
constexpr int kThreads = 256;

__global__ void quantize_kernel(const __nv_bfloat16* __restrict__ x,
                                const float* __restrict__ quant, __nv_fp8_e4m3* __restrict__ out,
                                int64_t vectors) {
  const float s = *quant;
  for (int64_t v = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; v < vectors;
       v += int64_t(gridDim.x) * blockDim.x) {
    reinterpret_cast<uint2*>(out)[v] = quantize8(reinterpret_cast<const uint4*>(x)[v], s);
  }
}

}  // namespace

void quantize(const __nv_bfloat16* x, const float* quant, __nv_fp8_e4m3* out, int64_t n,
              cudaStream_t stream) {
  const int64_t vectors = n / kVec;
  if (vectors == 0) return;
  // Enough blocks to fill an H100/H200 several times over; the loop strides past that.
  const int64_t blocks = std::min<int64_t>((vectors + kThreads - 1) / kThreads, 132 * 8);
  fi::launch("the fp8 input quantisation's launch", quantize_kernel,
             fi::LaunchShape{dim3(unsigned(blocks)), dim3(kThreads)}, stream, x, quant, out,
             vectors);
}

}  // namespace fi::fp8
