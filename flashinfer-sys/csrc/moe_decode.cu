// moe_decode.cu: the Hopper MoE layer at decode sizes, in two bandwidth-bound kernels.
//
// With a few tokens the layer's time is the bytes of the routed experts' weights; the CUTLASS
// path spends more than those bytes on its chain of kernels (expansion, two grouped GEMMs with
// 128-row tiles mostly empty, activation, finalize). Here each routed expert's weights are read
// once, by whole warps in 16-byte loads that bypass L1:
//
//   fc1_swiglu  one warp per (expert, intermediate row): the up and gate rows' dot products
//               with every token routed to that expert, then silu(gate) * up, rounded to bf16
//               (as the CUTLASS path and the reference round the activation) into scratch
//               [tokens * top_k, inter]. The first pair routed to an expert does the work of
//               every pair routed to it, so an expert's rows are read once per call.
//   fc2_sum     1, 2 or 4 warps per (token, hidden row) (fc2_shape: each lane's share at most
//               kFc2Loads 16-byte loads where 4 warps allow): the down rows of the token's local
//               experts against their activations, weighted by the routing scales and summed in
//               f32 in a fixed order (bit-identical from call to call: no atomics; the order
//               depends on the layer's shape only, not on the call's tokens). The row's top_k
//               down rows are one list of 16-byte vectors dealt to the lanes in turn, and a warp
//               issues all its loads (at most kFc2Loads per lane) before it uses any. Blocks of
//               one row for all tokens run side by side, so an expert shared by tokens is read
//               from HBM once and from L2 after. Launched with programmatic dependent launch: its
//               blocks start while fc1 drains, read the token's expert ids and routing weights
//               into lanes, issue their first round of weight loads into registers (weights are
//               not fc1's output) and prefetch any later rounds' into L2, then wait.
//
// Ids outside this rank's experts (expert parallelism, or out of range) contribute nothing; a
// token with none writes zeros, as the CUTLASS path does.
//
// fp8 per-tensor weights (Problem::fp8) take the same kernels with 16 e4m3 values per load and
// the CUTLASS fp8 path's arithmetic: each 16 hidden values quantised with the input scale as
// they are read (as moe_fp8.cu quantises them for the grouped GEMMs), GEMM 1's sums scaled per
// expert and rounded to bf16 (what the fp8 GEMM writes), SwiGLU in f32 quantised to e4m3 with
// the activation scale into scratch, and GEMM 2's sums scaled per expert.
//
// fp8 block-scale weights (Problem::blocks) take them too, with the CUTLASS block-scale path's
// arithmetic: the hidden states quantised per token and 128 columns first (quantize_groups,
// upstream's scale_1x128_kernel's formula with patch 0013's finite scale), each lane's 16-value
// partial dot scaled by its 128x128 weight block's scale and its input group's (a 16-value run
// never crosses a 128 boundary), GEMM 1's sums rounded to bf16, SwiGLU rounded to bf16 and
// quantised per 128 again before GEMM 2, whose partial dots are scaled the same way.
#include "moe_decode.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cfloat>
#include <type_traits>

#include "launch.h"
#include "moe_fp8.h"
#include "status.h"

namespace fi::decode {
namespace {

constexpr int kWarp = 32;
constexpr int kWarps = 4;                // warps per block, one row each
constexpr int kUnroll = 4;               // loads in flight per lane and operand (fc1)
constexpr int kFc2Loads = 12;            // loads in flight per lane and round (fc2)
constexpr int kGroup = 8;                // tokens one pass over an expert's row computes

// A streamed weight load: not kept in L1 (read once), 256-byte L2 prefetch.
__device__ __forceinline__ uint4 load_weights(const void* p) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p));
  return v;
}

__device__ __forceinline__ uint4 load(const void* p) { return *reinterpret_cast<const uint4*>(p); }

