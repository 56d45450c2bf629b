// topk_router.cu: flashinfer-rs's own "top-k only" router (fi_topk_route).
//
// Upstream's routing kernels also build the grouped-GEMM permutation (histogram, offsets, CTA
// tables); callers that only need each token's experts and weights (their own expert GEMMs,
// FlashInfer's CUTLASS MoE, capture alone) pay for work they discard. This kernel reads each
// token's logits once and writes the ids (int16 replay rows and/or int32) and the weights
// (fp32 and/or bf16), nothing else.
//
// One warp per token (a warp loops over tokens, keeping the bias in registers and reading its
// next row while it selects in this one). Lane `l` holds the experts of chunks `l, l + 32, ...`,
// each chunk `W` consecutive experts read with one 4-, 8- or 16-byte load when the row allows
// it. Selection follows the oracle (flashinfer-rs/src/routing/oracle.rs) exactly:
//   - keys are ordered by their fp32 bits made monotonic (IEEE total order:
//     -NaN < -inf < ... < +inf < +NaN), equal keys to the smaller expert index;
//   - the method's key: the logit (Renormalize, RenormalizeNaive, TopK), the logit with NaN
//     as -inf (Llama4), the softmax probability (Default, DeepSeekV2), sigmoid(logit) (Sigmoid,
//     SigmoidRenorm), sigmoid(logit) + bias in fp32 (DeepSeekV3, MiniMax2);
//   - grouped DeepSeekV3: each group scored by the fp32 sum of its two best keys; grouped
//     DeepSeekV2 (flashinfer-rs's own method, upstream has none): by its best key; then the
//     `topk_group` best groups kept, top-k among their experts;
//   - top-k by k rounds of a warp arg-max (REDUX on the ordered key, then on the index), each
//     lane popping from its candidates sorted once in registers.
// The bias is used as given (fp32, or bf16 widened exactly): unlike upstream's grouped
// DeepSeekV3 kernel, it is not rounded to bf16 first. Weights are computed in fp32 from the
// chosen experts as the models' reference routers define them (see the oracle).
//
// Batches of bf16-keyed rows (the logit is the key) from 32 tokens an SM, and every top-1
// batch, go to a second kernel, topk_rows (below): 1-8 lanes a token, each sorting 8-expert
// chunks in registers and keeping its K best, no warp-wide rounds; the same candidates and
// weight arithmetic, so the same bits.
//
// Built with the shim's flags (fast math): sigmoid is 1 / (1 + __expf(-x)), accurate to a few
// ulp relative to its value, 0 below about -87 (the oracle documents the same flush).
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>

#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"
#include "info.h"
#include "launch.h"
#include "status.h"

