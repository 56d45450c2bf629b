// weights_fp8.cu: bf16 weights to e4m3 on the GPU, at load, bit for bit as flashinfer-rs's host
// quantisers (cutlass::prepare) make them: in 128x128 blocks (fi_quantize_fp8_blocks, DeepSeek's
// format) and with one scale per expert (fi_quantize_fp8_per_expert, the per-tensor layers').
//
// The build compiles every unit with -use_fast_math (approximate division, and f32 arithmetic
// and comparisons that flush denormals to zero), which would part from the host where it
// matters, so no float arithmetic here goes through it: scales and quotients are IEEE divisions
// (div.rn.f32 without .ftz, written out), bf16 becomes f32 by its bits, and the largest
// magnitude and the scale's floor are taken on bits (for finite non-negative values their order
// is the magnitudes'). A block of f32-subnormal weights thus keeps its subnormal scale, as the
// host's does.
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "flashinfer_rs.h"
#include "launch.h"
#include "status.h"

namespace {

constexpr int kVec = 8;  // bf16 per 16-byte load
constexpr float kE4m3Max = 448.f;

// a / b, IEEE round to nearest even, denormals kept (whatever -use_fast_math says).
__device__ __forceinline__ float div_rn(float a, float b) {
  float q;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(q) : "f"(a), "f"(b));
  return q;
}

// The largest |w| of 8 bf16 as bf16 bits (sign cleared), and whether one is NaN or infinite.
__device__ __forceinline__ uint32_t amax_bits8(uint4 v, bool& nonfinite) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
  uint32_t m = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t lo = w[j] & 0x7fffu, hi = (w[j] >> 16) & 0x7fffu;
    nonfinite |= lo >= 0x7f80u || hi >= 0x7f80u;
    m = max(m, max(lo, hi));
  }
  return m;
}

// The scale of weights whose largest |w| has bf16 bits `amax`, as the host's scale_of: amax /
// 448, 1 for all zeros, at least the smallest positive f32 (below 6.3e-43 amax / 448 is 0).
__device__ __forceinline__ float scale_of(uint32_t amax) {
  if (amax == 0) return 1.f;
  const float q = div_rn(__uint_as_float(amax << 16), kE4m3Max);
  return __float_as_uint(q) != 0 ? q : __uint_as_float(1u);
}

// 8 bf16 to e4m3(w / s), nearest even, saturating to +-448. Not moe_fp8.h's quantize8, which
// multiplies by a reciprocal under -use_fast_math as the layer's input quantisation must (the
// kernels' arithmetic); weights are divided exactly, as the host and the checkpoints do.
__device__ __forceinline__ uint2 codes8(uint4 v, float s) {
  const uint32_t* w = reinterpret_cast<const uint32_t*>(&v);
  uint2 packed;
  uint16_t* out = reinterpret_cast<uint16_t*>(&packed);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const float lo = __uint_as_float(w[j] << 16), hi = __uint_as_float(w[j] & 0xffff0000u);
    out[j] = __nv_cvt_float2_to_fp8x2(make_float2(div_rn(lo, s), div_rn(hi, s)),
                                       __NV_SATFINITE, __NV_E4M3);
  }
  return packed;
}

// The largest of every thread's `m` in a block of `kWarps` warps (every thread gets it).
template <int kWarps>
__device__ __forceinline__ uint32_t block_max(uint32_t m) {
  __shared__ uint32_t warp_max[kWarps];
  m = __reduce_max_sync(0xffffffffu, m);
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  m = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) m = max(m, warp_max[w]);
  return m;
}

// ---- 128x128 blocks ---------------------------------------------------------------------------

constexpr int kBlock = 128;                             // a block is kBlock x kBlock weights
constexpr int kBlockThreads = 128;                      // per block of weights
constexpr int kLanesPerRow = kBlock / kVec;             // 16 threads cover a row
constexpr int kRowsPerPass = kBlockThreads / kLanesPerRow;  // 8 rows per pass
constexpr int kPasses = kBlock / kRowsPerPass;          // 16 loads per thread

// grid: one block per 128x128 block of weights, experts x rows / 128 x cols / 128 of them in
// that order (flattened); 128 threads, each holding 16 loads of 8 values (its 128 weights) in
// registers between the block's amax and its codes, so every weight is read once.
__global__ void __launch_bounds__(kBlockThreads)
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
  uint32_t amax = 0;
  bool bad = false;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    v[i] = *reinterpret_cast<const uint4*>(weights + origin +
                                           int64_t(row0 + i * kRowsPerPass) * cols);
    amax = max(amax, amax_bits8(v[i], bad));
  }
  if (__any_sync(0xffffffffu, bad) && threadIdx.x % 32 == 0) atomicOr(nonfinite, 1);
  const float s = scale_of(block_max<kBlockThreads / 32>(amax));
  if (threadIdx.x == 0) scales[b] = s;
#pragma unroll
  for (int i = 0; i < kPasses; ++i) {
    *reinterpret_cast<uint2*>(codes + origin + int64_t(row0 + i * kRowsPerPass) * cols) =
        codes8(v[i], s);
  }
}

// ---- one scale per expert -----------------------------------------------------------------------

constexpr int kExpertThreads = 256;
constexpr int kMaxBlocksPerExpert = 256;

