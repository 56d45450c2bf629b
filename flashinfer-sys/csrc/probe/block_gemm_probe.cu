// block_gemm_probe.cu: the fp8 block-scale grouped GEMM candidates for the MoE layer from 16 to
// 512 tokens (docs/fp8-on-hopper.md section 9), timed in one process on the same data:
//
//   (1) Fp8Gemm's 128x64 grouped kernel: what csrc/cutlass_moe_gemm_fp8_block.cu runs today;
//   (2) the same template with a 64x64 tile and 6 stages (two CTAs per SM): the layer's tile 1;
//   (3) DeepGEMM's grouped swap-AB kernel (fp8_gemm_kernel_swapAB), which TensorRT-LLM takes
//       below 32 rows per expert on H100/H200, instantiated ahead of time (no NVRTC) in
//       block_gemm_probe_swap_ab.cu for the probe's shapes only.
//
// All three read the same quantised activations, as upstream switches between (1) and (3) on
// the same buffers: scale_1x128_kernel's e4m3 rows and their scales, MN-major with each
// expert's rows from deep_gemm::compute_padded_offset, which Fp8Gemm's grouped visitor and
// DeepGEMM's GroupedWithOffsetSchedulerSwapAB both index. A small case checks all three
// against a host reference; at the layer shapes (2) and (3) are checked against (1). Like
// moe_decode_probe.cu, a workbench for a GPU machine with nvcc and no cargo:
//
//     bash scripts/block-gemm-probe.sh pack   # here: the upstream sources it needs, tarred
//     bash scripts/block-gemm-probe.sh        # on the GPU machine: unpacks, builds and runs
#ifndef FLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY
#error "needs patch 0012 and -DFLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY (scripts/block-gemm-probe.sh)"
#endif
#include "fp8_blockscale_gemm/fp8_blockscale_gemm_kernel.cuh"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "block_gemm_probe.h"
#include "probe_check.h"

