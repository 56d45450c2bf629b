// topk_router.cu: flashinfer-rs's own "top-k only" router (fi_topk_route).
//
// Upstream's routing kernels also build the grouped-GEMM permutation (histogram, offsets, CTA
// tables); callers that only need each token's experts and weights (their own expert GEMMs,
// FlashInfer's CUTLASS MoE, capture alone) pay for work they discard. This kernel reads each
// token's logits once and writes the ids (int16 replay rows and/or int32) and the weights
// (fp32 and/or bf16), nothing else.
//
// One warp per token (a warp loops over tokens, keeping the bias in registers). Lane `l`
// holds the experts of chunks `l, l + 32, ...`, each chunk `W` consecutive experts read with
// one 16-byte load when the row allows it. Selection follows the oracle
// (flashinfer-rs/src/routing/oracle.rs) exactly:
//   - keys are ordered by their fp32 bits made monotonic (IEEE total order:
//     -NaN < -inf < ... < +inf < +NaN), equal keys to the smaller expert index;
//   - the method's key: the logit (Renormalize, RenormalizeNaive, TopK), the logit with NaN
//     as -inf (Llama4), the softmax probability (Default), sigmoid(logit) (Sigmoid,
//     SigmoidRenorm), sigmoid(logit) + bias in fp32 (DeepSeekV3, MiniMax2);
//   - grouped DeepSeekV3: each group scored by the fp32 sum of its two best keys, the
//     `topk_group` best groups kept, top-k among their experts;
//   - top-k by k rounds of a warp arg-max (REDUX on the ordered key, then on the index).
// The bias is used as given (fp32, or bf16 widened exactly): unlike upstream's grouped
// DeepSeekV3 kernel, it is not rounded to bf16 first. Weights are computed in fp32 from the
// chosen experts as the models' reference routers define them (see the oracle).
//
// Built with the shim's flags (fast math): sigmoid is 1 / (1 + __expf(-x)), accurate to a few
// ulp relative to its value, 0 below about -87 (the oracle documents the same flush).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"
#include "info.h"
#include "status.h"

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr uint32_t kNone = 0xffffffffu;
constexpr int kWarpsPerBlock = 8;

struct Args {
  int32_t method;
  int32_t num_tokens;
  int32_t num_experts;
  int32_t top_k;
  int32_t n_group;  // > 1: grouped DeepSeekV3
  int32_t topk_group;
  float scale;
  bool norm;
  bool segmented_groups;  // each group's chunks lie in an aligned run of lanes (fast path)
  const void* logits;
  const void* bias;  // null: no bias
  bool bias_bf16;
  bool bias_vec;  // the bias takes 16-byte loads in the logits' layout
  int16_t* ids_i16;
  int32_t* ids_i32;
  float* weights_f32;
  __nv_bfloat16* weights_bf16;
};

__device__ __forceinline__ uint32_t order_of(float key) {
  uint32_t b = __float_as_uint(key);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_of(uint32_t ord) {
  return __uint_as_float((ord & 0x80000000u) ? (ord & 0x7fffffffu) : ~ord);
}

__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + __expf(-x)); }

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) {
  return __uint_as_float(static_cast<uint32_t>(__bfloat16_as_ushort(x)) << 16);
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) x += __shfl_xor_sync(kFull, x, off);
  return x;
}

// W consecutive values of type In at p: one 16-byte load when `Vec` (p then 16-byte aligned).
template <typename In, int W, bool Vec>
__device__ __forceinline__ void load_chunk(const In* p, float* out) {
  if constexpr (Vec && W * sizeof(In) == 16) {
    uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    const In* e = reinterpret_cast<const In*>(&v);
#pragma unroll
    for (int w = 0; w < W; ++w) out[w] = widen(e[w]);
  } else {
#pragma unroll
    for (int w = 0; w < W; ++w) out[w] = widen(__ldg(p + w));
  }
}

// Expert index of slot v of this lane.
template <int W>
__device__ __forceinline__ int expert_of(int lane, int v) {
  return (lane + 32 * (v / W)) * W + v % W;
}