// acc + <a, b> over 8 bf16 pairs, in f32.
__device__ __forceinline__ float dot_bf16(uint4 a, uint4 b, float acc) {
  const __nv_bfloat162* x = reinterpret_cast<const __nv_bfloat162*>(&a);
  const __nv_bfloat162* y = reinterpret_cast<const __nv_bfloat162*>(&b);
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    float2 fx = __bfloat1622float2(x[j]);
    float2 fy = __bfloat1622float2(y[j]);
    acc = fmaf(fx.x, fy.x, acc);
    acc = fmaf(fx.y, fy.y, acc);
  }
  return acc;
}

// acc + <a, b> over 16 e4m3 pairs, in f32 (e4m3 -> half is exact).
__device__ __forceinline__ float dot_fp8(uint4 a, uint4 b, float acc) {
  const __nv_fp8x2_storage_t* x = reinterpret_cast<const __nv_fp8x2_storage_t*>(&a);
  const __nv_fp8x2_storage_t* y = reinterpret_cast<const __nv_fp8x2_storage_t*>(&b);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    __half2_raw hx = __nv_cvt_fp8x2_to_halfraw2(x[j], __NV_E4M3);
    __half2_raw hy = __nv_cvt_fp8x2_to_halfraw2(y[j], __NV_E4M3);
    float2 fx = __half22float2(__half2(hx));
    float2 fy = __half22float2(__half2(hy));
    acc = fmaf(fx.x, fy.x, acc);
    acc = fmaf(fx.y, fy.y, acc);
  }
  return acc;
}

__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// A token's hidden states.
__device__ __forceinline__ const __nv_bfloat16* hidden_row(const Problem& p, int token) {
  return p.hidden_states + size_t(token) * p.hidden;
}

// Where the weight formats below differ, each a struct of static functions:
//   kVec, kBytes      values per 16-byte load; bytes per weight and per scratch activation
//   input(p, t, c)    the kVec inputs of token t from column c, as the dot product takes them
//   dot(w, x, acc)    acc + <w, x> over one load of each, in f32
//   fc1_dot(...)      acc + GEMM 1's partial dot of row `fc1_row` of local expert e, columns
//                     [c, c + kVec), with token t's inputs (dot, scaled where the format has
//                     block scales)
//   fc1_out(p, e, s)  GEMM 1's output from its sum
//   fc2_scale(...)    the factor of GEMM 2's partial dot of hidden row `row` of expert e over
//                     activation columns [c, c + kVec) of pair `pair` (besides the routing weight)
//   store(p, at, a)   an activation into scratch

// The bf16 weight format: 8 values per 16-byte load, the activations as they are.
struct Bf16 {
  static constexpr int kVec = 8;
  static constexpr size_t kBytes = 2;  // per value, weights and scratch activations alike
  static __device__ __forceinline__ uint4 input(const Problem& p, int token, int c) {
    return load(hidden_row(p, token) + c);
  }
  static __device__ __forceinline__ float dot(uint4 w, uint4 x, float acc) {
    return dot_bf16(w, x, acc);
  }
  static __device__ __forceinline__ float fc1_dot(const Problem&, int, int, int, int, uint4 w,
                                                  uint4 x, float acc) {
    return dot(w, x, acc);
  }
  static __device__ __forceinline__ float fc1_out(const Problem&, int, float sum) { return sum; }
  static __device__ __forceinline__ float fc2_scale(const Problem&, int, int, int, int) {
    return 1.f;
  }
  // silu(gate) * up, rounded to bf16 (as the CUTLASS path and the reference round it).
  static __device__ __forceinline__ void store(const Problem& p, size_t at, float a) {
    static_cast<__nv_bfloat16*>(p.activations)[at] = __float2bfloat16(a);
  }
};