namespace {

constexpr unsigned kFull = 0xffffffffu;
constexpr uint32_t kNone = 0xffffffffu;
constexpr int kWarpsPerBlock = 8;  // the most; fewer where the tokens are fewer than the SMs' slots

struct Args {
  int32_t method;
  int32_t num_tokens;
  int32_t num_experts;
  int32_t top_k;
  int32_t n_group;  // > 1: grouped DeepSeekV3 or DeepSeekV2
  int32_t topk_group;
  bool group_max;  // a group scores its best key (DeepSeekV2), not its two best's sum
  float scale;
  bool norm;
  bool segmented_groups;  // each group's chunks lie in an aligned run of lanes (fast path)
  const void* logits;
  const void* bias;  // null: no bias
  bool bias_bf16;
  bool bias_vec;  // the bias takes one vector load per chunk of the logits' layout
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

// A candidate: its ordered key in the high word and its expert's index inverted in the low
// one, so that one unsigned 64-bit compare orders by key, then by the smaller expert. 0 is a
// closed slot, below every expert (an expert's ordered key may be 0: the -NaN of all ones;
// its inverted index is not).
__device__ __forceinline__ uint64_t candidate(uint32_t ord, uint32_t expert) {
  return (static_cast<uint64_t>(ord) << 32) | static_cast<uint32_t>(~expert);
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

// W consecutive values of type In at p: one 4-, 8- or 16-byte load when `Vec` (p then aligned
// to W * sizeof(In)).
template <typename In, int W, bool Vec>
__device__ __forceinline__ void load_chunk(const In* p, float* out) {
  constexpr int kBytes = W * sizeof(In);
  if constexpr (Vec && (kBytes == 16 || kBytes == 8 || kBytes == 4)) {
    using Word = std::conditional_t<kBytes == 16, uint4,
                                    std::conditional_t<kBytes == 8, uint2, uint32_t>>;
    Word v = __ldg(reinterpret_cast<const Word*>(p));
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

// Bit v set: slot v of this lane holds an expert (W divides num_experts: whole chunks).
template <int V, int W>
__device__ __forceinline__ uint64_t valid_slots(int lane, int num_experts) {
  uint64_t valid = 0;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    if (expert_of<W>(lane, v) < num_experts) valid |= 1ull << v;
  }
  return valid;
}

// Loads the V values of one row this lane holds (absent experts: 0).
template <typename In, int V, int W, bool Vec>
__device__ __forceinline__ void load_row(const In* row, int lane, int num_experts, float* out) {
#pragma unroll
  for (int j = 0; j < V / W; ++j) {
    int first = (lane + 32 * j) * W;
    if (first < num_experts) {
      load_chunk<In, W, Vec>(row + first, out + j * W);
    } else {
#pragma unroll
      for (int w = 0; w < W; ++w) out[j * W + w] = 0.0f;
    }
  }
}

// Merges two (best, second) pairs of ordered keys.
__device__ __forceinline__ void merge_top2(uint32_t& a1, uint32_t& a2, uint32_t b1, uint32_t b2) {
  uint32_t hi = max(a1, b1);
  a2 = max(min(a1, b1), max(a2, b2));
  a1 = hi;
}

// Grouped DeepSeekV3/V2 (at most 8 groups of at most 32 experts: V <= 8): the group of each of
// this lane's slots, a nibble per slot (registers; an array indexed by group would not be).
template <int V, int W>
__device__ __forceinline__ uint64_t group_of_slots(int lane, int per) {
  uint64_t nibbles = 0;
#pragma unroll
  for (int v = 0; v < V && v < 16; ++v) {
    nibbles |= static_cast<uint64_t>((expert_of<W>(lane, v) / per) & 15) << (4 * v);
  }
  return nibbles;
}

__device__ __forceinline__ int group_of(uint64_t slot_groups, int v) {
  return static_cast<int>((slot_groups >> (4 * (v & 15))) & 15);
}

// Lane g < n_group ends with group g's score: the fp32 sum of its two best keys (DeepSeekV3:
// every group has at least two experts, TopKRouter::new), or its best key (DeepSeekV2).
template <int V, int W>
__device__ __forceinline__ float group_scores(const Args& a, const uint32_t* ord, uint64_t valid,
                                              uint64_t slot_groups, int lane) {
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
      const float score = a.group_max ? key_of(t1) : key_of(t1) + key_of(t2);
      float s = __shfl_sync(kFull, score, first % 32);
      if (lane < a.n_group && first / 32 == j) mine = s;
    }
  } else {
    for (int g = 0; g < a.n_group; ++g) {
      uint32_t t1 = 0, t2 = 0;
#pragma unroll
      for (int v = 0; v < V; ++v) {
        if (((valid >> v) & 1) && group_of(slot_groups, v) == g) merge_top2(t1, t2, ord[v], 0u);
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) {
        merge_top2(t1, t2, __shfl_xor_sync(kFull, t1, off), __shfl_xor_sync(kFull, t2, off));
      }
      if (lane == g) mine = a.group_max ? key_of(t1) : key_of(t1) + key_of(t2);
    }
  }
  return mine;
}

// Bit g set: group g is among the `topk_group` best (larger score, then smaller index). Each lane
// g < n_group counts the groups ahead of its own (8 independent shuffles of the ordered scores);
// the ranks are a permutation, so exactly `topk_group` are kept. (topk_group rounds of two
// dependent REDUX made the same choice with a longer chain.)
__device__ __forceinline__ uint32_t kept_groups(const Args& a, float mine, int lane) {
  const uint32_t own = order_of(mine);
  int ahead = 0;
#pragma unroll
  for (int g = 0; g < 8; ++g) {
    const uint32_t other = __shfl_sync(kFull, own, g);
    ahead += (g < a.n_group && (other > own || (other == own && g < lane))) ? 1 : 0;
  }
  return __ballot_sync(kFull, lane < a.n_group && ahead < a.topk_group);
}

// The method's selection keys of this lane's slots (one branch per row, not per slot).
template <int V>
__device__ __forceinline__ void method_keys(const Args& a, const float* raw, const float* bias,
                                            float* key) {
  switch (a.method) {
    case FI_ROUTING_LLAMA4:
#pragma unroll
      for (int v = 0; v < V; ++v) key[v] = isnan(raw[v]) ? -INFINITY : raw[v];
      break;
    case FI_ROUTING_SIGMOID:
    case FI_ROUTING_SIGMOID_RENORM:
#pragma unroll
      for (int v = 0; v < V; ++v) key[v] = sigmoid(raw[v]);
      break;
    case FI_ROUTING_DEEPSEEK_V3:
    case FI_ROUTING_MINIMAX2:
#pragma unroll
      for (int v = 0; v < V; ++v) key[v] = sigmoid(raw[v]) + bias[v];
      break;
    default:  // Renormalize, RenormalizeNaive, TopK; Default's and DeepSeekV2's are replaced
              // by probabilities
#pragma unroll
      for (int v = 0; v < V; ++v) key[v] = raw[v];
  }
}

// Default, DeepSeekV2: the softmax probabilities of the whole row (NaN everywhere when the row
// holds a NaN, a +inf or only -inf, as fp32 arithmetic gives).
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

// The logit of a chosen expert: its key for the methods whose key is the logit (or whose
// weight needs only the key); read again (an L1 hit: the row was just read) where the key
// holds a bias.
template <typename In>
__device__ __forceinline__ float chosen_logit(const Args& a, const In* row, uint32_t expert,
                                              float key) {
  if (a.method == FI_ROUTING_DEEPSEEK_V3 || a.method == FI_ROUTING_MINIMAX2) {
    return widen(__ldg(row + expert));
  }
  return key;
}

// The weight lane r < top_k gives its chosen expert (key, logit), from the chosen set; the
// first chosen holds the largest logit (`best_raw`) where the key is the logit.
__device__ __forceinline__ float method_weight(const Args& a, bool chosen, float key, float raw,
                                               float best_raw) {
  switch (a.method) {
    case FI_ROUTING_DEFAULT:
      return key;
    case FI_ROUTING_RENORMALIZE:
    case FI_ROUTING_RENORMALIZE_NAIVE: {
      // Softmax over the chosen logits.
      float e = chosen ? __expf(raw - best_raw) : 0.0f;
      return e / warp_sum(e);
    }
    case FI_ROUTING_TOPK:
      return raw;
    case FI_ROUTING_LLAMA4:
      return sigmoid(key);
    case FI_ROUTING_SIGMOID:
      return key;  // sigmoid(logit), computed once as the key
    case FI_ROUTING_SIGMOID_RENORM: {
      float s = chosen ? key : 0.0f;
      return a.norm ? s / fmaxf(warp_sum(s), 1e-20f) : s;
    }
    case FI_ROUTING_DEEPSEEK_V2: {
      // DeepSeek-V2's MoEGate: p / (sum + 1e-20) when normalising (top_k > 1), else p * scale.
      if (a.norm && a.top_k > 1) {
        float p = chosen ? key : 0.0f;
        return p / (warp_sum(p) + 1e-20f);
      }
      return key * a.scale;
    }
    default: {  // DeepSeekV3, MiniMax2: the un-biased sigmoids, floored at sum + 1e-20
      float s = chosen ? sigmoid(raw) : 0.0f;
      return s * a.scale / (warp_sum(s) + 1e-20f);
    }
  }
}

// The bias in this lane's layout, from fp32 or bf16, with vector loads where they fit.
template <int V, int W>
__device__ __forceinline__ void load_bias(const Args& a, int lane, float* bias) {
  if (a.bias == nullptr) {
#pragma unroll
    for (int v = 0; v < V; ++v) bias[v] = 0.0f;
  } else if (a.bias_bf16) {
    const auto* b = static_cast<const __nv_bfloat16*>(a.bias);
    if (a.bias_vec) {
      load_row<__nv_bfloat16, V, W, true>(b, lane, a.num_experts, bias);
    } else {
      load_row<__nv_bfloat16, V, W, false>(b, lane, a.num_experts, bias);
    }
  } else {
    const auto* b = static_cast<const float*>(a.bias);
    if (a.bias_vec) {
      load_row<float, V, W, true>(b, lane, a.num_experts, bias);
    } else {
      load_row<float, V, W, false>(b, lane, a.num_experts, bias);
    }
  }
}

template <typename Key>
__device__ __forceinline__ void order_pair(Key* c, int i, int j) {
  const Key hi = c[i] > c[j] ? c[i] : c[j];
  const Key lo = c[i] > c[j] ? c[j] : c[i];
  c[i] = hi;
  c[j] = lo;
}

// Batcher's odd-even merge of the sorted halves of [Lo, Lo + N) at stride R (N a power of two).
template <int Lo, int N, int R, typename Key>
__device__ __forceinline__ void merge_candidates(Key* c) {
  constexpr int kStep = 2 * R;
  if constexpr (kStep < N) {
    merge_candidates<Lo, N, kStep, Key>(c);
    merge_candidates<Lo + R, N, kStep, Key>(c);
#pragma unroll
    for (int i = Lo + R; i + R < Lo + N; i += kStep) order_pair(c, i, i + R);
  } else {
    order_pair(c, Lo, Lo + R);
  }
}

// The smallest power of two >= n (n >= 1).
__host__ __device__ constexpr int pow2_at_least(int n) {
  return n <= 1 ? 1 : 2 * pow2_at_least((n + 1) / 2);
}

// Sorts candidates [Lo, Lo + N), best first: Batcher's odd-even merge sort, expanded at
// compile time so that the candidates stay in registers.
template <int Lo, int N, typename Key>
__device__ __forceinline__ void sort_candidates(Key* c) {
  if constexpr (N > 1) {
    sort_candidates<Lo, N / 2, Key>(c);
    sort_candidates<Lo + N / 2, N / 2, Key>(c);
    merge_candidates<Lo, N, 1, Key>(c);
  }
}

// What one token's selection hands lane r < top_k: its expert and ordered key, and the first
// winner's ordered key.
struct Chosen {
  uint32_t expert;
  uint32_t ord;
  uint32_t best_ord;
};

// Top-k of the warp's open candidates by k rounds of a warp arg-max (REDUX on the ordered key,
// then on the inverted expert): each lane first sorts its candidates, so a round only pops the
// winner's head. Used up to 16 slots a lane (512 experts); above, the registers go to
// `rescan_top_k`.
template <int V, int W>
__device__ __forceinline__ Chosen sorted_top_k(const uint32_t* ord, uint64_t open, int k,
                                               int lane) {
  // Sorted as kSorted (V rounded up to a power of two for Batcher's network): the padding is
  // the constant 0, below every candidate, so the compiler drops every comparator that meets
  // it and the padding stays at the end, never read by the rounds.
  constexpr int kSorted = pow2_at_least(V);
  uint64_t c[kSorted];
#pragma unroll
  for (int v = 0; v < kSorted; ++v) {
    c[v] = v < V && ((open >> v) & 1)
               ? candidate(ord[v], static_cast<uint32_t>(expert_of<W>(lane, v)))
               : 0ull;
  }
  sort_candidates<0, kSorted, uint64_t>(c);
  Chosen out{0u, 0u, 0u};
  for (int r = 0; r < k; ++r) {
    const uint32_t head_ord = static_cast<uint32_t>(c[0] >> 32);
    const uint32_t head_inv = static_cast<uint32_t>(c[0]);
    const uint32_t m = __reduce_max_sync(kFull, head_ord);
    const uint32_t inv = __reduce_max_sync(kFull, head_ord == m ? head_inv : 0u);
    if (r == 0) out.best_ord = m;
    if (lane == r) {
      out.expert = ~inv;
      out.ord = m;
    }
    if (head_inv == inv) {
#pragma unroll
      for (int v = 0; v + 1 < V; ++v) c[v] = c[v + 1];
      c[V - 1] = 0ull;
    }
  }
  return out;
}

// Keys that are bf16 values widened (the raw logit of bf16 logits: Renormalize,
// RenormalizeNaive, TopK, Llama4) have ordered keys whose low 16 bits follow from the high 16
// (0 for a positive key, all ones for a negative one: the widened value's low 16 bits are 0),
// so the high 16 bits order them exactly and a candidate fits 32 bits: that key above the
// inverted expert index (experts < 2048). One 32-bit REDUX a round instead of two dependent
// ones, and 32-bit compares in the sort. A candidate keeps the ordered key's high half
// (`ord & 0xffff0000`); `widen_ord` puts the whole ordered key back.
__device__ __forceinline__ uint32_t widen_ord(uint32_t key16) {
  return (key16 << 16) | ((key16 & 0x8000u) ? 0u : 0xffffu);
}

// The 32-bit candidate of a bf16 key's ordered key `ord` and its expert, and back.
__device__ __forceinline__ uint32_t candidate_bf16(uint32_t ord, uint32_t expert) {
  return (ord & 0xffff0000u) | (~expert & 0xffffu);
}
__device__ __forceinline__ uint32_t expert_of_bf16(uint32_t c) { return ~c & 0xffffu; }
__device__ __forceinline__ uint32_t ord_of_bf16(uint32_t c) { return widen_ord(c >> 16); }

// As sorted_top_k, for keys that are bf16 values (above).
template <int V, int W>
__device__ __forceinline__ Chosen sorted_top_k_bf16(const uint32_t* ord, uint64_t open, int k,
                                                    int lane) {
  uint32_t c[V];
#pragma unroll
  for (int v = 0; v < V; ++v) {
    // 0 is a closed slot, below every expert (whose inverted index is at least 0xf800).
    c[v] = ((open >> v) & 1)
               ? candidate_bf16(ord[v], static_cast<uint32_t>(expert_of<W>(lane, v)))
               : 0u;
  }
  sort_candidates<0, V, uint32_t>(c);
  // The rounds keep the winners' candidates; they are decoded once, after.
  uint32_t best = 0u, mine = 0u;
  for (int r = 0; r < k; ++r) {
    const uint32_t m = __reduce_max_sync(kFull, c[0]);
    if (r == 0) best = m;
    if (lane == r) mine = m;
    if (c[0] == m) {  // candidates are distinct (one expert each): one lane pops
#pragma unroll
      for (int v = 0; v + 1 < V; ++v) c[v] = c[v + 1];
      c[V - 1] = 0u;
    }
  }
  Chosen out{0u, 0u, ord_of_bf16(best)};
  if (lane < k) {
    out.expert = expert_of_bf16(mine);
    out.ord = ord_of_bf16(mine);
  }
  return out;
}

// This lane's best open slot (expert kNone when none).
template <int V, int W>
__device__ __forceinline__ void local_best(const uint32_t* ord, uint64_t open, int lane,
                                           uint32_t& best_o, uint32_t& best_x, int& best_v) {
  best_o = 0u;
  best_x = kNone;
  best_v = 0;
#pragma unroll
  for (int v = 0; v < V; ++v) {
    // Slots ascend in expert index: a strict `>` keeps the smaller index among equal keys.
    if (((open >> v) & 1) && (best_x == kNone || ord[v] > best_o)) {
      best_o = ord[v];
      best_x = static_cast<uint32_t>(expert_of<W>(lane, v));
      best_v = v;
    }
  }
}

// The same selection for many slots a lane: each round rescans the winner's slots.
template <int V, int W>
__device__ __forceinline__ Chosen rescan_top_k(const uint32_t* ord, uint64_t open, int k,
                                               int lane) {
  uint32_t bo, bx;
  int bv;
  local_best<V, W>(ord, open, lane, bo, bx, bv);
  Chosen c{0u, 0u, 0u};
  for (int r = 0; r < k; ++r) {
    const uint32_t m = __reduce_max_sync(kFull, bx == kNone ? 0u : bo);
    const uint32_t expert = __reduce_min_sync(kFull, (bx != kNone && bo == m) ? bx : kNone);
    if (r == 0) c.best_ord = m;
    if (lane == r) {
      c.expert = expert;
      c.ord = m;
    }
    if (bx == expert) {
      open &= ~(1ull << bv);
      local_best<V, W>(ord, open, lane, bo, bx, bv);
    }
  }
  return c;
}

// Entry `at` of each output the call asked for: the chosen expert (int16 replay ids, int32 ids)
// and its weight (fp32, bf16). Both kernels store through it.
__device__ __forceinline__ void store_route(const Args& a, size_t at, uint32_t expert, float w) {
  if (a.ids_i16 != nullptr) a.ids_i16[at] = static_cast<int16_t>(expert);
  if (a.ids_i32 != nullptr) a.ids_i32[at] = static_cast<int32_t>(expert);
  if (a.weights_f32 != nullptr) a.weights_f32[at] = w;
  if (a.weights_bf16 != nullptr) a.weights_bf16[at] = __float2bfloat16_rn(w);
}

// kBf16Keys: the method's key is the bf16 logit itself (sorted_top_k_bf16; the host decides).
template <typename In, int V, int W, bool kBf16Keys>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) topk_route(const Args a) {
  // Up to 16 slots a lane, the next row is read while this one is selected (registers allow).
  constexpr bool kSmall = V <= 16;
  const int lane = threadIdx.x & 31;
  const int per_block = blockDim.x >> 5;  // 1 to kWarpsPerBlock (the launch's choice)
  const int warp = blockIdx.x * per_block + (threadIdx.x >> 5);
  const int warps = gridDim.x * per_block;
  const int e = a.num_experts, k = a.top_k;
  const In* logits = static_cast<const In*>(a.logits);
  // Launched with programmatic dependent launch (fi_topk_route, `use_pdl`), the grid may start
  // while the stream's previous kernel drains: it reads and writes nothing before that kernel
  // has ended and its writes are visible (the logits are usually its output; the bias and the
  // outputs may be someone's too). Then the stream's next kernel may be scheduled; one
  // launched so waits for this grid's end before it reads what this writes. Without the
  // attribute both instructions return at once.
  fi::wait_for_prior_grid();
  fi::let_dependents_start();

  // What does not depend on the token, once per warp: the bias, the slots holding experts,
  // and (grouped) the slots of each group.
  float bias[V];
  load_bias<V, W>(a, lane, bias);
  const uint64_t valid = valid_slots<V, W>(lane, e);
  const uint64_t slot_groups = a.n_group > 1 ? group_of_slots<V, W>(lane, e / a.n_group) : 0;

  float next[kSmall ? V : 1];
  int t = warp;
  if constexpr (kSmall) {
    if (t < a.num_tokens) {
      load_row<In, V, W, (W > 1)>(logits + static_cast<size_t>(t) * e, lane, e, next);
    }
  }
  for (; t < a.num_tokens; t += warps) {
    const In* row = logits + static_cast<size_t>(t) * e;
    float raw[V];
    if constexpr (kSmall) {
#pragma unroll
      for (int v = 0; v < V; ++v) raw[v] = next[v];
      if (t + warps < a.num_tokens) {
        load_row<In, V, W, (W > 1)>(row + static_cast<size_t>(warps) * e, lane, e, next);
      }
    } else {
      load_row<In, V, W, (W > 1)>(row, lane, e, raw);
    }
    float key[V];
    method_keys<V>(a, raw, bias, key);
    if (a.method == FI_ROUTING_DEFAULT || a.method == FI_ROUTING_DEEPSEEK_V2) {
      softmax_keys<V>(key, valid);
    }
    uint32_t ord[V];
#pragma unroll
    for (int v = 0; v < V; ++v) ord[v] = order_of(key[v]);

    uint64_t open = valid;
    if (a.n_group > 1) {
      const uint32_t kept =
          kept_groups(a, group_scores<V, W>(a, ord, valid, slot_groups, lane), lane);
      if (a.segmented_groups) {
        // A chunk row's slots lie in one group: one test a row.
        const int chunks = e / a.n_group / W;
#pragma unroll
        for (int j = 0; j < V / W; ++j) {
          if (!((kept >> ((lane + 32 * j) / chunks)) & 1)) {
            open &= ~(((1ull << W) - 1) << (j * W));
          }
        }
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          if (!((kept >> group_of(slot_groups, v)) & 1)) open &= ~(1ull << v);
        }
      }
    }

    Chosen c;
    if constexpr (kBf16Keys) {
      static_assert(kSmall && std::is_same_v<In, __nv_bfloat16>, "bf16 keys: bf16 logits, V <= 16");
      c = sorted_top_k_bf16<V, W>(ord, open, k, lane);
    } else if constexpr (kSmall) {
      c = sorted_top_k<V, W>(ord, open, k, lane);
    } else {
      c = rescan_top_k<V, W>(ord, open, k, lane);
    }

    const bool chosen = lane < k;
    const float key_c = key_of(c.ord);
    const float raw_c = chosen ? chosen_logit(a, row, c.expert, key_c) : 0.0f;
    const float w = method_weight(a, chosen, key_c, raw_c, key_of(c.best_ord));
    if (chosen) store_route(a, static_cast<size_t>(t) * k + lane, c.expert, w);
  }
}