namespace {

namespace bs = tensorrt_llm::kernels::fp8_blockscale_gemm;
using fp8 = __nv_fp8_e4m3;
using bf16 = __nv_bfloat16;
using probe::Problem;

// (1) and (2), exactly as the layer's unit declares them.
template <int TileM, int Stages>
using GroupedGemm =
    bs::Fp8Gemm<fp8, bs::Layout::RowMajor, fp8, bs::Layout::ColMajor, bf16, bs::Layout::RowMajor,
                float, float, float, TileM, 64, 128, bs::ScaleType::PerSubChannel,
                bs::ScaleType::PerBlock, 1, 128, 128, 128, Stages>;
using WideGemm = GroupedGemm<128, 0>;
using NarrowGemm = GroupedGemm<64, 6>;

// The stage count WideGemm takes for itself (Fp8Gemm::get_num_stages, private): the most that
// fit at Fp8Gemm's largest K.
constexpr int kWideStages = [] {
  for (int s = 8; s > 4; --s) {
    if (WideGemm::get_smem_size(s) <= 232448) return s;
  }
  return 4;
}();
constexpr int kNarrowStages = 6;

// The kernel GroupedGemm<TileM, Stages>::run launches, for its attributes.
template <int TileM, int Stages>
const void* grouped_kernel() {
  return reinterpret_cast<const void*>(&bs::cooperative_1x128_by_128x128_fp8_gemm_kernel<
                                       bs::GroupedGemmProblemVisitor<TileM, 64>, fp8, fp8, bf16,
                                       bs::Layout::RowMajor,
                                       typename bs::Fp8MmaSelector<fp8, fp8, 64>::Type, TileM, 64,
                                       128, Stages, true>);
}

// moeGemm's quantisation (csrc/cutlass_moe_gemm_fp8_block.cu, from upstream's
// fp8_grouped_gemm_run): one warp per row and 128 columns.
cudaError_t quantize(const Problem& p, int sms, cudaStream_t s) {
  constexpr int kThreads = 256;
  const int scales_x = (p.k + 127) / 128;
  uint32_t mul = 0, shr = 0;
  kernel_utils::find_divisor(mul, shr, scales_x);
  const int smem = p.experts * int(sizeof(int64_t));
  const int blocks = int(std::min<int64_t>(
      sms, (int64_t(p.rows_4) * scales_x + kThreads / 32 - 1) / (kThreads / 32)));
  const bool binary_search = double(p.rows_4) * scales_x / double(kThreads * blocks / 32) <=
                             double(p.experts) / std::log2(double(p.experts));
  auto kernel = binary_search ? bs::scale_1x128_kernel<true, bf16, fp8>
                              : bs::scale_1x128_kernel<false, bf16, fp8>;
  cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  kernel<<<blocks, kThreads, smem, s>>>(p.xq, p.xs, p.x, p.offsets, p.experts, p.k,
                                        p.rows_padded, mul, shr);
  return cudaGetLastError();
}

enum Candidate { kWide, kNarrow, kSwapAB, kCandidates };

const char* kNames[kCandidates] = {"(1) Fp8Gemm 128x64", "(2) Fp8Gemm 64x64, 6 stages",
                                   "(3) DeepGEMM swap-AB 128x16, 8 stages"};

// Why candidate `c` cannot run `p`, or nullptr.
const char* unsupported(Candidate c, const Problem& p) {
  if (c == kSwapAB) {
    return probe::swap_ab_kernel(p.n, p.k, p.experts) ? nullptr
                                                      : "no swap-AB kernel built for this shape";
  }
  if (p.k > WideGemm::MAX_SHAPE_K) return "K above Fp8Gemm::MAX_SHAPE_K";
  if (p.n % 64 != 0) return "N not a multiple of Fp8Gemm's 64-column tile";
  return nullptr;
}

// One GEMM of candidate `c` on the quantised activations. guessed_m as the layer passes it:
// one tile's rows, each CTA stepping over its expert's tiles.
cudaError_t launch(Candidate c, const Problem& p, bf16* out, int sms, cudaStream_t s) {
  switch (c) {
    case kWide:
      WideGemm::run(p.xq, p.w, out, p.xs, p.ws, p.experts, p.offsets, p.n, p.k, p.rows_4, s,
                    /*guessed_m=*/128, p.rows_padded);
      return cudaGetLastError();
    case kNarrow:
      NarrowGemm::run(p.xq, p.w, out, p.xs, p.ws, p.experts, p.offsets, p.n, p.k, p.rows_4, s,
                      /*guessed_m=*/64, p.rows_padded);
      return cudaGetLastError();
    default:
      return probe::swap_ab_run(probe::swap_ab_kernel(p.n, p.k, p.experts), p, out, sms, s);
  }
}

// Each candidate's kernel at N x K: its stages, dynamic shared memory and CTAs per SM.
void print_kernels(int n, int k, int experts) {
  struct K {
    const void* kernel;
    int stages, threads, smem;
  };
  const K ks[kCandidates] = {
      {grouped_kernel<128, kWideStages>(), kWideStages, 384,
       WideGemm::get_smem_size(kWideStages, k)},
      {grouped_kernel<64, kNarrowStages>(), kNarrowStages, 256,
       NarrowGemm::get_smem_size(kNarrowStages, k)},
      {probe::swap_ab_kernel(n, k, experts), 8, probe::kSwapAbThreads,
       probe::swap_ab_smem_bytes(k)},
  };
  std::printf("kernels at N %d x K %d:", n, k);
  for (int c = 0; c < kCandidates; ++c) {
    if (!ks[c].kernel) {
      std::printf("%s (%d) not built for this shape", c ? ";" : "", c + 1);
      continue;
    }
    int ctas = 0;
    CHECK(cudaFuncSetAttribute(ks[c].kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               ks[c].smem));
    CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, ks[c].kernel, ks[c].threads,
                                                        ks[c].smem));
    std::printf("%s (%d) %d stages, %.1f KB, %d threads, %d CTA(s) per SM", c ? ";" : "", c + 1,
                ks[c].stages, ks[c].smem / 1024.0, ks[c].threads, ctas);
  }
  std::printf("\n");
}