// The fp8 per-tensor format: 16 e4m3 values per load.
struct Fp8 {
  static constexpr int kVec = 16;
  static constexpr size_t kBytes = 1;
  // 16 bf16 inputs times 1 / a1, to e4m3, by the grouped GEMMs' input quantisation (moe_fp8.h).
  static __device__ __forceinline__ uint4 input(const Problem& p, int token, int c) {
    const __nv_bfloat16* x = hidden_row(p, token);
    const float q = *p.fp8.input_quant;
    const uint2 lo = fi::fp8::quantize8(load(x + c), q);
    const uint2 hi = fi::fp8::quantize8(load(x + c + 8), q);
    return make_uint4(lo.x, lo.y, hi.x, hi.y);
  }
  static __device__ __forceinline__ float dot(uint4 w, uint4 x, float acc) {
    return dot_fp8(w, x, acc);
  }
  static __device__ __forceinline__ float fc1_dot(const Problem&, int, int, int, int, uint4 w,
                                                  uint4 x, float acc) {
    return dot(w, x, acc);
  }
  // GEMM 1's output: times a1 * w13[e], rounded to bf16 as the fp8 GEMM writes it.
  static __device__ __forceinline__ float fc1_out(const Problem& p, int e, float sum) {
    return round_bf16(sum * p.fp8.fc1_dequant[e]);
  }
  static __device__ __forceinline__ float fc2_scale(const Problem& p, int e, int, int, int) {
    return p.fp8.fc2_dequant[e];
  }
  // silu(gate) * up times 1 / a2, to e4m3 (saturating), as the CUTLASS path's activation.
  static __device__ __forceinline__ void store(const Problem& p, size_t at, float a) {
    static_cast<__nv_fp8_storage_t*>(p.activations)[at] =
        __nv_cvt_float_to_fp8(a * *p.fp8.fc2_quant, __NV_SATFINITE, __NV_E4M3);
  }
};

// The fp8 block-scale format: 16 e4m3 values per load, one f32 scale per 128x128 weight block
// and per 128 values of a token's input (or activation), applied to each 16-value partial dot.
struct Fp8Blocks {
  static constexpr int kVec = 16;
  static constexpr size_t kBytes = 1;
  static constexpr int kBlock = 128;
  // Token t's hidden states as quantize_groups left them.
  static __device__ __forceinline__ uint4 input(const Problem& p, int token, int c) {
    return load(p.blocks.input + size_t(token) * p.hidden + c);
  }
  static __device__ __forceinline__ float dot(uint4 w, uint4 x, float acc) {
    return dot_fp8(w, x, acc);
  }
  static __device__ __forceinline__ float fc1_dot(const Problem& p, int e, int fc1_row, int token,
                                                  int c, uint4 w, uint4 x, float acc) {
    const int kb = c / kBlock, k_blocks = p.hidden / kBlock;
    const float w_scale =
        p.blocks.fc1[(size_t(e) * (2 * p.inter / kBlock) + fc1_row / kBlock) * k_blocks + kb];
    const float x_scale = p.blocks.input_scales[size_t(token) * k_blocks + kb];
    return fmaf(dot_fp8(w, x, 0.f), w_scale * x_scale, acc);
  }
  // GEMM 1's output, rounded to bf16 as the block-scale GEMM writes it.
  static __device__ __forceinline__ float fc1_out(const Problem&, int, float sum) {
    return round_bf16(sum);
  }
  static __device__ __forceinline__ float fc2_scale(const Problem& p, int e, int row, int pair,
                                                    int c) {
    const int kb = c / kBlock, k_blocks = p.inter / kBlock;
    const float w_scale =
        p.blocks.fc2[(size_t(e) * (p.hidden / kBlock) + row / kBlock) * k_blocks + kb];
    return w_scale * p.blocks.activation_scales[size_t(pair) * k_blocks + kb];
  }
  // silu(gate) * up rounded to bf16 (the runner's activation output); quantize_groups makes
  // GEMM 2's e4m3 input of it.
  static __device__ __forceinline__ void store(const Problem& p, size_t at, float a) {
    p.blocks.swiglu[at] = __float2bfloat16(a);
  }
};

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// grid ceil(rows * cols / 128 / kWarps), block kWarps warps: one warp per 128 values of a row
// (cols a multiple of 128), as upstream's scale_1x128_kernel quantises them (patch 0013's
// finite scale): s = 448 / amax (1 for zeros, at most FLT_MAX), e4m3(x * s) saturating, 1 / s
// kept as the group's scale.
__global__ void __launch_bounds__(kWarps* kWarp)
    quantize_groups(const __nv_bfloat16* x, int rows, int cols, __nv_fp8_e4m3* q,
                    float* inv_scales) {
  const int lane = threadIdx.x % kWarp;
  const int group = blockIdx.x * kWarps + threadIdx.x / kWarp;
  const int per_row = cols / 128;
  if (group >= rows * per_row) return;
  const size_t at = size_t(group / per_row) * cols + size_t(group % per_row) * 128 + lane * 4;
  const uint2 raw = *reinterpret_cast<const uint2*>(x + at);
  const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
  const float2 a = __bfloat1622float2(pairs[0]), b = __bfloat1622float2(pairs[1]);
  const float amax =
      warp_max(fmaxf(fmaxf(fabsf(a.x), fabsf(a.y)), fmaxf(fabsf(b.x), fabsf(b.y))));
  const float s = amax != 0.f ? fminf(448.f / amax, FLT_MAX) : 1.f;
  if (lane == 0) inv_scales[group] = 1.f / s;
  __nv_fp8x2_storage_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a.x * s, a.y * s),
                                                     __NV_SATFINITE, __NV_E4M3);
  __nv_fp8x2_storage_t hi = __nv_cvt_float2_to_fp8x2(make_float2(b.x * s, b.y * s),
                                                     __NV_SATFINITE, __NV_E4M3);
  *reinterpret_cast<uint32_t*>(q + at) = uint32_t(lo) | (uint32_t(hi) << 16);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ int local_expert(const Problem& p, int pair) {
  int e = p.expert_ids[pair] - p.first_expert;
  return (e >= 0 && e < p.local_experts) ? e : -1;
}