// ---- Large batches of bf16-keyed rows: several tokens a warp ----------------------------------
//
// Where the key is the bf16 logit (the bf16_keys methods) and the batch fills the GPU, a warp
// per token spends most of its issue slots on cross-lane work: k rounds of a REDUX and the
// weights' shuffles, one token at a time (at 32768 Qwen3 tokens on an H100, 15.6 us, 0.12 of a
// copy's bandwidth; vLLM's triton_kernels top-k, whose lanes work on their own data, 13.1).
// Here T (1 to 8) consecutive lanes share a token: lane `sub` reads the row's 16-byte chunks
// `sub, sub + T, ...` (8 experts each, kAhead chunks in flight), sorts each chunk's 8 32-bit
// candidates in registers and folds them into its running K best (K: top_k rounded up to a
// power of two), then the T lists merge by log2(T) shuffle butterflies. The candidates are
// sorted_top_k_bf16's (the key's ordered high half above the inverted expert), so ties and
// NaN order exactly as there, and the weights are computed from the same values in the same
// order (warp_sum's butterfly replayed in registers), so that a token's ids and weights are the
// same bits whichever kernel its batch's size picks (tests/gpu/topk.rs,
// a_tokens_routing_does_not_depend_on_its_batch_size). Measured (H100, BENCHMARKS.md 7k):
// 9.9 us at 32768 Qwen3 tokens (0.63x topk_route's, 0.76x vLLM's), gpt-oss 0.49-0.68x
// topk_route's from 8192.
// From top-2 on, a warp's ids and weights are staged in shared memory and stored as its rows'
// one contiguous span: at one lane a token (from 512 tokens an SM) each lane's own stores went
// to 32 rows k entries apart, a sector each. Measured (H100, session 25, BENCHMARKS.md 7l,
// candidate router-5 staging at every K): Qwen3 0.85 / 0.78 / 0.49x at 8192 / 32768 / 131072
// tokens, gpt-oss 0.89x at 131072, Qwen3-Next 0.90-0.97x; at top-1 (Llama4), whose rows are one
// entry each and so side by side already, 1.02-1.19x: top-1 stores directly (router-5b). 5b
// measured (H100, session 26, BENCHMARKS.md 7m): Qwen3 3.60 / 7.60 / 22.51 us at 8192 / 32768
// / 131072 tokens (0.85 / 0.78 / 0.50x main's), replay cost 1.00-1.04 where it was 1.06-1.21;
// top-1 level from 8192 tokens but still 1.02-1.07x at 1-1024 (1.41 against 1.32 us at one):
// the warp-round loop, not the stores: top-1 keeps a thread-strided loop of its own (router-5c,
// BENCHMARKS.md 7n).