__device__ float uniform(size_t i, uint64_t seed) {  // in [-1, 1)
  uint64_t z = (i + seed * 0x632BE59BD9B4E019ull) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return 2.f * (float(z >> 40) / float(1 << 24)) - 1.f;
}

// e4m3 codes over their whole range.
__global__ void fill_weights(fp8* w, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    w[i] = fp8(448.f * uniform(i, seed));
  }
}

// Block scales from base / 4 to base * 4, so that a block read with another's scale shows.
__global__ void fill_scales(float* s, size_t n, float base, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    s[i] = base * exp2f(2.f * uniform(i, seed));
  }
}

// Activations whose size changes by powers of 2 (1/16 to 16) from row to row and from one
// 128-column group to the next, so that a row or group read with another's scale shows.
__global__ void fill_activations(bf16* x, int rows, int k, uint64_t seed) {
  const size_t n = size_t(rows) * k;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    const int row = int(i / k), group = int(i % k) / 128;
    x[i] = __float2bfloat16(uniform(i, seed) * exp2f(float((row * 7 + group * 3) % 9 - 4)));
  }
}

struct Weights {
  int experts, n, k;
  fp8* w;
  float* ws;
};

Weights make_weights(int experts, int n, int k, uint64_t seed) {
  Weights g{experts, n, k};
  const size_t codes = size_t(experts) * n * k, scales = size_t(experts) * (n / 128) * (k / 128);
  CHECK(cudaMalloc(&g.w, codes));
  CHECK(cudaMalloc(&g.ws, scales * sizeof(float)));
  fill_weights<<<8192, 256>>>(g.w, codes, seed);
  // Outputs of order 1: 448-sized codes on both sides, k products.
  fill_scales<<<256, 256>>>(g.ws, scales, 1.f / (448.f * std::sqrt(float(k))), seed + 1);
  CHECK(cudaDeviceSynchronize());
  return g;
}

void release(Weights& g) {
  cudaFree(g.w);
  cudaFree(g.ws);
}

// The rows of one GEMM call: `counts` rows per expert, random activations, quantised.
Problem make_problem(const Weights& g, const std::vector<int>& counts, uint64_t seed, int sms) {
  Problem p{g.experts, g.n, g.k, g.w, g.ws};
  std::vector<int64_t> offsets(g.experts + 1, 0);
  for (int e = 0; e < g.experts; ++e) offsets[e + 1] = offsets[e] + counts[e];
  p.rows = int(offsets.back());
  p.rows_4 = (p.rows + 3) / 4 * 4;
  p.rows_padded = int(deep_gemm::compute_padded_offset(int64_t(p.rows), int64_t(g.experts)));
  CHECK(cudaMalloc(&p.offsets, offsets.size() * sizeof(int64_t)));
  CHECK(cudaMemcpy(p.offsets, offsets.data(), offsets.size() * sizeof(int64_t),
                   cudaMemcpyHostToDevice));
  CHECK(cudaMalloc(&p.x, size_t(p.rows) * p.k * sizeof(bf16)));
  CHECK(cudaMalloc(&p.xq, size_t(p.rows_4) * p.k));
  CHECK(cudaMalloc(&p.xs, size_t(p.k / 128) * p.rows_padded * sizeof(float)));
  fill_activations<<<1024, 256>>>(p.x, p.rows, p.k, seed);
  CHECK(quantize(p, sms, 0));
  CHECK(cudaDeviceSynchronize());
  return p;
}

void release(Problem& p) {
  cudaFree(p.offsets);
  cudaFree(p.x);
  cudaFree(p.xq);
  cudaFree(p.xs);
}