// grid (pairs, ceil(inter / kWarps)), block kWarps warps.
template <class F>
__global__ void __launch_bounds__(kWarps* kWarp) fc1_swiglu(Problem p) {
  constexpr int kVec = F::kVec;
  constexpr int kStride = kWarp * kVec;  // elements a warp covers per load
  // fc2's blocks may start (and prefetch) once every block here has started.
  fi::let_dependents_start();
  const int pair = blockIdx.x;
  const int lane = threadIdx.x % kWarp;
  const int row = blockIdx.y * kWarps + threadIdx.x / kWarp;
  const int pairs = p.tokens * p.top_k;
  const int expert = local_expert(p, pair);
  if (expert < 0 || row >= p.inter) return;
  const int id = p.expert_ids[pair];
  // The first pair routed to this expert computes them all.
  bool earlier = false;
  for (int q = lane; q < pair; q += kWarp) earlier |= p.expert_ids[q] == id;
  if (__any_sync(0xffffffffu, earlier)) return;

  const char* up = static_cast<const char*>(p.fc1) +
                   (size_t(expert) * 2 * p.inter + row) * p.hidden * F::kBytes;
  const char* gate = up + size_t(p.inter) * p.hidden * F::kBytes;
  int next = pair;
  while (next < pairs) {
    // Up to kGroup pairs routed to this expert, from `next` on, in order.
    int members[kGroup];
    int n = 0;
    while (next < pairs && n < kGroup) {
      const int q = next + lane;
      unsigned m = __ballot_sync(0xffffffffu, q < pairs && p.expert_ids[q] == id);
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        if (g >= n && m != 0) {
          members[g] = next + __ffs(m) - 1;
          m &= m - 1;
          n = g + 1;
        }
      }
      next = m != 0 ? next + __ffs(m) - 1 : next + kWarp;
    }
    if (n == 0) break;
    float acc_up[kGroup], acc_gate[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) acc_up[g] = acc_gate[g] = 0.f;
    for (int c0 = lane * kVec; c0 < p.hidden; c0 += kStride * kUnroll) {
      uint4 wu[kUnroll], wg[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int c = c0 + u * kStride;
        wu[u] = c < p.hidden ? load_weights(up + c * F::kBytes) : make_uint4(0, 0, 0, 0);
        wg[u] = c < p.hidden ? load_weights(gate + c * F::kBytes) : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        if (g >= n) break;
        const int token = members[g] / p.top_k;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          const int c = c0 + u * kStride;
          if (c < p.hidden) {
            const uint4 xv = F::input(p, token, c);
            acc_up[g] = F::fc1_dot(p, expert, row, token, c, wu[u], xv, acc_up[g]);
            acc_gate[g] = F::fc1_dot(p, expert, p.inter + row, token, c, wg[u], xv, acc_gate[g]);
          }
        }
      }
    }
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (g >= n) break;
      const float u = F::fc1_out(p, expert, warp_sum(acc_up[g]));
      const float v = F::fc1_out(p, expert, warp_sum(acc_gate[g]));
      if (lane == 0) {
        const float silu = v / (1.f + __expf(-v));
        F::store(p, size_t(members[g]) * p.inter + row, silu * u);
      }
    }
  }
}

