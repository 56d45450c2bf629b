// moe_decode_probe.cu: the decode kernels (../moe_decode.cu) alone, for tuning them on a GPU
// machine that has nvcc but no cargo: checks them against a host reference on a few shapes,
// then times them in CUDA graphs (20 calls per graph launch, median of 30 launches) at the
// Qwen3-30B-A3B and DeepSeek-V3-sized layers, with the bytes of the routed experts' weights
// over the time beside the GPU's bandwidth; with bf16 weights, then with fp8 per-tensor ones
// (timed only: their arithmetic is checked by the layer's tests, not here). The crate's own
// tests and bench (tests/gpu, benches/moe_layer.rs) are the proof; this is the workbench.
//
//     bash scripts/decode-probe.sh        # on the GPU machine: builds with nvcc and runs
//     bash scripts/decode-profile.sh      # the same binary's `profile` mode under Nsight Compute
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "moe_decode.h"
#include "probe_check.h"
#include "probe_tokens.h"

namespace {

// A uniform value in [-1, 1) for element i (splitmix64 of i + seed): the same data every run.
__device__ float uniform(size_t i, uint64_t seed) {
  uint64_t z = (i + seed) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return 2.f * (float(z >> 40) / float(1 << 24)) - 1.f;
}

__global__ void fill(__nv_bfloat16* p, size_t n, float scale, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    p[i] = __float2bfloat16(uniform(i, seed) * scale);
  }
}

// e4m3 codes of uniform values in [-448, 448) (no NaN codes).
__global__ void fill_e4m3(__nv_fp8_storage_t* p, size_t n, uint64_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    p[i] = __nv_cvt_float_to_fp8(uniform(i, seed) * 448.f, __NV_SATFINITE, __NV_E4M3);
  }
}

float bf(__nv_bfloat16 v) { return __bfloat162float(v); }

struct Layer {
  int experts, top_k, hidden, inter;
  __nv_bfloat16 *fc1 = nullptr, *fc2 = nullptr;
};

// The same shapes with fp8 per-tensor weights: e4m3 codes and the four scales the decode path
// takes (fi::decode::Fp8Scales), magnitudes as the bf16 layer's (the layer bench's scales: input
// a1 = 1 / 448, activation a2 = 4 / 448, weights 2 / sqrt(fan-in) / 448).
struct Fp8Layer {
  __nv_fp8_storage_t *fc1 = nullptr, *fc2 = nullptr;
  // 1 / a1, 1 / a2, then per expert a1 * w13[e], then per expert a2 * w2[e]
  float* scales = nullptr;
};

Fp8Layer make_fp8(const Layer& l) {
  Fp8Layer f;
  size_t n1 = size_t(l.experts) * 2 * l.inter * l.hidden;
  size_t n2 = size_t(l.experts) * l.hidden * l.inter;
  CHECK(cudaMalloc(&f.fc1, n1));
  CHECK(cudaMalloc(&f.fc2, n2));
  fill_e4m3<<<4096, 256>>>(f.fc1, n1, 3);
  fill_e4m3<<<4096, 256>>>(f.fc2, n2, 4);
  const float a1 = 1.f / 448.f, a2 = 4.f / 448.f;
  const float w13 = 2.f / std::sqrt(float(l.hidden)) / 448.f;
  const float w2 = 2.f / std::sqrt(float(l.inter)) / 448.f;
  std::vector<float> scales{1.f / a1, 1.f / a2};
  scales.insert(scales.end(), l.experts, a1 * w13);
  scales.insert(scales.end(), l.experts, a2 * w2);
  const size_t bytes = scales.size() * sizeof(float);
  CHECK(cudaMalloc(&f.scales, bytes));
  CHECK(cudaMemcpy(f.scales, scales.data(), bytes, cudaMemcpyHostToDevice));
  CHECK(cudaDeviceSynchronize());
  return f;
}

