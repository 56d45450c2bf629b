// block_gemm_probe_swap_ab.cu: DeepGEMM's grouped swap-AB kernel for block_gemm_probe.cu,
// instantiated ahead of time from the headers as upstream's JIT would instantiate it at run
// time, and its host launch code. Built with the JIT's ptxas flags (register usage level 10,
// expensive optimisations; scripts/block-gemm-probe.sh), which change the generated code.
//
// DeepGEMM's fp8_gemm.cuh holds the launch code but includes the NVRTC compiler;
// fp8_gemm_impl.cuh is the kernels alone, so the launch code is copied here, and the CUTLASS
// headers fp8_gemm.cuh includes before the kernels are included first.
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>

#include <cute/arch/cluster_sm90.hpp>
#include <cute/arch/copy_sm90_desc.hpp>
#include <cute/arch/copy_sm90_tma.hpp>

#include "tensorrt_llm/deep_gemm/fp8_gemm_impl.cuh"

#include <algorithm>

#include "block_gemm_probe.h"

namespace probe {
namespace {

namespace dg = deep_gemm;

// The tile DeepGEMM's own rule (deep_gemm::jit::get_best_gemm_config, swap_ab) picks for every
// case of the probe where upstream would take swap-AB (mean rows per expert under 32; there at
// most 16): BLOCK_M 128 weight rows (N > 64), BLOCK_N 16 token rows (fewest waves, then the
// smallest tile), 8 stages (128 % 16 == 0, and they fit), no TMA multicast (grouped). The one
// case past that rule, Qwen3-30B-A3B at 512 tokens (32 rows per expert, where upstream takes
// DeepGEMM's non-swapped kernel and would give swap-AB BLOCK_N 32), runs this tile too.
constexpr uint32_t kBlockM = 128, kBlockN = 16, kBlockK = 128, kStages = 8;
static_assert(dg::get_num_threads_per_sm<128, 128>(kBlockM) == kSwapAbThreads);

using Input = dg::GroupedWithOffsetSchedulerInputSwapAB;
using Kernel = void (*)(__nv_bfloat16*, float*, Input, CUtensorMap, CUtensorMap, CUtensorMap,
                        CUtensorMap);

// As upstream's JIT writes it (deep_gemm::jit::generateKernel, swapAB): N (the weights' rows),
// K and the expert count are template constants, so each shape is its own kernel.
template <uint32_t N, uint32_t K, uint32_t Experts>
Kernel instance() {
  using Scheduler =
      typename dg::SchedulerSelectorSwapAB<dg::GemmType::GroupedWithOffset, N, K, kBlockM,
                                           kBlockN, kBlockK, Experts, 1>::type;
  return &dg::fp8_gemm_kernel_swapAB<N, K, kBlockM, kBlockN, kBlockK, Experts, kStages, 128, 128,
                                     1, Scheduler, Input>;
}

struct Instance {
  int n, k, experts;
  Kernel kernel;
};

// Only these shapes have a swap-AB kernel in the probe.
const Instance kInstances[] = {
    {4096, 7168, 256, instance<4096, 7168, 256>()},  // DeepSeek-V3-sized GEMM 1
    {7168, 2048, 256, instance<7168, 2048, 256>()},  // DeepSeek-V3-sized GEMM 2
    {1536, 2048, 128, instance<1536, 2048, 128>()},  // Qwen3-30B-A3B GEMM 1
    {2048, 768, 128, instance<2048, 768, 128>()},    // Qwen3-30B-A3B GEMM 2
    {256, 512, 4, instance<256, 512, 4>()},          // the host-checked case
};

// A TMA descriptor of a row-major [rows][cols] tensor in boxes of box_rows x box_cols: what
// deep_gemm::make_2d_tma_desc builds (its ColMajor form is this with rows and cols swapped).
template <typename T>
CUtensorMap tma_2d(T* p, uint64_t rows, uint64_t cols, uint32_t box_rows, uint32_t box_cols,
                   CUtensorMapSwizzle swizzle) {
  uint64_t dims[2] = {cols, rows};
  uint32_t box[2] = {box_cols, box_rows};
  return dg::make_2d_tma_copy_desc(p, dims, cols * sizeof(T), box, swizzle);
}

}  // namespace

const void* swap_ab_kernel(int n, int k, int experts) {
  for (const auto& i : kInstances) {
    if (i.n == n && i.k == k && i.experts == experts) {
      return reinterpret_cast<const void*>(i.kernel);
    }
  }
  return nullptr;
}

// deep_gemm::jit::get_smem_size with swap_ab: the bf16 output tile; per stage a weight tile, an
// activation tile and its scales (padded to 128 bytes for TMA); the weight scales of the whole
// K; two barriers per stage.
int swap_ab_smem_bytes(int k) {
  return int(kBlockN * kBlockM * 2 +
             kStages * (kBlockM * kBlockK + kBlockN * kBlockK + (kBlockN * 4 + 127) / 128 * 128) +
             ((k + 127) / 128 * 4 + 7) / 8 * 8 + kStages * 16);
}

// deep_gemm::runGemmSwapAB (fp8_gemm.cuh, its grouped-with-offset overload) with the operands as
// upstream's grouped_gemm_dispatch passes them: DeepGEMM's A is the weights ([experts * n] rows
// in 128 x 128 boxes), its B the quantised activations (16-row boxes), its scales_b the
// activation scales (16 at a time from each expert's padded offset), the weight scales read by
// the math threads, the output row-major [rows][n]. Persistent: one CTA per SM.
cudaError_t swap_ab_run(const void* kernel, const Problem& p, __nv_bfloat16* out, int sms,
                        cudaStream_t s) {
  const CUtensorMap a = tma_2d(p.w, uint64_t(p.n) * p.experts, p.k, kBlockM, kBlockK,
                               CU_TENSOR_MAP_SWIZZLE_128B);
  const CUtensorMap b = tma_2d(p.xq, p.rows_4, p.k, kBlockN, kBlockK, CU_TENSOR_MAP_SWIZZLE_128B);
  const CUtensorMap scales_b =
      tma_2d(p.xs, (p.k + 127) / 128, p.rows_padded, 1, kBlockN, CU_TENSOR_MAP_SWIZZLE_NONE);
  const CUtensorMap d = tma_2d(out, p.rows_4, p.n, std::min<uint32_t>(kBlockN, p.rows_4),
                               std::min<uint32_t>(kBlockM, p.n), CU_TENSOR_MAP_SWIZZLE_NONE);
  const int smem = swap_ab_smem_bytes(p.k);
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (e != cudaSuccess) return e;
  cudaLaunchConfig_t config{};
  config.gridDim = sms;
  config.blockDim = kSwapAbThreads;
  config.dynamicSmemBytes = smem;
  config.stream = s;
  cudaLaunchAttribute cluster{};
  cluster.id = cudaLaunchAttributeClusterDimension;
  cluster.val.clusterDim = {1, 1, 1};
  config.attrs = &cluster;
  config.numAttrs = 1;
  Input input{};
  input.problem_n_offsets = p.offsets;
  return cudaLaunchKernelEx(&config, reinterpret_cast<Kernel>(const_cast<void*>(kernel)), out,
                            p.ws, input, a, b, scales_b, d);
}

}  // namespace probe