constexpr int kRowsBlock = 256;  // threads a block of topk_rows
constexpr int kAhead = 4;        // chunks a lane has in flight

// Sorts a bitonic sequence of K candidates, best first (half-cleaners).
template <int K>
__device__ __forceinline__ void bitonic_sort(uint32_t* c) {
#pragma unroll
  for (int half = K / 2; half >= 1; half /= 2) {
#pragma unroll
    for (int i = 0; i < K; ++i) {
      if ((i & half) == 0) order_pair(c, i, i + half);
    }
  }
}

// Keeps in `top` (K candidates, best first) the K best of it and of `other` (N, best first):
// the larger of top[i] and other[K - 1 - i] are a bitonic sequence holding exactly those.
template <int K, int N>
__device__ __forceinline__ void keep_best(uint32_t* top, const uint32_t* other) {
#pragma unroll
  for (int i = 0; i < K; ++i) {
    if (K - 1 - i < N) top[i] = max(top[i], other[K - 1 - i]);
  }
  bitonic_sort<K>(top);
}

// The 8 candidates of the chunk of experts `first..first + 8` (its bf16 logits in `words`),
// folded into the K best. kNanLow (Llama4): a NaN logit is keyed as -inf.
template <int K, bool kNanLow>
__device__ __forceinline__ void fold_chunk(uint32_t* top, uint4 words, int first) {
  const uint32_t w[4] = {words.x, words.y, words.z, words.w};
  uint32_t c[8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    // The bf16 logit widened exactly, keyed as method_keys keys it.
    float x = __uint_as_float(((w[i / 2] >> (16 * (i % 2))) & 0xffffu) << 16);
    if constexpr (kNanLow) {
      if (isnan(x)) x = -INFINITY;
    }
    c[i] = candidate_bf16(order_of(x), static_cast<uint32_t>(first + i));
  }
  if constexpr (K == 1) {
    uint32_t m = c[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) m = max(m, c[i]);
    top[0] = max(top[0], m);
  } else {
    sort_candidates<0, 8, uint32_t>(c);
    keep_best<K, 8>(top, c);
  }
}