// GEMM 2's work for one (token, hidden row): the token's top_k down rows (experts in top-k
// order), each `vecs` = inter / kVec 16-byte vectors, as one list of top_k * vecs vectors dealt
// to the lanes in turn: slot s of lane l is vector s * kWarp + l, i.e. vector j of the k-th
// expert's row with k * vecs + j = s * kWarp + l (k >= top_k: past the list's end, nothing).
// Each lane has `slots` of them (the last partly past the end); `split` warps share them, each
// `share` consecutive slots, in rounds of `per_round` (at most kFc2Loads). All of it a function
// of the layer's shape alone (fc2_shape, on the host), so a token's summation order does not
// depend on the call's other tokens.
struct Fc2Shape {
  int split_log2;      // log2 of split: 0, 1 or 2 (up to kWarps warps per row)
  int vecs;            // 16-byte vectors per expert row
  int step_k, step_j;  // kWarp vectors on: kWarp / vecs rows and kWarp % vecs vectors
  int slots, share, per_round;
};

constexpr int kWarpsLog2 = 2;
static_assert(kWarps == 1 << kWarpsLog2, "kWarps is 1 << kWarpsLog2");

// The fewest warps per row of 1, 2, 4 (kWarps) that leave a warp at most kFc2Loads loads per
// lane, or 4; fewer where the grid's second dimension would pass 65535.
Fc2Shape fc2_shape(const Problem& p, int vec) {
  Fc2Shape s{};
  s.vecs = p.inter / vec;
  s.step_k = kWarp / s.vecs;
  s.step_j = kWarp % s.vecs;
  s.slots = int((int64_t(p.top_k) * s.vecs + kWarp - 1) / kWarp);
  while (s.split_log2 < kWarpsLog2 && (kFc2Loads << s.split_log2) < s.slots &&
         (int64_t(p.hidden) << (s.split_log2 + 1)) <= int64_t(65535) * kWarps) {
    ++s.split_log2;
  }
  const int split = 1 << s.split_log2;
  s.share = (s.slots + split - 1) / split;
  const int rounds = (s.share + kFc2Loads - 1) / kFc2Loads;
  s.per_round = (s.share + rounds - 1) / rounds;
  return s;
}

struct Cursor {
  int k, j;  // vector j of the k-th expert's row
};

__device__ __forceinline__ Cursor cursor_at(int slot, int lane, int vecs) {
  const int v = slot * kWarp + lane;
  const int k = v / vecs;
  return Cursor{k, v - k * vecs};
}

// The lane's next slot: kWarp vectors on (step_j < vecs: at most one more carry).
__device__ __forceinline__ void step(Cursor& c, const Fc2Shape& s) {
  c.k += s.step_k;
  c.j += s.step_j;
  const bool carry = c.j >= s.vecs;
  c.j = carry ? c.j - s.vecs : c.j;
  c.k = carry ? c.k + 1 : c.k;
}