// The worst row's max |got - want| over that row's max |want|: per row, because rows differ in
// size by up to 256x and a wrong scale on a small row would hide under the whole output's
// maximum (this is never below the whole-output ratio). NaN (a row left unwritten: outputs are
// filled with NaN first) counts as infinite.
double row_error(const std::vector<float>& want, const std::vector<bf16>& got, int rows, int n) {
  double worst = 0;
  for (int r = 0; r < rows; ++r) {
    double peak = 0, diff = 0;
    for (int j = 0; j < n; ++j) {
      const double w = want[size_t(r) * n + j], g = __bfloat162float(got[size_t(r) * n + j]);
      peak = std::max(peak, std::fabs(w));
      const double d = std::fabs(g - w);
      diff = std::isnan(d) ? INFINITY : std::max(diff, d);
    }
    worst = std::max(worst, diff / std::max(peak, 1e-30));
  }
  return worst;
}

// The three share inputs and round to bf16 last; they may differ in fp32 summation order and
// in the fp8 MMA's internal accumulation, and then by one bf16 step (2^-8 of a value, 0.4% of
// the row's maximum at most). 1% leaves 2.5 such steps; a misplaced scale, row or expert moves
// a row by its whole size (scales here differ by 2x at least from one block, row or 128-column
// group to the next).
constexpr double kTolerance = 1e-2;

// Runs candidate `c` once into a NaN-filled output and reads it back.
std::vector<bf16> run_once(Candidate c, const Problem& p, bf16* out, int sms) {
  CHECK(cudaMemset(out, 0xFF, size_t(p.rows_4) * p.n * sizeof(bf16)));
  CHECK(launch(c, p, out, sms, 0));
  CHECK(cudaDeviceSynchronize());
  std::vector<bf16> host(size_t(p.rows) * p.n);
  CHECK(cudaMemcpy(host.data(), out, host.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
  return host;
}

// Host reference: the activations quantised as scale_1x128_kernel does (448 / amax per row and
// 128 columns, patch 0013's finite clamp, e4m3 with saturation), times the dequantised weights,
// in double; the GPU's own quantised activations are not used.
std::vector<float> reference(const Problem& p) {
  const int groups = p.k / 128;
  std::vector<bf16> x(size_t(p.rows) * p.k);
  std::vector<fp8> w(size_t(p.experts) * p.n * p.k);
  std::vector<float> ws(size_t(p.experts) * (p.n / 128) * groups);
  std::vector<int64_t> offsets(p.experts + 1);
  CHECK(cudaMemcpy(x.data(), p.x, x.size() * sizeof(bf16), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(w.data(), p.w, w.size(), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(ws.data(), p.ws, ws.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(offsets.data(), p.offsets, offsets.size() * sizeof(int64_t),
                   cudaMemcpyDeviceToHost));
  std::vector<float> out(size_t(p.rows) * p.n);
  std::vector<float> q(p.k), inv(groups);
  for (int e = 0; e < p.experts; ++e) {
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      for (int g = 0; g < groups; ++g) {
        float amax = 0;
        for (int i = g * 128; i < g * 128 + 128; ++i) {
          amax = std::max(amax, std::fabs(__bfloat162float(x[size_t(r) * p.k + i])));
        }
        const float scale = amax != 0.f ? std::fmin(448.f / amax, FLT_MAX) : 1.f;
        inv[g] = 1.f / scale;
        for (int i = g * 128; i < g * 128 + 128; ++i) {
          q[i] = float(fp8(__bfloat162float(x[size_t(r) * p.k + i]) * scale));
        }
      }
      for (int j = 0; j < p.n; ++j) {
        const fp8* row = &w[(size_t(e) * p.n + j) * p.k];
        double sum = 0;
        for (int g = 0; g < groups; ++g) {
          double dot = 0;
          for (int i = g * 128; i < g * 128 + 128; ++i) dot += double(q[i]) * float(row[i]);
          sum += dot * inv[g] * ws[(size_t(e) * (p.n / 128) + j / 128) * groups + g];
        }
        out[size_t(r) * p.n + j] = float(sum);
      }
    }
  }
  return out;
}

// Microseconds per call: median of 30 timed launches (after 5) of a CUDA graph of 20 calls;
// back to back (20 calls, `graph` false) if the calls cannot be captured. `call` returns its
// launch's error.
template <typename Call>
double time_us(Call call, cudaStream_t s, bool& graph) {
  cudaGraph_t g = nullptr;
  cudaGraphExec_t exec = nullptr;
  graph = cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (graph) {
    for (int i = 0; i < 20; ++i) graph &= call(s) == cudaSuccess;
    graph &= cudaStreamEndCapture(s, &g) == cudaSuccess;
    graph = graph && cudaGraphInstantiate(&exec, g, 0) == cudaSuccess;
    cudaGetLastError();  // a refused capture's error is not the calls'
  }
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < 35; ++r) {
    CHECK(cudaEventRecord(a, s));
    if (graph) {
      CHECK(cudaGraphLaunch(exec, s));
    } else {
      for (int i = 0; i < 20; ++i) CHECK(call(s));
    }
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    CHECK(cudaGetLastError());
    float m;
    CHECK(cudaEventElapsedTime(&m, a, b));
    if (r >= 5) ms.push_back(m);
  }
  std::sort(ms.begin(), ms.end());
  if (exec) cudaGraphExecDestroy(exec);
  if (g) cudaGraphDestroy(g);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2] * 1000.0 / 20;
}

// Four experts (one empty, one of a single row, one over a 128-row tile, row counts not
// multiples of 16), N and K of two 128-blocks and more: every candidate against the host.
bool check_small(int sms) {
  Weights g = make_weights(4, 256, 512, 11);
  Problem p = make_problem(g, {1, 0, 70, 150}, 12, sms);
  const std::vector<float> want = reference(p);
  bf16* out;
  CHECK(cudaMalloc(&out, size_t(p.rows_4) * p.n * sizeof(bf16)));
  bool ok = true;
  for (int c = 0; c < kCandidates; ++c) {
    const double err = row_error(want, run_once(Candidate(c), p, out, sms), p.rows, p.n);
    const bool pass = err <= kTolerance;
    ok &= pass;
    std::printf("check %-38s against the host, 4 experts of 1/0/70/150 rows, N 256, K 512: %s "
                "(worst row's max |diff| / max |out| %.1e, tolerance %.0e)\n",
                kNames[c], pass ? "ok" : "FAILED", err, kTolerance);
  }
  cudaFree(out);
  release(p);
  release(g);
  return ok;
}

// Each token's top_k experts, drawn uniformly without repeats: rows per expert.
std::vector<int> route(int experts, int top_k, int tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int> counts(experts, 0), all(experts);
  for (int t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) all[e] = e;
    for (int k = 0; k < top_k; ++k) {
      std::swap(all[k], all[k + rng() % (experts - k)]);
      ++counts[all[k]];
    }
  }
  return counts;
}

constexpr uint32_t kRoutingSeed = 5;

struct Layer {
  const char* name;
  int experts, top_k, hidden, inter;
};

}  // namespace