// Loads the V values of one row this lane holds (absent experts: 0, and `valid` clear).
template <typename In, int V, int W, bool Vec>
__device__ __forceinline__ void load_row(const In* row, int lane, int num_experts, float* out,
                                         uint64_t& valid) {
  valid = 0;
#pragma unroll
  for (int j = 0; j < V / W; ++j) {
    int first = (lane + 32 * j) * W;
    if (first < num_experts) {  // W divides num_experts on this path: whole chunks
      load_chunk<In, W, Vec>(row + first, out + j * W);
#pragma unroll
      for (int w = 0; w < W; ++w) valid |= 1ull << (j * W + w);
    } else {
#pragma unroll
      for (int w = 0; w < W; ++w) out[j * W + w] = 0.0f;
    }
  }
}

// This lane's best open slot: ordered key, expert, slot and logit (expert kNone when none).
struct Best {
  uint32_t ord;
  uint32_t expert;
  int slot;
  float raw;
};

template <int V, int W>
__device__ __forceinline__ Best local_best(const uint32_t* ord, const float* raw, uint64_t open,
                                           int lane) {
  Best b{0u, kNone, 0, 0.0f};
#pragma unroll
  for (int v = 0; v < V; ++v) {
    // Slots ascend in expert index: a strict `>` keeps the smaller index among equal keys.
    if (((open >> v) & 1) && (b.expert == kNone || ord[v] > b.ord)) {
      b = Best{ord[v], static_cast<uint32_t>(expert_of<W>(lane, v)), v, raw[v]};
    }
  }
  return b;
}

// Merges two (best, second) pairs of ordered keys.
__device__ __forceinline__ void merge_top2(uint32_t& a1, uint32_t& a2, uint32_t b1, uint32_t b2) {
  uint32_t hi = max(a1, b1);
  a2 = max(min(a1, b1), max(a2, b2));
  a1 = hi;
}

// Lane g < n_group ends with group g's score: the fp32 sum of its two best keys (every group
// has at least two experts: RoutingConfig::validate).
template <int V, int W>
__device__ __forceinline__ float group_scores(const Args& a, const uint32_t* ord, uint64_t valid,
                                              int lane) {
  const int per = a.num_experts / a.n_group;
  float mine = 0.0f;
  if (a.segmented_groups) {
    // Each chunk lies in one group, and a group's `chunks` (a power of two <= 32: a group has
    // at most 32 experts) fill an aligned run of lanes of one chunk row: reduce within runs.
    const int chunks = per / W;
#pragma unroll
    for (int j = 0; j < V / W; ++j) {
      uint32_t t1 = 0, t2 = 0;
#pragma unroll
      for (int w = 0; w < W; ++w) {
        int v = j * W + w;
        if ((valid >> v) & 1) merge_top2(t1, t2, ord[v], 0u);
      }
      for (int off = 1; off < chunks; off <<= 1) {
        merge_top2(t1, t2, __shfl_xor_sync(kFull, t1, off), __shfl_xor_sync(kFull, t2, off));
      }
      // Group g starts at chunk g * chunks: row (g * chunks) / 32, lane (g * chunks) % 32.
      int first = lane * chunks;
      float s = __shfl_sync(kFull, key_of(t1) + key_of(t2), first % 32);
      if (lane < a.n_group && first / 32 == j) mine = s;
    }
  } else {
    for (int g = 0; g < a.n_group; ++g) {
      uint32_t t1 = 0, t2 = 0;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (((valid >> v) & 1) && expert_of<W>(lane, v) / per == g) {
          merge_top2(t1, t2, ord[v], 0u);
        }
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        merge_top2(t1, t2, __shfl_xor_sync(kFull, t1, off), __shfl_xor_sync(kFull, t2, off));
      }
      if (lane == g) mine = key_of(t1) + key_of(t2);
    }
  }
  return mine;
}

// Bit g set: group g is among the `topk_group` best (larger score, then smaller index).
__device__ __forceinline__ uint32_t kept_groups(const Args& a, float mine, int lane) {
  const uint32_t my = order_of(mine);
  int rank = 0;
  for (int g = 0; g < a.n_group; ++g) {
    uint32_t other = order_of(__shfl_sync(kFull, mine, g));
    rank += other > my || (other == my && g < lane);
  }
  return __ballot_sync(kFull, lane < a.n_group && rank < a.topk_group);
}

// The method's selection key of one expert.
__device__ __forceinline__ float method_key(const Args& a, float x, float bias) {
  switch (a.method) {
    case FI_ROUTING_LLAMA4:
      return isnan(x) ? -INFINITY : x;
    case FI_ROUTING_SIGMOID:
    case FI_ROUTING_SIGMOID_RENORM:
      return sigmoid(x);
    case FI_ROUTING_DEEPSEEK_V3:
    case FI_ROUTING_MINIMAX2:
      return sigmoid(x) + bias;
    default:  // Renormalize, RenormalizeNaive, TopK; Default's are replaced by probabilities
      return x;
  }
}