// The lane's slots [from, end) into L2 (row_of: a slot's expert row, or null): each 128-byte
// line once, by the lane whose vector starts it or starts the expert's row (rows are 16-byte
// aligned, not always 128). row_of shuffles: every lane runs the loop (from, end: the warp's).
template <class F, class RowOf>
__device__ __forceinline__ void prefetch_slots(int from, int end, int lane, const Fc2Shape& s,
                                               const RowOf& row_of) {
  Cursor c = cursor_at(from, lane, s.vecs);
  for (int q = from; q < end; ++q) {
    const char* r = row_of(c.k);
    if (r != nullptr) {
      const char* w = r + c.j * (F::kVec * F::kBytes);
      if ((reinterpret_cast<uintptr_t>(w) & 127) == 0 || c.j == 0) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(w));
      }
    }
    step(c, s);
  }
}

// fc2_sum's blocks per SM, as its registers allow: bf16 5 (at most 96 registers), e4m3 4 (128;
// at 96 its e4m3 dot products spill).
template <class F>
constexpr int kFc2Blocks = std::is_same_v<F, Bf16> ? 5 : 4;

// grid (tokens, ceil(hidden / (kWarps / split))), block kWarps warps: `split` consecutive warps
// per hidden row, each its share of the row's slots (Fc2Shape) in rounds, every load of a round
// issued before any is used; the row's warps' sums added in warp order. inter is a multiple of
// kVec (the layer's multiples of 64, 128 for block scales) and the rows' bases 16-byte aligned,
// so each vector is one aligned 16-byte load. kWide: top_k > kWarp, the ids and weights read
// from memory instead of from lanes.
template <class F, bool kWide>
__global__ void __launch_bounds__(kWarps* kWarp, kFc2Blocks<F>) fc2_sum(Problem p, Fc2Shape s) {
  constexpr int kVec = F::kVec;
  const int token = blockIdx.x;
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int row = (blockIdx.y << (kWarpsLog2 - s.split_log2)) + (warp >> s.split_log2);
  const int part = warp & ((1 << s.split_log2) - 1);  // this warp's share of the row
  const int first = token * p.top_k;
  // The ids and scales were written before fc1 started (every fc1 block has started when this
  // one does), and the weights are no kernel's output; only the activations need fc1 done.
  // Lane k holds the token's k-th local expert (-1: none) and its routing weight.
  const int my_expert = !kWide && lane < p.top_k ? local_expert(p, first + lane) : -1;
  const float my_weight = my_expert >= 0 ? p.expert_scales[first + lane] : 0.f;
  // The k-th expert, or -1 (not local, or k >= top_k: past the row's list), at the lane's own k:
  // a shuffle every lane runs (nothing here branches around it), or with kWide a load.
  auto expert_of = [&](int k) {
    if constexpr (kWide) {
      return k < p.top_k ? local_expert(p, first + k) : -1;
    } else {
      return __shfl_sync(0xffffffffu, my_expert, k & (kWarp - 1)) | (k < kWarp ? 0 : -1);
    }
  };
  // Its routing weight (any value where expert_of is -1).
  auto weight_of = [&](int k) {
    if constexpr (kWide) {
      return k < p.top_k ? p.expert_scales[first + k] : 0.f;
    } else {
      return __shfl_sync(0xffffffffu, my_weight, k & (kWarp - 1));
    }
  };

  // This warp's slots [begin, end) (none for a row past the end: it only joins the barrier).
  const int begin = row < p.hidden ? min(s.slots, part * s.share) : s.slots;
  const int end = min(s.slots, begin + s.share);
  const char* fc2_row = static_cast<const char*>(p.fc2) + size_t(row) * p.inter * F::kBytes;
  const size_t expert_bytes = size_t(p.hidden) * p.inter * F::kBytes;
  // Lane k: the k-th expert's down row `row` (null: none), so that a slot's address is a
  // shuffle and an add.
  const unsigned long long my_row =
      my_expert >= 0
          ? reinterpret_cast<unsigned long long>(fc2_row + size_t(my_expert) * expert_bytes)
          : 0ull;
  // The k-th expert's row, or null, at the lane's own k (a shuffle every lane runs, as above).
  auto row_of = [&](int k) -> const char* {
    if constexpr (kWide) {
      const int e = expert_of(k);
      return e >= 0 ? fc2_row + size_t(e) * expert_bytes : nullptr;
    } else {
      const unsigned long long r = __shfl_sync(0xffffffffu, my_row, k & (kWarp - 1));
      return k < kWarp ? reinterpret_cast<const char*>(r) : nullptr;
    }
  };

  // n <= kFc2Loads slots from cursor c into wv: every load issued before any is used.
  uint4 wv[kFc2Loads];
  auto issue = [&](Cursor c, int n) {
#pragma unroll
    for (int u = 0; u < kFc2Loads; ++u) {
      const char* w = row_of(c.k);
      wv[u] = u < n && w != nullptr ? load_weights(w + c.j * (kVec * F::kBytes))
                                    : make_uint4(0, 0, 0, 0);
      step(c, s);
    }
  };

  Cursor c = cursor_at(begin, lane, s.vecs);
  int s0 = begin;
  int n = min(s.per_round, end - begin);
  issue(c, n);
  if (s0 + n < end) prefetch_slots<F>(s0 + n, end, lane, s, row_of);  // later rounds'
  fi::wait_for_prior_grid();

  // Per lane, acc += scale_k * <w, a> over its slots in order (main's arithmetic per vector).
  // The activations' and scales' loads run in every lane, from in-range places where the slot
  // has no expert (pair `first`, expert 0, row 0, column 0), their values then unused, so that
  // they can be issued together.
  float acc = 0.f;
  for (;;) {
#pragma unroll
    for (int u = 0; u < kFc2Loads; ++u) {
      const int e = expert_of(c.k);
      const float weight = weight_of(c.k);
      const bool use = u < n && e >= 0;
      const int pair = use ? first + c.k : first;
      const int col = use ? c.j * kVec : 0;
      const uint4 a = load(static_cast<const char*>(p.activations) +
                           (size_t(pair) * p.inter + col) * F::kBytes);
      const float scale = weight * F::fc2_scale(p, use ? e : 0, use ? row : 0, pair, col);
      const float sum = fmaf(scale, F::dot(wv[u], a, 0.f), acc);
      acc = use ? sum : acc;
      if (u < n) step(c, s);
    }
    s0 += n;
    if (s0 >= end) break;
    n = min(s.per_round, end - s0);
    issue(c, n);
  }
  acc = warp_sum(acc);
  if (s.split_log2 == 0) {
    if (lane == 0 && row < p.hidden) {
      p.output[size_t(token) * p.hidden + row] = __float2bfloat16(acc);
    }
    return;
  }
  __shared__ float partial[kWarps];
  if (lane == 0) partial[warp] = acc;
  __syncthreads();
  if (part == 0 && lane == 0 && row < p.hidden) {
    float sum = partial[warp];
    for (int q = 1; q < 1 << s.split_log2; ++q) sum += partial[warp + q];
    p.output[size_t(token) * p.hidden + row] = __float2bfloat16(sum);
  }
}

}  // namespace