// warp_sum of lanes 0..K-1 holding e (the others 0), as every lane of it ends: the same adds in
// the same order, so the weights equal sorted_top_k_bf16's to the bit.
template <int K>
__device__ __forceinline__ float butterfly_sum(const float* e) {
  float x[K];
#pragma unroll
  for (int r = 0; r < K; ++r) x[r] = e[r];
  // warp_sum's steps at offsets >= K add a 0 to each of these (exact: x is never -0).
#pragma unroll
  for (int off = K / 2; off >= 1; off /= 2) {
    float y[K];
#pragma unroll
    for (int r = 0; r < K; ++r) y[r] = x[r] + x[r ^ off];
#pragma unroll
    for (int r = 0; r < K; ++r) x[r] = y[r];
  }
  return x[0];
}

// T lanes a token (a power of two <= 8), K >= top_k (a power of two <= 16); num_experts a
// multiple of 8 and the logits 16-byte aligned (the host checks).
// One token's row: its T lanes (`sub` of `group`) read the logits, keep their K best, merge
// them by shuffles and hand each rank r of the lane's (r, r + T, ...) to put(r, expert, weight),
// the weights as method_weight gives them for these methods.
template <int T, int K, bool kNanLow, typename Put>
__device__ __forceinline__ void route_row(const Args& a, int t, int sub, unsigned group, Put put) {
  const int chunks = a.num_experts / 8, k = a.top_k;
  const auto* row = reinterpret_cast<const uint4*>(static_cast<const __nv_bfloat16*>(a.logits) +
                                                   static_cast<size_t>(t) * a.num_experts);
  uint32_t top[K];
#pragma unroll
  for (int i = 0; i < K; ++i) top[i] = 0u;  // closed: below every candidate
  for (int c0 = sub; c0 < chunks; c0 += kAhead * T) {
    uint4 words[kAhead];
#pragma unroll
    for (int d = 0; d < kAhead; ++d) {
      const int c = c0 + d * T;
      words[d] = c < chunks ? __ldg(row + c) : make_uint4(0u, 0u, 0u, 0u);
    }
#pragma unroll
    for (int d = 0; d < kAhead; ++d) {
      const int c = c0 + d * T;
      if (c < chunks) fold_chunk<K, kNanLow>(top, words[d], c * 8);
    }
  }
#pragma unroll
  for (int off = 1; off < T; off <<= 1) {
    uint32_t other[K];
#pragma unroll
    for (int i = 0; i < K; ++i) other[i] = __shfl_xor_sync(group, top[i], off);
    keep_best<K, K>(top, other);
  }

  // Every lane of the token holds its K best, rank order.
  float key[K], e[K];
#pragma unroll
  for (int r = 0; r < K; ++r) key[r] = key_of(ord_of_bf16(top[r]));
  const bool softmax =
      a.method == FI_ROUTING_RENORMALIZE || a.method == FI_ROUTING_RENORMALIZE_NAIVE;
  float sum = 1.0f;
  if (softmax) {
#pragma unroll
    for (int r = 0; r < K; ++r) e[r] = r < k ? __expf(key[r] - key[0]) : 0.0f;
    sum = butterfly_sum<K>(e);
  }
#pragma unroll
  for (int r = 0; r < K; ++r) {
    if (r < k && (r & (T - 1)) == sub) {
      put(r, expert_of_bf16(top[r]),
          softmax                          ? e[r] / sum
          : a.method == FI_ROUTING_LLAMA4 ? sigmoid(key[r])
                                           : key[r]);  // TopK: the logit
    }
  }
}