// Default: the softmax probabilities of the whole row (NaN everywhere when the row holds a
// NaN, a +inf or only -inf, as fp32 arithmetic gives).
template <int V>
__device__ __forceinline__ void softmax_keys(float* key, uint64_t valid) {
  uint32_t local = 0;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    if ((valid >> v) & 1) local = max(local, order_of(key[v]));
  }
  const float m = key_of(__reduce_max_sync(kFull, local));
  float sum = 0.0f;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    key[v] = ((valid >> v) & 1) ? __expf(key[v] - m) : 0.0f;
    sum += key[v];
  }
  sum = warp_sum(sum);
#pragma unroll
  for (int v = 0; v < V; ++v) key[v] = key[v] / sum;
}

// The weight lane r < top_k gives its chosen expert (key, logit), from the chosen set.
__device__ __forceinline__ float method_weight(const Args& a, bool chosen, float key, float raw,
                                               float best_raw) {
  switch (a.method) {
    case FI_ROUTING_DEFAULT:
      return key;
    case FI_ROUTING_RENORMALIZE:
    case FI_ROUTING_RENORMALIZE_NAIVE: {
      // Softmax over the chosen logits; the first chosen holds the largest.
      float e = chosen ? __expf(raw - best_raw) : 0.0f;
      return e / warp_sum(e);
    }
    case FI_ROUTING_TOPK:
      return raw;
    case FI_ROUTING_LLAMA4:
      return sigmoid(key);
    case FI_ROUTING_SIGMOID:
      return sigmoid(raw);
    case FI_ROUTING_SIGMOID_RENORM: {
      float s = chosen ? sigmoid(raw) : 0.0f;
      return a.norm ? s / fmaxf(warp_sum(s), 1e-20f) : s;
    }
    default: {  // DeepSeekV3, MiniMax2: the un-biased sigmoids, floored at sum + 1e-20
      float s = chosen ? sigmoid(raw) : 0.0f;
      return s * a.scale / (warp_sum(s) + 1e-20f);
    }
  }
}

// The bias in this lane's layout, from fp32 or bf16, with 16-byte loads where they fit.
template <int V, int W>
__device__ __forceinline__ void load_bias(const Args& a, int lane, float* bias) {
  uint64_t unused;
  if (a.bias == nullptr) {
#pragma unroll
    for (int v = 0; v < V; ++v) bias[v] = 0.0f;
  } else if (a.bias_bf16) {
    const auto* b = static_cast<const __nv_bfloat16*>(a.bias);
    if (a.bias_vec) {
      load_row<__nv_bfloat16, V, W, true>(b, lane, a.num_experts, bias, unused);
    } else {
      load_row<__nv_bfloat16, V, W, false>(b, lane, a.num_experts, bias, unused);
    }
  } else {
    const auto* b = static_cast<const float*>(a.bias);
    if (a.bias_vec) {
      load_row<float, V, W, true>(b, lane, a.num_experts, bias, unused);
    } else {
      load_row<float, V, W, false>(b, lane, a.num_experts, bias, unused);
    }
  }
}