namespace {

size_t align_up(size_t bytes) { return (bytes + 255) / 256 * 256; }

// Where the scratch's parts start: first the activations GEMM 2 reads (bf16, or e4m3 in the
// same bytes), then, for block scales, the bf16 activations before quantisation, their group
// scales, and the quantised hidden states with theirs; each part 256-byte aligned.
struct Layout {
  size_t swiglu = 0, activation_scales = 0, input = 0, input_scales = 0, total = 0;
};

Layout layout(int64_t tokens, int64_t top_k, int64_t hidden, int64_t inter, bool block_scale) {
  const size_t pairs = size_t(tokens) * size_t(top_k);
  Layout l;
  size_t at = align_up(pairs * size_t(inter) * sizeof(__nv_bfloat16));
  if (block_scale) {
    l.swiglu = at;
    at = align_up(at + pairs * size_t(inter) * sizeof(__nv_bfloat16));
    l.activation_scales = at;
    at = align_up(at + pairs * size_t(inter / Fp8Blocks::kBlock) * sizeof(float));
    l.input = at;
    at = align_up(at + size_t(tokens) * size_t(hidden));
    l.input_scales = at;
    at = align_up(at + size_t(tokens) * size_t(hidden / Fp8Blocks::kBlock) * sizeof(float));
  }
  l.total = at;
  return l;
}

// quantize_groups over `rows` rows of `cols` (a multiple of 128).
void quantize(const __nv_bfloat16* x, int rows, int cols, __nv_fp8_e4m3* q, float* inv_scales,
              cudaStream_t stream) {
  const int groups = rows * (cols / Fp8Blocks::kBlock);
  const fi::LaunchShape shape{dim3((groups + kWarps - 1) / kWarps), dim3(kWarps * kWarp)};
  fi::launch("the decode path's quantize_groups launch", quantize_groups, shape, stream, x, rows,
             cols, q, inv_scales);
}

}  // namespace