template <int T, int K, bool kNanLow>
__global__ void __launch_bounds__(kRowsBlock) topk_rows(const Args a) {
  const int lane = threadIdx.x & 31;
  const unsigned group = ((1u << T) - 1) << (lane & ~(T - 1));
  const int sub = lane & (T - 1), k = a.top_k;
  // As topk_route (programmatic dependent launch).
  fi::wait_for_prior_grid();
  fi::let_dependents_start();

  if constexpr (K == 1) {
    // Top-1: a row is one entry, so a warp's tokens' rows are side by side already and each
    // token's entry is stored directly. A thread-strided loop: the warp rounds below took
    // 1.02-1.07x its time at 1-1024 Llama4 tokens (H100, session 26, BENCHMARKS.md 7m); this
    // loop takes 0.97-0.98x the rounds' time there and 0.80 / 0.77x at 32768 / 131072 tokens
    // (H100, session 27, BENCHMARKS.md 7n).
    // A token's T lanes share t, so they loop alike and the group's shuffles find all of them.
    const int thread = blockIdx.x * blockDim.x + threadIdx.x;
    const int stride = gridDim.x * blockDim.x / T;
    for (int t = thread / T; t < a.num_tokens; t += stride) {
      route_row<T, K, kNanLow>(a, t, sub, group, [&](int r, uint32_t expert, float w) {
        store_route(a, static_cast<size_t>(t) * k + r, expert, w);
      });
    }
  } else {
    constexpr int kGroups = 32 / T;  // tokens a warp routes at once
    // A warp's ids and weights, staged so that its stores cover its tokens' rows
    // contiguously (each lane's own ranks lie k entries apart per token: one sector each at
    // one lane a token).
    __shared__ uint16_t staged_ids[kRowsBlock / 32][kGroups * K];
    __shared__ float staged_weights[kRowsBlock / 32][kGroups * K];
    const int in_block = threadIdx.x >> 5;
    const int g = lane / T;
    const int warps = gridDim.x * (blockDim.x >> 5);
    const int warp = blockIdx.x * (blockDim.x >> 5) + in_block;
    uint16_t* ids = staged_ids[in_block];
    float* weights = staged_weights[in_block];
    // A warp routes tokens first..first + kGroups - 1 each round (every lane loops alike, so
    // the warp's syncs find all of them); a token's T lanes shuffle among themselves.
    for (int first = warp * kGroups; first < a.num_tokens; first += warps * kGroups) {
      const int n = min(kGroups, a.num_tokens - first);
      if (g < n) {
        route_row<T, K, kNanLow>(a, first + g, sub, group,
                                 [&](int r, uint32_t expert, float w) {
                                   ids[g * k + r] = static_cast<uint16_t>(expert);
                                   weights[g * k + r] = w;
                                 });
      }
      __syncwarp();
      // The warp's n rows are n * k consecutive entries of each output.
      const size_t base = static_cast<size_t>(first) * k;
      for (int i = lane; i < n * k; i += 32) store_route(a, base + i, ids[i], weights[i]);
      __syncwarp();  // the staging is the next round's
    }
  }
}

}  // namespace

// ---- host side ------------------------------------------------------------------------------

namespace {

using Kernel = void (*)(Args);

// A kernel and how many of its blocks one SM holds at once (asked once per device: the
// grid-stride loop then runs in one wave of resident blocks).
struct Launch {
  Kernel kernel;
  int (*resident_blocks)(int device);

  // The grid for `needed` blocks: at most two waves of them resident on the device's SMs, the
  // kernels' loops striding past that (two waves measured 2-7% faster than one at 131072 tokens
  // on an H200, four no better).
  unsigned grid(int64_t needed, int sms, int device) const {
    return static_cast<unsigned>(
        std::min<int64_t>(needed, 2 * static_cast<int64_t>(sms) * resident_blocks(device)));
  }
};

// A per-device value, asked once (a device past the table is asked every time).
template <typename Query>
int once_per_device(std::atomic<int> (&cache)[64], int device, Query query) {
  const bool cached = device >= 0 && device < 64;
  int n = cached ? cache[device].load(std::memory_order_relaxed) : 0;
  if (n == 0) {
    n = std::max(query(), 1);
    if (cached) cache[device].store(n, std::memory_order_relaxed);
  }
  return n;
}

// Blocks of kThreads of `kKernel` one SM holds.
template <Kernel kKernel, int kThreads>
int resident_blocks(int device) {
  static std::atomic<int> cache[64];
  return once_per_device(cache, device, [] {
    int n = 0;
    fi::check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kKernel, kThreads, 0),
                   "cudaOccupancyMaxActiveBlocksPerMultiprocessor");
    return n;
  });
}