template <typename In, int V, int W>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) topk_route(const Args a) {
  const int lane = threadIdx.x & 31;
  const int warp = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  const int warps = gridDim.x * kWarpsPerBlock;
  const int e = a.num_experts, k = a.top_k;

  // The bias, once per warp.
  float bias[V];
  load_bias<V, W>(a, lane, bias);
  uint64_t valid;

  for (int t = warp; t < a.num_tokens; t += warps) {
    const In* row = static_cast<const In*>(a.logits) + static_cast<size_t>(t) * e;
    float raw[V], key[V];
    load_row<In, V, W, (W > 1)>(row, lane, e, raw, valid);
#pragma unroll
    for (int v = 0; v < V; ++v) key[v] = method_key(a, raw[v], bias[v]);
    if (a.method == FI_ROUTING_DEFAULT) softmax_keys<V>(key, valid);
    uint32_t ord[V];
#pragma unroll
    for (int v = 0; v < V; ++v) ord[v] = order_of(key[v]);

    uint64_t open = valid;
    if (a.n_group > 1) {
      const uint32_t kept = kept_groups(a, group_scores<V, W>(a, ord, valid, lane), lane);
      const int per = e / a.n_group;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (!((kept >> (expert_of<W>(lane, v) / per)) & 1)) open &= ~(1ull << v);
      }
    }

    // k rounds of a warp arg-max; lane r keeps the r-th winner.
    Best b = local_best<V, W>(ord, raw, open, lane);
    uint32_t my_expert = 0, my_ord = 0;
    float my_raw = 0.0f, best_raw = 0.0f;
    for (int r = 0; r < k; ++r) {
      const uint32_t m = __reduce_max_sync(kFull, b.expert == kNone ? 0u : b.ord);
      const uint32_t expert =
          __reduce_min_sync(kFull, (b.expert != kNone && b.ord == m) ? b.expert : kNone);
      const bool won = b.expert == expert;
      const int owner = __ffs(__ballot_sync(kFull, won)) - 1;
      const float won_raw = __shfl_sync(kFull, b.raw, owner);
      if (r == 0) best_raw = won_raw;
      if (lane == r) {
        my_expert = expert;
        my_ord = m;
        my_raw = won_raw;
      }
      if (won) {
        open &= ~(1ull << b.slot);
        b = local_best<V, W>(ord, raw, open, lane);
      }
    }

    const bool chosen = lane < k;
    const float w = method_weight(a, chosen, key_of(my_ord), my_raw, best_raw);
    if (chosen) {
      const size_t at = static_cast<size_t>(t) * k + lane;
      if (a.ids_i16 != nullptr) a.ids_i16[at] = static_cast<int16_t>(my_expert);
      if (a.ids_i32 != nullptr) a.ids_i32[at] = static_cast<int32_t>(my_expert);
      if (a.weights_f32 != nullptr) a.weights_f32[at] = w;
      if (a.weights_bf16 != nullptr) a.weights_bf16[at] = __float2bfloat16_rn(w);
    }
  }
}

}  // namespace

// ---- host side ------------------------------------------------------------------------------

