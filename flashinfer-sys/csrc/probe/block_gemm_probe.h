// block_gemm_probe.h: what block_gemm_probe.cu shares with block_gemm_probe_swap_ab.cu, the
// unit of DeepGEMM's swap-AB kernels (built apart, with the ptxas flags upstream's JIT gives
// them; the Fp8Gemm kernels keep the layer's flags).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace probe {

// One grouped GEMM call: out[rows][n] = x[rows][k] . w[expert][n][k]^T per expert, the rows
// grouped by expert (offsets), the activations quantised into upstream's workspace layout.
struct Problem {
  int experts, n, k;
  __nv_fp8_e4m3* w;  // [experts][n][k]
  float* ws;         // [experts][n / 128][k / 128], 1 / scale
  int rows;
  int rows_4;             // rows rounded up to 4, as upstream sizes the quantised rows
  int rows_padded;        // deep_gemm::compute_padded_offset(rows, experts)
  int64_t* offsets;       // [experts + 1], device
  __nv_bfloat16* x;       // [rows][k]
  __nv_fp8_e4m3* xq;      // [rows_4][k]
  float* xs;              // [k / 128][rows_padded], 1 / scale; expert e's rows from
                          // compute_padded_offset(offsets[e], e)
};

constexpr int kSwapAbThreads = 384;  // one TMA warp group, two math warp groups

// The swap-AB kernel this binary holds for n, k and the expert count (its template constants),
// or nullptr.
const void* swap_ab_kernel(int n, int k, int experts);

// Its dynamic shared memory at k.
int swap_ab_smem_bytes(int k);

// One call of `kernel` (from swap_ab_kernel for p's shape) into out ([rows_4][n]).
cudaError_t swap_ab_run(const void* kernel, const Problem& p, __nv_bfloat16* out, int sms,
                        cudaStream_t s);

}  // namespace probe