template <typename In, int V, int W, bool K>
constexpr Launch launch_of() {
  return Launch{topk_route<In, V, W, K>,
                resident_blocks<topk_route<In, V, W, K>, kWarpsPerBlock * 32>};
}

template <int T, int K, bool kNanLow>
constexpr Launch rows_launch_of() {
  return Launch{topk_rows<T, K, kNanLow>, resident_blocks<topk_rows<T, K, kNanLow>, kRowsBlock>};
}

// topk_rows for T lanes a token and top_k <= K (Llama4: K = 1, NaN keyed as -inf).
template <int T>
Launch pick_rows_k(int top_k, bool llama4) {
  if (llama4) return rows_launch_of<T, 1, true>();
  if (top_k <= 1) return rows_launch_of<T, 1, false>();
  if (top_k <= 2) return rows_launch_of<T, 2, false>();
  if (top_k <= 4) return rows_launch_of<T, 4, false>();
  if (top_k <= 8) return rows_launch_of<T, 8, false>();
  return rows_launch_of<T, 16, false>();
}

Launch pick_rows(int lanes, int top_k, bool llama4) {
  switch (lanes) {
    case 1:
      return pick_rows_k<1>(top_k, llama4);
    case 2:
      return pick_rows_k<2>(top_k, llama4);
    case 4:
      return pick_rows_k<4>(top_k, llama4);
    default:
      return pick_rows_k<8>(top_k, llama4);
  }
}

// Instantiations: V experts per lane (a power of two, E <= 32 * V, or 12 for fp32 rows of
// 257-384 experts), W per chunk: the widest
// vector load of at most 16 bytes and V values (fp32 x 4, bf16 x 8 or x 4) where the row
// allows, else 1; K: 32-bit candidates for bf16 keys (bf16 logits, V <= 16).
template <typename In, int V>
constexpr int vector_width() {
  return std::min<int>(V, 16 / sizeof(In));
}

template <typename In, int V, bool K>
Launch pick_width(bool vec) {
  constexpr int kWidth = vector_width<In, V>();
  if constexpr (kWidth > 1) {
    if (vec) return launch_of<In, V, kWidth, K>();
  }
  return launch_of<In, V, 1, K>();
}

template <typename In, int V>
Launch pick_keys(bool vec, bool bf16_keys) {
  if constexpr (std::is_same_v<In, __nv_bfloat16> && V <= 16) {
    if (bf16_keys) return pick_width<In, V, true>(vec);
  }
  return pick_width<In, V, false>(vec);
}

template <typename In>
Launch pick(int v, bool vec, bool bf16_keys) {
  if constexpr (std::is_same_v<In, float>) {
    // fp32 rows of 257-384 experts (Kimi-K2's 384): three 4-value chunks a lane where 16
    // slots would leave four empty in every lane (their loads, keys and sorting network).
    // Measured (H100, session 26, BENCHMARKS.md 7m): Kimi-K2 0.87-0.88x the 16 slots' time at
    // 1-1024 tokens (3.27 against 3.74 us at one), 0.78-0.79x from 8192.
    if (v == 12) return pick_width<float, 12, false>(vec);
  }
  switch (v) {
    case 1:
      return pick_keys<In, 1>(vec, bf16_keys);
    case 2:
      return pick_keys<In, 2>(vec, bf16_keys);
    case 4:
      return pick_keys<In, 4>(vec, bf16_keys);
    case 8:
      return pick_keys<In, 8>(vec, bf16_keys);
    case 16:
      return pick_keys<In, 16>(vec, bf16_keys);
    case 32:
      return pick_keys<In, 32>(vec, bf16_keys);
    default:
      return pick_keys<In, 64>(vec, bf16_keys);
  }
}

bool aligned_to(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}
bool pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

// Whether a batch goes to topk_rows (where its bf16 keys allow). Measured on an H100 (132 SMs;
// BENCHMARKS.md 7k, candidate router-4): topk_rows took 0.49-0.88x topk_route's time from 8192
// tokens (Qwen3-Next's 512 experts 1.03x at 8192, 0.60-0.66x from 32768) and 1.08-1.82x at 1024
// (8 lanes a token: too few warps to hide a lane's chain), so from 32 tokens an SM; at top-1
// (Llama4) at every size: 0.93x at 1 and 16 tokens, 0.94x at 1024.
bool rows_wanted(int tokens, int sms, int top_k) { return top_k == 1 || tokens >= 32 * sms; }

// SM count per device, asked once.
int sm_count(int device) {
  static std::atomic<int> cache[64];
  return once_per_device(cache, device, [&] {
    int n = 0;
    fi::check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device),
                   "cudaDeviceGetAttribute(MultiProcessorCount)");
    return n;
  });
}