int main() {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs, %.0f MB of L2\n", prop.name, sms, prop.l2CacheSize / 1e6);
  // As the layer sets it: two CTAs per SM need the SM's shared memory at its largest split.
  CHECK(cudaFuncSetAttribute(grouped_kernel<64, kNarrowStages>(),
                             cudaFuncAttributePreferredSharedMemoryCarveout,
                             int(cudaSharedmemCarveoutMaxShared)));
  const Layer layers[] = {{"DeepSeek-V3-sized", 256, 8, 7168, 2048},
                          {"Qwen3-30B-A3B", 128, 8, 2048, 768}};
  for (const Layer& l : layers) {
    print_kernels(2 * l.inter, l.hidden, l.experts);
    print_kernels(l.hidden, l.inter, l.experts);
  }
  bool ok = check_small(sms);

  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  std::vector<std::string> notes;
  std::printf(
      "\nRouting: each token's %d experts drawn uniformly without repeats (std::mt19937, seed %u + "
      "tokens). us: per call, median of 30 CUDA graphs of 20 calls (* = back-to-back launches: "
      "not capturable). TB/s: the hit experts' fp8 weight bytes over the GEMM's time. quantise: "
      "scale_1x128_kernel, shared by all three. (2)/(3) vs (1): worst row's max |diff| / max "
      "|out|, tolerance %.0e.\n\n",
      layers[0].top_k, kRoutingSeed, kTolerance);
  std::printf("| layer | GEMM: N x K | tokens | experts hit | quantise us | (1) us | (2) us | "
              "(3) us | (1) TB/s | (2) TB/s | (3) TB/s | (2) vs (1) | (3) vs (1) |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (const Layer& l : layers) {
    Weights gemms[2] = {make_weights(l.experts, 2 * l.inter, l.hidden, 21),
                        make_weights(l.experts, l.hidden, l.inter, 22)};
    for (int tokens : {16, 32, 64, 128, 512}) {
      const std::vector<int> counts = route(l.experts, l.top_k, tokens, kRoutingSeed + tokens);
      const int hit = int(std::count_if(counts.begin(), counts.end(), [](int c) { return c > 0; }));
      for (int gi = 0; gi < 2; ++gi) {
        const Weights& g = gemms[gi];
        Problem p = make_problem(g, counts, 100 * tokens + gi, sms);
        const double bytes = double(hit) * g.n * g.k;
        bool quant_graph, graph;
        const double quant_us =
            time_us([&](cudaStream_t s) { return quantize(p, sms, s); }, stream, quant_graph);
        bf16* outs[kCandidates] = {};
        std::vector<bf16> got[kCandidates];
        std::string us[kCandidates], tbs[kCandidates], vs[kCandidates] = {"-", "-", "-"};
        for (int c = 0; c < kCandidates; ++c) {
          const Candidate cand = Candidate(c);
          if (const char* why = unsupported(cand, p)) {
            us[c] = tbs[c] = "-";
            notes.push_back(std::string(l.name) + " GEMM " + std::to_string(gi + 1) + " at " +
                            std::to_string(tokens) + " tokens: " + kNames[c] + " skipped: " + why);
            continue;
          }
          CHECK(cudaMalloc(&outs[c], size_t(p.rows_4) * p.n * sizeof(bf16)));
          got[c] = run_once(cand, p, outs[c], sms);
          const double t = time_us(
              [&](cudaStream_t s) { return launch(cand, p, outs[c], sms, s); }, stream, graph);
          char buf[64];
          std::snprintf(buf, sizeof buf, "%.1f%s", t, graph ? "" : "*");
          us[c] = buf;
          std::snprintf(buf, sizeof buf, "%.2f", bytes / (t * 1e-6) / 1e12);
          tbs[c] = buf;
        }
        if (outs[kWide]) {
          std::vector<float> want(got[kWide].size());
          for (size_t i = 0; i < want.size(); ++i) want[i] = __bfloat162float(got[kWide][i]);
          for (int c : {kNarrow, kSwapAB}) {
            if (!outs[c]) continue;
            const double err = row_error(want, got[c], p.rows, p.n);
            ok &= err <= kTolerance;
            char buf[64];
            std::snprintf(buf, sizeof buf, "%.1e%s", err, err <= kTolerance ? "" : " FAILED");
            vs[c] = buf;
          }
        }
        std::printf("| %s | %d: %d x %d | %d | %d | %.1f%s | %s | %s | %s | %s | %s | %s | %s | "
                    "%s |\n",
                    l.name, gi + 1, g.n, g.k, tokens, hit, quant_us, quant_graph ? "" : "*",
                    us[kWide].c_str(), us[kNarrow].c_str(), us[kSwapAB].c_str(),
                    tbs[kWide].c_str(), tbs[kNarrow].c_str(), tbs[kSwapAB].c_str(),
                    vs[kNarrow].c_str(), vs[kSwapAB].c_str());
        std::fflush(stdout);
        for (bf16* o : outs) cudaFree(o);
        release(p);
      }
    }
    release(gemms[0]);
    release(gemms[1]);
  }
  for (const auto& n : notes) std::printf("%s\n", n.c_str());
  std::printf("\n%s\n", ok ? "all checks ok" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