// grid (blocks per expert, experts): each expert's largest |w| (bf16 bits) into amax[expert] by
// atomicMax over its blocks (max is order-free: the result is the same whatever the order).
__global__ void __launch_bounds__(kExpertThreads)
    expert_amax(const __nv_bfloat16* __restrict__ weights, int64_t vectors_per_expert,
                uint32_t* __restrict__ amax, int32_t* __restrict__ nonfinite) {
  const uint4* v = reinterpret_cast<const uint4*>(weights) + blockIdx.y * vectors_per_expert;
  uint32_t m = 0;
  bool bad = false;
  for (int64_t i = blockIdx.x * int64_t(kExpertThreads) + threadIdx.x; i < vectors_per_expert;
       i += int64_t(gridDim.x) * kExpertThreads) {
    m = max(m, amax_bits8(v[i], bad));
  }
  if (__any_sync(0xffffffffu, bad) && threadIdx.x % 32 == 0) atomicOr(nonfinite, 1);
  m = block_max<kExpertThreads / 32>(m);
  if (threadIdx.x == 0) atomicMax(&amax[blockIdx.y], m);
}

// grid as expert_amax: the codes, each expert's scale from its amax.
__global__ void __launch_bounds__(kExpertThreads)
    expert_codes(const __nv_bfloat16* __restrict__ weights, int64_t vectors_per_expert,
                 const uint32_t* __restrict__ amax, __nv_fp8_e4m3* __restrict__ codes) {
  const int64_t first = blockIdx.y * vectors_per_expert;
  const uint4* v = reinterpret_cast<const uint4*>(weights) + first;
  uint2* out = reinterpret_cast<uint2*>(codes) + first;
  const float s = scale_of(amax[blockIdx.y]);
  for (int64_t i = blockIdx.x * int64_t(kExpertThreads) + threadIdx.x; i < vectors_per_expert;
       i += int64_t(gridDim.x) * kExpertThreads) {
    out[i] = codes8(v[i], s);
  }
}

// One thread per expert: its amax (bf16 bits, in the scales' own memory) becomes its scale.
__global__ void expert_scales(float* scales, int64_t experts) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e < experts) scales[e] = scale_of(reinterpret_cast<const uint32_t*>(scales)[e]);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

void require_pointers(const void* weights, const void* codes, const void* scales,
                      const void* nonfinite) {
  fi::require(weights != nullptr && codes != nullptr && scales != nullptr &&
                  nonfinite != nullptr,
              "weights, codes, scales and nonfinite must not be NULL");
  fi::require(aligned16(weights) && aligned16(codes) && aligned16(scales),
              "weights, codes and scales must be 16-byte aligned");
}

}  // namespace

extern "C" fi_status fi_quantize_fp8_blocks(const void* weights, int64_t experts, int64_t rows,
                                            int64_t cols, void* codes, float* scales,
                                            int32_t* nonfinite, void* stream) {
  return fi::guarded([&] {
    require_pointers(weights, codes, scales, nonfinite);
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
    const auto s = static_cast<cudaStream_t>(stream);
    fi::check_cuda(cudaMemsetAsync(nonfinite, 0, sizeof(int32_t), s), "cudaMemsetAsync");
    fi::launch("the fp8 block quantisation's launch", quantize_blocks,
               fi::LaunchShape{dim3(unsigned(experts * row_blocks * col_blocks)),
                               dim3(kBlockThreads)},
               s, static_cast<const __nv_bfloat16*>(weights), row_blocks, col_blocks, cols,
               static_cast<__nv_fp8_e4m3*>(codes), scales, nonfinite);
  });
}

extern "C" fi_status fi_quantize_fp8_per_expert(const void* weights, int64_t experts,
                                                int64_t per_expert, void* codes, float* scales,
                                                int32_t* nonfinite, void* stream) {
  return fi::guarded([&] {
    require_pointers(weights, codes, scales, nonfinite);
    fi::require(experts > 0 && per_expert > 0, "experts and per_expert must be positive");
    fi::require(per_expert % kVec == 0, "per_expert must be a multiple of 8");
    fi::require(experts <= 65535, "experts must be at most 65535");
    fi::require(per_expert <= std::numeric_limits<int64_t>::max() / experts,
                "experts * per_expert must fit in int64");
    const int64_t vectors = per_expert / kVec;
    const unsigned per = unsigned(
        std::min<int64_t>((vectors + kExpertThreads - 1) / kExpertThreads, kMaxBlocksPerExpert));
    const dim3 grid(per, unsigned(experts));
    const auto s = static_cast<cudaStream_t>(stream);
    const auto w = static_cast<const __nv_bfloat16*>(weights);
    // The scales' memory holds each expert's amax (bf16 bits) until the last kernel.
    auto* amax = reinterpret_cast<uint32_t*>(scales);
    fi::check_cuda(cudaMemsetAsync(nonfinite, 0, sizeof(int32_t), s), "cudaMemsetAsync");
    fi::check_cuda(cudaMemsetAsync(amax, 0, size_t(experts) * sizeof(uint32_t), s),
                   "cudaMemsetAsync");
    const fi::LaunchShape per_expert_shape{grid, dim3(kExpertThreads)};
    fi::launch("the fp8 per-expert amax launch", expert_amax, per_expert_shape, s, w, vectors,
               amax, nonfinite);
    fi::launch("the fp8 per-expert codes launch", expert_codes, per_expert_shape, s, w, vectors,
               amax, static_cast<__nv_fp8_e4m3*>(codes));
    fi::launch("the fp8 per-expert scales launch", expert_scales,
               fi::LaunchShape{dim3(unsigned((experts + 255) / 256)), dim3(256)}, s, scales,
               experts);
  });
}