// The checks of a call, as the Rust layer makes them (this entry point is also public C).
void validate(const fi_topk_params& p, const fi_topk_buffers& b) {
  fi::require((p.method >= FI_ROUTING_DEFAULT && p.method <= FI_ROUTING_SIGMOID) ||
                  p.method == FI_ROUTING_DEEPSEEK_V2,
              "unknown routing method");
  fi::require(p.num_tokens >= 0, "num_tokens must be >= 0");
  fi::require(p.num_experts >= 1 && p.num_experts <= 2048, "num_experts must be in 1..=2048");
  fi::require(p.top_k >= 1 && p.top_k <= 32 && p.top_k <= p.num_experts,
              "top_k must be in 1..=min(32, num_experts)");
  fi::require(p.logits_dtype == FI_DTYPE_F32 || p.logits_dtype == FI_DTYPE_BF16,
              "logits must be f32 or bf16");
  const bool needs_bias = p.method == FI_ROUTING_DEEPSEEK_V3 || p.method == FI_ROUTING_MINIMAX2;
  fi::require(needs_bias == (b.bias != nullptr),
              "DeepSeekV3 and MiniMax2 take a bias, others none");
  fi::require(b.bias == nullptr || p.bias_dtype == FI_DTYPE_F32 || p.bias_dtype == FI_DTYPE_BF16,
              "the bias must be f32 or bf16");
  fi::require(p.num_tokens == 0 || b.logits != nullptr, "logits must not be NULL");
  fi::require(b.ids_i16 != nullptr || b.ids_i32 != nullptr || b.weights_f32 != nullptr ||
                  b.weights_bf16 != nullptr,
              "a call must write at least one output");
  const bool v2 = p.method == FI_ROUTING_DEEPSEEK_V2;
  if ((p.method == FI_ROUTING_DEEPSEEK_V3 || v2) && p.n_group > 1) {
    fi::require(p.n_group <= 8 && p.num_experts % p.n_group == 0, "at most 8 equal groups");
    const int per = p.num_experts / p.n_group;
    // DeepSeekV3 scores a group by its two best experts; DeepSeekV2 by its best.
    fi::require(per >= (v2 ? 1 : 2) && per <= 32,
                v2 ? "1..=32 experts per group" : "2..=32 experts per group");
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
    if (!bf16 && v == 16 && p.num_experts <= 32 * 12) v = 12;
    const int vec_width = std::min(v, bf16 ? 8 : 4);
    const size_t elem = bf16 ? 2 : 4;
    const bool vec = vec_width > 1 && p.num_experts % vec_width == 0 &&
                     aligned_to(b.logits, vec_width * elem);
    const int w = vec ? vec_width : 1;
    const bool grouped =
        (p.method == FI_ROUTING_DEEPSEEK_V3 || p.method == FI_ROUTING_DEEPSEEK_V2) && p.n_group > 1;
    const int per = grouped ? p.num_experts / p.n_group : 0;
    const size_t bias_bytes = b.bias == nullptr ? 0 : (p.bias_dtype == FI_DTYPE_BF16 ? 2 : 4);

    Args a{};
    a.method = p.method;
    a.num_tokens = p.num_tokens;
    a.num_experts = p.num_experts;
    a.top_k = p.top_k;
    a.n_group = grouped ? p.n_group : 1;
    a.topk_group = grouped ? p.topk_group : 1;
    a.group_max = p.method == FI_ROUTING_DEEPSEEK_V2;
    a.scale = p.routed_scaling_factor;
    a.norm = p.norm_topk_prob != 0;
    a.segmented_groups = grouped && per % w == 0 && pow2(per / w);
    a.logits = b.logits;
    a.bias = b.bias;
    a.bias_bf16 = p.bias_dtype == FI_DTYPE_BF16;
    // The bias takes the logits' chunks with one load each where its bytes make a vector.
    const size_t chunk_bytes = w * bias_bytes;
    a.bias_vec = b.bias != nullptr && w > 1 &&
                 (chunk_bytes == 4 || chunk_bytes == 8 || chunk_bytes == 16) &&
                 aligned_to(b.bias, chunk_bytes);
    a.ids_i16 = b.ids_i16;
    a.ids_i32 = b.ids_i32;
    a.weights_f32 = b.weights_f32;
    a.weights_bf16 = static_cast<__nv_bfloat16*>(b.weights_bf16);

    int device = 0;
    fi::check_cuda(cudaGetDevice(&device), "cudaGetDevice");
    // One warp per token. Up to 4 tokens per SM, blocks of fewer warps spread them over the SMs
    // (one warp per SM, then up to one per scheduler): a token's warp is a serial chain of
    // about a thousand instructions, so two warps on one scheduler take longer than one
    // (session 21: DeepSeek-V3 routing 3.62 / 4.10 / 4.15 us at 1 / 16 / 128 tokens in 8-warp
    // blocks, SGLang's one-warp programs flat at 3.4-3.6). Past that, blocks of kWarpsPerBlock,
    // at most two waves of them resident (Launch::grid), whose warps loop over tokens.
    // The methods whose key is the logit itself: with bf16 logits, 32-bit candidates
    // (sorted_top_k_bf16).
    const bool bf16_keys =
        bf16 && (p.method == FI_ROUTING_RENORMALIZE || p.method == FI_ROUTING_RENORMALIZE_NAIVE ||
                 p.method == FI_ROUTING_TOPK || p.method == FI_ROUTING_LLAMA4);
    const int sms = sm_count(device);
    // Programmatic dependent launch (`use_pdl`): the launch and the grid's start overlap the
    // previous kernel's tail (its blocks wait for it first, topk_route and topk_rows).
    const bool dependent = p.use_pdl != 0;
    const auto s = static_cast<cudaStream_t>(stream);
    // Batches that fill the GPU, with bf16 keys in whole 16-byte chunks: topk_rows, with as
    // many lanes a token (1 to 8) as give the SMs about 16 warps each.
    const int chunks = p.num_experts / 8;
    if (bf16_keys && p.top_k <= 16 && p.num_experts % 8 == 0 && aligned_to(b.logits, 16) &&
        rows_wanted(p.num_tokens, sms, p.top_k)) {
      int lanes = 1;
      while (lanes < 8 && 2 * lanes <= chunks &&
             static_cast<int64_t>(p.num_tokens) * lanes < static_cast<int64_t>(sms) * 512) {
        lanes *= 2;
      }
      const Launch rows = pick_rows(lanes, p.top_k, p.method == FI_ROUTING_LLAMA4);
      const int64_t threads = static_cast<int64_t>(p.num_tokens) * lanes;
      const int64_t needed = (threads + kRowsBlock - 1) / kRowsBlock;
      fi::launch("top-k router launch", rows.kernel,
                 fi::LaunchShape{dim3(rows.grid(needed, sms, device)), dim3(kRowsBlock), 0,
                                 dependent},
                 s, a);
      return;
    }
    const Launch launch =
        bf16 ? pick<__nv_bfloat16>(v, vec, bf16_keys) : pick<float>(v, vec, false);
    const int per_block = p.num_tokens <= sms         ? 1
                          : p.num_tokens <= 2 * sms   ? 2
                          : p.num_tokens <= 4 * sms   ? 4
                                                      : kWarpsPerBlock;
    const int needed = (p.num_tokens + per_block - 1) / per_block;
    fi::launch("top-k router launch", launch.kernel,
               fi::LaunchShape{dim3(launch.grid(needed, sms, device)), dim3(per_block * 32), 0,
                               dependent},
               s, a);
  });
}

namespace {
__global__ void empty_kernel() {}
}  // namespace

extern "C" fi_status fi_launch_empty_kernel(void* stream) {
  return fi::guarded([&] {
    fi::launch("empty kernel launch", empty_kernel, fi::LaunchShape{dim3(1), dim3(32)},
               static_cast<cudaStream_t>(stream));
  });
}
