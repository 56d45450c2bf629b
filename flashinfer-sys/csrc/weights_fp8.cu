// weights_fp8.cu: bf16 weights to e4m3 in 128x128 blocks on the GPU, at load
// (fi_quantize_fp8_blocks), bit for bit as flashinfer-rs's host quantiser
// (cutlass::prepare::fp8_blocks) makes them.
//
// The build compiles every unit with -use_fast_math (approximate division, and f32 arithmetic
// and comparisons that flush denormals to zero), which would part from the host where it
// matters, so no float arithmetic here goes through it: a block's scale and each quotient are
// IEEE divisions (div.rn.f32 without .ftz, written out), bf16 becomes f32 by its bits, and the
// block's largest magnitude and the scale's floor are taken on bits (for finite non-negative
// values their order is the magnitudes'). A block of f32-subnormal weights thus keeps its
// subnormal scale, as the host's does.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>

#include "flashinfer_rs.h"
#include "status.h"

namespace {

constexpr int kBlock = 128;    // a block is kBlock x kBlock weights
constexpr int kThreads = 128;  // per block of weights
constexpr int kVec = 8;        // bf16 per 16-byte load
constexpr int kLanesPerRow = kBlock / kVec;                 // 16 threads cover a row
constexpr int kRowsPerPass = kThreads / kLanesPerRow;       // 8 rows per pass
constexpr int kPasses = kBlock / kRowsPerPass;              // 16 loads per thread
constexpr float kE4m3Max = 448.f;

// a / b, IEEE round to nearest even, denormals kept (whatever -use_fast_math says).
__device__ __forceinline__ float div_rn(float a, float b) {
  float q;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(q) : "f"(a), "f"(b));
  return q;
}

// grid: one block per 128x128 block of weights, experts x rows / 128 x cols / 128 of them in
// that order (flattened); 128 threads, each holding 16 loads of 8 values (its 128 weights) in
// registers between the block's amax and its codes, so every weight is read once.
__global__ void __launch_bounds__(kThreads)
    quantize_blocks(const __nv_bfloat16* __restrict__ weights, int64_t row_blocks,
                    int64_t col_blocks, int64_t cols, __nv_fp8_e4m3* __restrict__ codes,
                    float* __restrict__ scales, int32_t* __restrict__ nonfinite) {
  const int64_t b = blockIdx.x;  // this block's index in scales
  const int64_t expert = b / (row_blocks * col_blocks);
  const int64_t rb = (b / col_blocks) % row_blocks, cb = b % col_blocks;
  const int lane = threadIdx.x % kLanesPerRow, row0 = threadIdx.x / kLanesPerRow;
  // Element (r, c) of this block: ((expert * rows + rb * 128 + r) * cols + cb * 128 + c).
  const int64_t origin = ((expert * row_blocks + rb) * kBlock) * cols + cb * kBlock + lane * kVec;
  uint4 v[kPasses];
  uint32_t amax_bits = 0;  // the largest |w|'s bf16 bits (sign cleared)
  bool bad = false;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int64_t at = origin + int64_t(row0 + i * kRowsPerPass) * cols;
    v[i] = *reinterpret_cast<const uint4*>(weights + at);
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v[i]);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const uint32_t lo = w[j] & 0x7fffu, hi = (w[j] >> 16) & 0x7fffu;
      bad |= lo >= 0x7f80u || hi >= 0x7f80u;  // inf or NaN
      amax_bits = max(amax_bits, max(lo, hi));
    }
  }
  __shared__ uint32_t warp_amax[kThreads / 32];
  __shared__ float block_scale;
  amax_bits = __reduce_max_sync(0xffffffffu, amax_bits);
  if (__any_sync(0xffffffffu, bad) && threadIdx.x % 32 == 0) atomicOr(nonfinite, 1);
  if (threadIdx.x % 32 == 0) warp_amax[threadIdx.x / 32] = amax_bits;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t m = 0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) m = max(m, warp_amax[w]);
    // As the host: amax / 448, 1 for an all-zero block, at least the smallest positive f32
    // (so that a block of magnitudes below 6.3e-43 gets a scale, not 0 and NaN codes).
    float s = 1.f;
    if (m != 0) {
      const float q = div_rn(__uint_as_float(m << 16), kE4m3Max);
      s = __float_as_uint(q) != 0 ? q : __uint_as_float(1u);
    }
    block_scale = s;
    scales[b] = s;
  }
  __syncthreads();
  const float s = block_scale;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    const int64_t at = origin + int64_t(row0 + i * kRowsPerPass) * cols;
    const uint32_t* w = reinterpret_cast<const uint32_t*>(&v[i]);
    uint2 packed;
    uint16_t* out = reinterpret_cast<uint16_t*>(&packed);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float lo = __uint_as_float(w[j] << 16), hi = __uint_as_float(w[j] & 0xffff0000u);
      out[j] = __nv_cvt_float2_to_fp8x2(make_float2(div_rn(lo, s), div_rn(hi, s)),
                                         __NV_SATFINITE, __NV_E4M3);
    }
    *reinterpret_cast<uint2*>(codes + at) = packed;
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

extern "C" fi_status fi_quantize_fp8_blocks(const void* weights, int64_t experts, int64_t rows,
                                            int64_t cols, void* codes, float* scales,
                                            int32_t* nonfinite, void* stream) {
  return fi::guarded([&] {
    fi::require(weights != nullptr && codes != nullptr && scales != nullptr &&
                    nonfinite != nullptr,
                "weights, codes, scales and nonfinite must not be NULL");
    fi::require(aligned16(weights) && aligned16(codes) && aligned16(scales),
                "weights, codes and scales must be 16-byte aligned");
    fi::require(experts > 0 && rows > 0 && cols > 0,
                "experts, rows and cols must be positive");
    fi::require(rows % kBlock == 0 && cols % kBlock == 0,
                "rows and cols must be multiples of 128");
    // Every index below fits in int64 and the grid in one dimension.
    const int64_t row_blocks = rows / kBlock, col_blocks = cols / kBlock;
    constexpr int64_t kMaxGrid = std::numeric_limits<int32_t>::max();
    fi::require(experts <= kMaxGrid / row_blocks &&
                    experts * row_blocks <= kMaxGrid / col_blocks,
                "experts * rows / 128 * cols / 128 blocks must be at most 2^31 - 1");
    fi::require(rows <= std::numeric_limits<int64_t>::max() / cols / experts,
                "experts * rows * cols must fit in int64");
    const int64_t blocks = experts * row_blocks * col_blocks;
    quantize_blocks<<<unsigned(blocks), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const __nv_bfloat16*>(weights), row_blocks, col_blocks, cols,
        static_cast<__nv_fp8_e4m3*>(codes), scales, nonfinite);
    fi::check_cuda(cudaGetLastError(), "the fp8 block quantisation's launch");
  });
}