void release(Fp8Layer& f) {
  cudaFree(f.fc1);
  cudaFree(f.fc2);
  cudaFree(f.scales);
}

void make(Layer& l) {
  size_t n1 = size_t(l.experts) * 2 * l.inter * l.hidden;
  size_t n2 = size_t(l.experts) * l.hidden * l.inter;
  CHECK(cudaMalloc(&l.fc1, n1 * 2));
  CHECK(cudaMalloc(&l.fc2, n2 * 2));
  fill<<<4096, 256>>>(l.fc1, n1, 2.f / std::sqrt(float(l.hidden)), 1);
  fill<<<4096, 256>>>(l.fc2, n2, 2.f / std::sqrt(float(l.inter)), 2);
  CHECK(cudaDeviceSynchronize());
}

struct Call {
  int tokens;
  std::vector<int> ids;
  std::vector<float> scales;
  __nv_bfloat16 *x, *out, *act;
  int* d_ids;
  float* d_scales;
};

Call make_call(const Layer& l, int tokens, std::mt19937& rng, bool repeats = false) {
  Call c{tokens};
  for (int t = 0; t < tokens; ++t) {
    std::vector<int> all(l.experts);
    for (int e = 0; e < l.experts; ++e) all[e] = e;
    std::shuffle(all.begin(), all.end(), rng);
    float sum = 0;
    for (int k = 0; k < l.top_k; ++k) {
      int id = all[k];
      if (repeats && k == 1) id = all[0];
      if (repeats && k == 2 && t % 2) id = -1;
      c.ids.push_back(id);
      float s = std::uniform_real_distribution<float>(0.1f, 1.f)(rng);
      c.scales.push_back(s);
      sum += s;
    }
    for (int k = 0; k < l.top_k; ++k) c.scales[t * l.top_k + k] /= sum;
  }
  CHECK(cudaMalloc(&c.x, size_t(tokens) * l.hidden * 2));
  CHECK(cudaMalloc(&c.out, size_t(tokens) * l.hidden * 2));
  // The bf16 activations (the scratch every version of moe_decode.cu takes for bf16 weights;
  // the probe also builds against other versions, whose workspace_bytes may differ in shape).
  CHECK(cudaMalloc(&c.act, size_t(tokens) * l.top_k * l.inter * sizeof(__nv_bfloat16)));
  CHECK(cudaMalloc(&c.d_ids, c.ids.size() * 4));
  CHECK(cudaMalloc(&c.d_scales, c.scales.size() * 4));
  fill<<<256, 256>>>(c.x, size_t(tokens) * l.hidden, 1.f, 7 + tokens);
  CHECK(cudaMemcpy(c.d_ids, c.ids.data(), c.ids.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(c.d_scales, c.scales.data(), c.scales.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaDeviceSynchronize());
  return c;
}

void release(Call& c) {
  cudaFree(c.x);
  cudaFree(c.out);
  cudaFree(c.act);
  cudaFree(c.d_ids);
  cudaFree(c.d_scales);
}

fi::decode::Problem problem(const Layer& l, const Call& c, int first = 0, int local = -1) {
  return fi::decode::Problem{c.x,      c.d_ids,  c.d_scales, l.fc1,   l.fc2,
                             c.out,    c.act,    c.tokens,   l.top_k, l.hidden,
                             l.inter,  first,    local < 0 ? l.experts : local};
}

fi::decode::Problem problem(const Layer& l, const Fp8Layer& f, const Call& c) {
  fi::decode::Problem p = problem(l, c);
  p.fc1 = f.fc1;
  p.fc2 = f.fc2;
  p.fp8.input_quant = f.scales;
  p.fp8.fc2_quant = f.scales + 1;
  p.fp8.fc1_dequant = f.scales + 2;
  p.fp8.fc2_dequant = f.scales + 2 + l.experts;
  return p;
}

// Host reference (f32, the activation rounded to bf16), over the layer's experts.
bool check(const Layer& l, const Call& c, const char* what) {
  fi::decode::run(problem(l, c), 0);
  CHECK(cudaDeviceSynchronize());
  size_t n1 = size_t(l.experts) * 2 * l.inter * l.hidden;
  size_t n2 = size_t(l.experts) * l.hidden * l.inter;
  std::vector<__nv_bfloat16> w1(n1), w2(n2), x(size_t(c.tokens) * l.hidden),
      out(size_t(c.tokens) * l.hidden);
  CHECK(cudaMemcpy(w1.data(), l.fc1, n1 * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(w2.data(), l.fc2, n2 * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(x.data(), c.x, x.size() * 2, cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(out.data(), c.out, out.size() * 2, cudaMemcpyDeviceToHost));
  double worst = 0;
  for (int t = 0; t < c.tokens; ++t) {
    std::vector<float> y(l.hidden, 0.f);
    for (int k = 0; k < l.top_k; ++k) {
      int e = c.ids[t * l.top_k + k];
      if (e < 0 || e >= l.experts) continue;
      std::vector<float> a(l.inter);
      for (int i = 0; i < l.inter; ++i) {
        float u = 0, g = 0;
        for (int h = 0; h < l.hidden; ++h) {
          float xv = bf(x[size_t(t) * l.hidden + h]);
          u += bf(w1[(size_t(e) * 2 * l.inter + i) * l.hidden + h]) * xv;
          g += bf(w1[(size_t(e) * 2 * l.inter + l.inter + i) * l.hidden + h]) * xv;
        }
        a[i] = bf(__float2bfloat16(g / (1.f + std::exp(-g)) * u));
      }
      for (int h = 0; h < l.hidden; ++h) {
        float d = 0;
        for (int i = 0; i < l.inter; ++i) {
          d += bf(w2[(size_t(e) * l.hidden + h) * l.inter + i]) * a[i];
        }
        y[h] += c.scales[t * l.top_k + k] * d;
      }
    }
    for (int h = 0; h < l.hidden; ++h) {
      double got = bf(out[size_t(t) * l.hidden + h]);
      double err = std::fabs(y[h] - got) / (0.02 + 0.02 * std::fabs(y[h]));
      worst = std::max(worst, err);
    }
  }
  bool ok = worst <= 1.0;
  std::printf("check %-44s %s (worst error / tolerance %.3f)\n", what, ok ? "ok" : "FAILED", worst);
  return ok;
}

double time_us(const fi::decode::Problem& p, cudaStream_t s) {
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < 20; ++i) fi::decode::run(p, s);
  CHECK(cudaStreamEndCapture(s, &graph));
  CHECK(cudaGraphInstantiate(&exec, graph, 0));
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  for (int r = 0; r < 35; ++r) {
    CHECK(cudaEventRecord(a, s));
    CHECK(cudaGraphLaunch(exec, s));
    CHECK(cudaEventRecord(b, s));
    CHECK(cudaEventSynchronize(b));
    float m;
    CHECK(cudaEventElapsedTime(&m, a, b));
    if (r >= 5) ms.push_back(m);
  }
  std::sort(ms.begin(), ms.end());
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return ms[ms.size() / 2] * 1000.0 / 20;
}

}  // namespace

// `profile <qwen3|deepseek>[-fp8] <tokens>`: that one call (bf16 weights, or fp8 per-tensor with
// -fp8), eagerly, three times (for a profiler, which then sees each kernel launch on its own).
int profile(const std::string& layer, int tokens) {
  const bool fp8 = layer.size() > 4 && layer.compare(layer.size() - 4, 4, "-fp8") == 0;
  const std::string name = fp8 ? layer.substr(0, layer.size() - 4) : layer;
  if (name != "qwen3" && name != "deepseek") {
    std::fprintf(stderr, "profile: no layer %s (qwen3, deepseek, qwen3-fp8, deepseek-fp8)\n",
                 layer.c_str());
    return 2;
  }
  Layer l = name == "qwen3" ? Layer{128, 8, 2048, 768} : Layer{256, 8, 7168, 2048};
  make(l);
  Fp8Layer f = make_fp8(l);
  std::mt19937 rng(5);
  Call c = make_call(l, tokens, rng);
  for (int i = 0; i < 3; ++i) fi::decode::run(fp8 ? problem(l, f, c) : problem(l, c), 0);
  CHECK(cudaDeviceSynchronize());
  std::printf("profiled %s at %d tokens\n", layer.c_str(), tokens);
  release(c);
  release(f);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[1]) == "profile") return profile(argv[2], std::atoi(argv[3]));
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  double bw = std::string(prop.name).find("H200") != std::string::npos ? 4.8e12 : 3.35e12;
  std::printf("%s, %d SMs, bandwidth used %.2f TB/s\n", prop.name, prop.multiProcessorCount,
              bw / 1e12);
  // MOE_DECODE_PROBE_TOKENS: time only those of the sizes below (unset: every one).
  const std::vector<int> only = probe::token_counts("MOE_DECODE_PROBE_TOKENS", {});
  std::mt19937 rng(5);
  bool ok = true;
  {
    struct S { int e, k, h, i, t; bool rep; const char* name; };
    for (S s : {S{16, 4, 256, 128, 1, false, "E16 K4 H256 I128 T1"},
                S{16, 4, 256, 128, 64, false, "E16 K4 H256 I128 T64 (groups > 8)"},
                S{8, 2, 320, 192, 7, false, "E8 K2 H320 I192 T7 (tails)"},
                S{16, 4, 256, 128, 5, true, "E16 K4 T5, repeated and stray ids"},
                S{128, 8, 2048, 768, 3, false, "Qwen3 T3"}}) {
      Layer l{s.e, s.k, s.h, s.i};
      make(l);
      Call c = make_call(l, s.t, rng, s.rep);
      ok &= check(l, c, s.name);
      release(c);
      cudaFree(l.fc1);
      cudaFree(l.fc2);
    }
  }
  cudaStream_t stream;
  CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  struct M { const char* name; int e, k, h, i; std::vector<int> tokens; };
  for (M m : {M{"Qwen3-30B-A3B", 128, 8, 2048, 768, {1, 2, 4, 8, 16, 32, 64}},
              M{"DeepSeek-V3-sized", 256, 8, 7168, 2048, {1, 2, 4, 8, 16, 32, 64}}}) {
    Layer l{m.e, m.k, m.h, m.i};
    make(l);
    Fp8Layer f = make_fp8(l);
    for (bool fp8 : {false, true}) {
      std::printf("\n%s%s: tokens | decode kernels (us) | experts read | weight bytes / time (TB/s)"
                  " | of bandwidth\n",
                  m.name, fp8 ? ", fp8 per-tensor weights (timed only)" : ", bf16 weights");
      for (int t : m.tokens) {
        if (!only.empty() && std::find(only.begin(), only.end(), t) == only.end()) continue;
        Call c = make_call(l, t, rng);
        std::vector<bool> hit(l.experts);
        for (int id : c.ids) hit[id] = true;
        int read = int(std::count(hit.begin(), hit.end(), true));
        double bytes = double(read) * 3.0 * l.hidden * l.inter * (fp8 ? 1.0 : 2.0);
        double us = time_us(fp8 ? problem(l, f, c) : problem(l, c), stream);
        std::printf("%6d | %8.1f | %4d | %.2f | %.0f%%\n", t, us, read,
                    bytes / (us * 1e-6) / 1e12, 100.0 * bytes / (us * 1e-6) / bw);
        release(c);
      }
    }
    release(f);
    cudaFree(l.fc1);
    cudaFree(l.fc2);
  }
  return ok ? 0 : 1;
}