size_t workspace_bytes(int64_t tokens, int64_t top_k, int64_t hidden, int64_t inter,
                       bool block_scale) {
  return layout(tokens, top_k, hidden, inter, block_scale).total;
}

namespace {

// fc1_swiglu, then (block scales) the activations quantised per 128, then fc2_sum.
template <class F>
void run_kernels(const Problem& p, cudaStream_t stream) {
  const dim3 block(kWarps * kWarp);
  const unsigned pairs = unsigned(p.tokens) * unsigned(p.top_k);
  // Without programmatic dependent launch: fc1 reads the routed ids at once, and the top-k router
  // before it lets dependents start early (topk_router.cu), so fc1 must start after its end.
  fi::launch("the decode path's fc1_swiglu launch", fc1_swiglu<F>,
             fi::LaunchShape{dim3(pairs, (p.inter + kWarps - 1) / kWarps), block}, stream, p);
  if constexpr (std::is_same_v<F, Fp8Blocks>) {
    quantize(p.blocks.swiglu, int(pairs), p.inter, static_cast<__nv_fp8_e4m3*>(p.activations),
             p.blocks.activation_scales, stream);
  }

  const Fc2Shape shape = fc2_shape(p, F::kVec);
  const int rows_per_block = kWarps >> shape.split_log2;
  // Dependent: fc2_sum prefetches its weights while fc1_swiglu runs, and waits for it before
  // reading the activations.
  const fi::LaunchShape fc2{
      dim3(unsigned(p.tokens), (p.hidden + rows_per_block - 1) / rows_per_block), block, 0, true};
  fi::launch("the decode path's fc2_sum launch",
             p.top_k <= kWarp ? fc2_sum<F, false> : fc2_sum<F, true>, fc2, stream, p, shape);
}

}  // namespace

void run(const Problem& p, cudaStream_t stream) {
  if (p.blocks.fc1 != nullptr) {
    // The quantised operands' places in the scratch, then the hidden states quantised there.
    Problem q = p;
    const Layout l = layout(p.tokens, p.top_k, p.hidden, p.inter, true);
    char* scratch = static_cast<char*>(p.activations);
    q.blocks.swiglu = reinterpret_cast<__nv_bfloat16*>(scratch + l.swiglu);
    q.blocks.activation_scales = reinterpret_cast<float*>(scratch + l.activation_scales);
    q.blocks.input = reinterpret_cast<__nv_fp8_e4m3*>(scratch + l.input);
    q.blocks.input_scales = reinterpret_cast<float*>(scratch + l.input_scales);
    quantize(p.hidden_states, p.tokens, p.hidden, q.blocks.input, q.blocks.input_scales, stream);
    run_kernels<Fp8Blocks>(q, stream);
  } else if (p.fp8.input_quant != nullptr) {
    run_kernels<Fp8>(p, stream);
  } else {
    run_kernels<Bf16>(p, stream);
  }
}

}  // namespace fi::decode