namespace {

using Kernel = void (*)(Args);

// Instantiations: V experts per lane (a power of two, E <= 32 * V), W per chunk (16-byte
// loads of fp32 x 4 or bf16 x 8 where the row allows, else 1).
template <typename In, int V>
Kernel pick_width(bool vec) {
  constexpr int kVecWidth = 16 / sizeof(In);
  if constexpr (V % kVecWidth == 0) {
    if (vec) return topk_route<In, V, kVecWidth>;
  }
  return topk_route<In, V, 1>;
}

template <typename In>
Kernel pick(int v, bool vec) {
  switch (v) {
    case 1:
      return pick_width<In, 1>(vec);
    case 2:
      return pick_width<In, 2>(vec);
    case 4:
      return pick_width<In, 4>(vec);
    case 8:
      return pick_width<In, 8>(vec);
    case 16:
      return pick_width<In, 16>(vec);
    case 32:
      return pick_width<In, 32>(vec);
    default:
      return pick_width<In, 64>(vec);
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }
bool pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

// SM count per device, asked once.
int sm_count(int device) {
  static std::atomic<int> cache[64];
  if (device < 0 || device >= 64) return 132;
  int n = cache[device].load(std::memory_order_relaxed);
  if (n == 0) {
    fi::check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
                   "cudaDeviceGetAttribute(MultiProcessorCount)");
    cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// The checks of a call, as the Rust layer makes them (this entry point is also public C).
void validate(const fi_topk_params& p, const fi_topk_buffers& b) {
  fi::require(p.method >= FI_ROUTING_DEFAULT && p.method <= FI_ROUTING_SIGMOID,
              "unknown routing method");
  fi::require(p.num_tokens >= 0, "num_tokens must be >= 0");
  fi::require(p.num_experts >= 1 && p.num_experts <= 2048, "num_experts must be in 1..=2048");
  fi::require(p.top_k >= 1 && p.top_k <= 32 && p.top_k <= p.num_experts,
              "top_k must be in 1..=min(32, num_experts)");
  fi::require(p.logits_dtype == FI_DTYPE_F32 || p.logits_dtype == FI_DTYPE_BF16,
              "logits must be f32 or bf16");
  const bool needs_bias = p.method == FI_ROUTING_DEEPSEEK_V3 || p.method == FI_ROUTING_MINIMAX2;
  fi::require(needs_bias == (b.bias != nullptr), "DeepSeekV3 and MiniMax2 take a bias, others none");
  fi::require(b.bias == nullptr || p.bias_dtype == FI_DTYPE_F32 || p.bias_dtype == FI_DTYPE_BF16,
              "the bias must be f32 or bf16");
  fi::require(p.num_tokens == 0 || b.logits != nullptr, "logits must not be NULL");
  fi::require(b.ids_i16 != nullptr || b.ids_i32 != nullptr || b.weights_f32 != nullptr ||
                  b.weights_bf16 != nullptr,
              "a call must write at least one output");
  if (p.method == FI_ROUTING_DEEPSEEK_V3 && p.n_group > 1) {
    fi::require(p.n_group <= 8 && p.num_experts % p.n_group == 0, "at most 8 equal groups");
    const int per = p.num_experts / p.n_group;
    fi::require(per >= 2 && per <= 32, "2..=32 experts per group");
    fi::require(p.topk_group >= 1 && p.topk_group <= p.n_group, "topk_group in 1..=n_group");
    fi::require(p.top_k <= p.topk_group * per, "top_k exceeds the experts of the kept groups");
  }
  fi::require(p.method != FI_ROUTING_LLAMA4 || p.top_k == 1, "Llama4 routes top-1");
}

}  // namespace

extern "C" fi_status fi_topk_route(const fi_topk_params* params, const fi_topk_buffers* buffers,
                                   void* stream) {
  return fi::guarded([&] {
    fi::require(params != nullptr && buffers != nullptr, "params and buffers must not be NULL");
    const fi_topk_params& p = *params;
    const fi_topk_buffers& b = *buffers;
    validate(p, b);
    fi::require_routing_arch();
    if (p.num_tokens == 0) return;

    const bool bf16 = p.logits_dtype == FI_DTYPE_BF16;
    int v = 1;
    while (32 * v < p.num_experts) v *= 2;
    const int vec_width = bf16 ? 8 : 4;
    const bool vec = v % vec_width == 0 && p.num_experts % vec_width == 0 && aligned16(b.logits);
    const int w = vec ? vec_width : 1;
    const bool grouped = p.method == FI_ROUTING_DEEPSEEK_V3 && p.n_group > 1;
    const int per = grouped ? p.num_experts / p.n_group : 0;
    const size_t bias_bytes = b.bias == nullptr ? 0 : (p.bias_dtype == FI_DTYPE_BF16 ? 2 : 4);

    Args a{};
    a.method = p.method;
    a.num_tokens = p.num_tokens;
    a.num_experts = p.num_experts;
    a.top_k = p.top_k;
    a.n_group = grouped ? p.n_group : 1;
    a.topk_group = grouped ? p.topk_group : 1;
    a.scale = p.routed_scaling_factor;
    a.norm = p.norm_topk_prob != 0;
    a.segmented_groups = grouped && per % w == 0 && pow2(per / w);
    a.logits = b.logits;
    a.bias = b.bias;
    a.bias_bf16 = p.bias_dtype == FI_DTYPE_BF16;
    a.bias_vec = b.bias != nullptr && w * bias_bytes == 16 && aligned16(b.bias);
    a.ids_i16 = b.ids_i16;
    a.ids_i32 = b.ids_i32;
    a.weights_f32 = b.weights_f32;
    a.weights_bf16 = static_cast<__nv_bfloat16*>(b.weights_bf16);

    int device = 0;
    fi::check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    // One warp per token; enough blocks to fill the GPU, then warps loop over tokens.
    const int needed = (p.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
    const int blocks = std::min(needed, sm_count(device) * 8);
    Kernel kernel = bf16 ? pick<__nv_bfloat16>(v, vec) : pick<float>(v, vec);
    kernel<<<blocks, kWarpsPerBlock * 32, 0, static_cast<cudaStream_t>(stream)>>>(a);
    fi::check_cuda(cudaGetLastError(), "top-k router launch");
  });
}

namespace {
__global__ void empty_kernel() {}
}  // namespace

extern "C" fi_status fi_launch_empty_kernel(void* stream) {
  return fi::guarded([&] {
    empty_kernel<<<1, 32, 0, static_cast<cudaStream_t>(stream)>>>();
    fi::check_cuda(cudaGetLastError(), "empty kernel launch");
  });
}
