// cutlass_moe_gemm_fp8_block.cu (feature sm90-moe-fp8): the DeepSeek fp8 block-scale grouped
// GEMM of the Hopper MoE layer, from upstream's kernels without upstream's unit.
//
// Upstream's fp8_blockscale_gemm.cu instantiates four runner classes over every dense, grouped
// and strided-batch kernel of the header (about 17 WGMMA kernels, two Ada ones and DeepGEMM's
// NVRTC host code: 477 s of one core in a cold CI, and a link to libnvrtc and five driver
// calls we do not forward). The MoE runner calls one entry, moeGemm, with bf16 activations and
// e4m3 weights; with FLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY (patch 0012) the header keeps only
// its templates, and this unit instantiates what that entry launches when DeepGEMM is off
// (getDeepGemmEnabled() false: no JIT include directories, as in TensorRT-LLM's C++ runtime
// without them): the 1x128 activation quantisation and Fp8Gemm's 128x64x128 grouped kernel.
#ifndef FLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY
#error "the CUTLASS MoE tree lacks patch 0012 (python3 vendor/fetch.py sources)"
#endif
#include "fp8_blockscale_gemm/fp8_blockscale_gemm_kernel.cuh"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "launch.h"
#include "moe_block_scale.h"

namespace fi::block_scale {
namespace {

namespace bs = tensorrt_llm::kernels::fp8_blockscale_gemm;

// The grouped kernel with a TileM x 64 output tile and `Stages` pipeline stages (0: as many
// as fit one CTA per SM's shared memory at upstream's largest K).
template <int TileM, int Stages>
using GroupedGemm =
    bs::Fp8Gemm<__nv_fp8_e4m3, bs::Layout::RowMajor, __nv_fp8_e4m3, bs::Layout::ColMajor,
                __nv_bfloat16, bs::Layout::RowMajor, float, float, float, TileM, 64, 128,
                bs::ScaleType::PerSubChannel, bs::ScaleType::PerBlock, 1, 128, 128, 128, Stages>;
// Tile 0: what upstream's fp8_grouped_gemm_run takes without DeepGEMM (8 stages, ~197 KB).
using WideGemm = GroupedGemm<128, 0>;
// Tile 1: 6 stages, ~100 KB at K <= 20480, so two CTAs share an SM (117 registers x 256
// threads each).
using NarrowGemm = GroupedGemm<64, 6>;
static_assert(kTileCount == 2 && kTiles[kWideTile].rows == 128 && kTiles[kWideTile].cols == 64 &&
              kTiles[kNarrowTile].rows == 64 && kTiles[kNarrowTile].cols == 64);

// The kernel NarrowGemm::run launches (as its run names it), for its attributes.
auto narrow_kernel() {
  return bs::cooperative_1x128_by_128x128_fp8_gemm_kernel<
      bs::GroupedGemmProblemVisitor<64, 64>, __nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16,
      bs::Layout::RowMajor, typename bs::Fp8MmaSelector<__nv_fp8_e4m3, __nv_fp8_e4m3, 64>::Type,
      64, 64, 128, 6, true>;
}

void check(cudaError_t e) {
  if (e != cudaSuccess) {
    throw std::runtime_error(std::string("block-scale GEMM: ") + cudaGetErrorString(e));
  }
}

// The open TileScope's choice on this thread (TileScope's comment says why thread-local).
struct Choice {
  int32_t gemm1 = kWideTile, gemm2 = kWideTile;
  int64_t gemm1_n = -1, gemm1_k = -1;
};
thread_local Choice choice;

[[noreturn]] void unused(const char* entry) {
  throw std::runtime_error(std::string("flashinfer-rs builds the fp8 block-scale GEMM for the MoE "
                                       "layer only; ") +
                           entry + " is not in this build");
}

class MoeGemm final : public bs::CutlassFp8BlockScaleGemmRunnerInterface {
 public:
  // Workspace, as upstream's CutlassFp8BlockScaleGemmRunner<bf16, fp8, bf16> lays it out:
  // [ e4m3 activations: max_m_4_ x K | their f32 scales: max_m_padded_ x ceil(K / 128) ].
  void moeGemm(void* mat_d, void const* mat_a, void const* mat_b,
               int64_t const* problem_m_offsets, size_t num_problems, size_t shape_n,
               size_t shape_k, cudaStream_t stream, float const* /*scales_a*/,
               float const* scales_b) override {
    if (workspace_ == nullptr) throw std::runtime_error("block-scale GEMM: no workspace");
    auto* fp8_a = reinterpret_cast<__nv_fp8_e4m3*>(workspace_);
    auto* scales_a = reinterpret_cast<float*>(workspace_ + max_m_4_ * int64_t(shape_k));
    if (sms_ < 0) sms_ = tensorrt_llm::common::getMultiProcessorCount();
    const int problems = int(num_problems);

    // As fp8_grouped_gemm_run: one warp per token and 128 columns, the expert found by a
    // linear walk or, when the rows are few for the experts, a binary search. Eight blocks an
    // SM, as upstream's other launches of the kernel, where fp8_grouped_gemm_run gives it one:
    // this pass only moves bytes, and with eight warps an SM, each holding one 256-byte run in
    // flight, it waited on latency. Under Nsight Compute on an H100, before GEMM 1 of a
    // 4096-token Qwen3-30B-A3B call: 397.6 us at 14.5% of DRAM bandwidth on one block an SM,
    // 141.3 us at 41% on eight; the layer 0.76x its time with the same output bits
    // (BENCHMARKS.md 7o, 7p). Its 36-40 registers a thread leave six or seven of the eight
    // resident at once, the rest a second wave (candidate block-quant-2 sizes the grid by the
    // occupancy instead). The kernel strides over its runs by the grid, so each run is quantised
    // by the same code whatever the grid.
    constexpr int kThreads = 256;
    constexpr int kBlocksPerSm = 8;
    const int scales_x = int(bs::div_up(shape_k, size_t(128)));
    uint32_t mul = 0, shr = 0;
    kernel_utils::find_divisor(mul, shr, scales_x);
    const int smem = problems * int(sizeof(int64_t));
    const int blocks = int(std::min<int64_t>(int64_t(sms_) * kBlocksPerSm,
                                             bs::div_up(max_m_4_ * scales_x,
                                                        int64_t(kThreads / 32))));
    const bool binary_search = double(max_m_4_) * scales_x / double(kThreads * blocks / 32) <=
                               double(problems) / std::log2(double(problems));
    auto quantize = binary_search ? bs::scale_1x128_kernel<true, __nv_bfloat16, __nv_fp8_e4m3>
                                  : bs::scale_1x128_kernel<false, __nv_bfloat16, __nv_fp8_e4m3>;
    check(cudaFuncSetAttribute(quantize, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
    fi::launch("the block-scale GEMM's activation quantisation launch", quantize,
               fi::LaunchShape{dim3(blocks), dim3(kThreads), size_t(smem)}, stream, fp8_a,
               scales_a, static_cast<__nv_bfloat16 const*>(mat_a), problem_m_offsets, problems,
               int(shape_k), max_m_padded_, mul, shr);

    const bool gemm1 = int64_t(shape_n) == choice.gemm1_n && int64_t(shape_k) == choice.gemm1_k;
    auto* weights = reinterpret_cast<__nv_fp8_e4m3*>(const_cast<void*>(mat_b));
    auto* out = static_cast<__nv_bfloat16*>(mat_d);
    // guessed_m: the grid's CTAs per expert along the rows, each stepping over the expert's
    // tiles (one 128-row tile, upstream's; the narrow tile one CTA, its rows being few).
    if ((gemm1 ? choice.gemm1 : choice.gemm2) == kNarrowTile) {
      if (!narrow_carveout_) {
        // Two CTAs per SM need the SM's shared memory at its largest split from L1 (the
        // driver's default split may fit one).
        check(cudaFuncSetAttribute(narrow_kernel(), cudaFuncAttributePreferredSharedMemoryCarveout,
                                   int(cudaSharedmemCarveoutMaxShared)));
        narrow_carveout_ = true;
      }
      NarrowGemm::run(fp8_a, weights, out, scales_a, scales_b, problems, problem_m_offsets,
                      int(shape_n), int(shape_k), int(max_m_4_), stream, /*guessed_m=*/64,
                      int(max_m_padded_));
    } else {
      WideGemm::run(fp8_a, weights, out, scales_a, scales_b, problems, problem_m_offsets,
                    int(shape_n), int(shape_k), int(max_m_4_), stream, /*guessed_m=*/128,
                    int(max_m_padded_));
    }
  }

  // Upstream's sizes and their side effects on the layout (getWorkspaceSizeBase): the rows
  // of the largest call seen so far, padded as DeepGEMM's scheduler pads each expert's rows.
  size_t getWorkspaceSizeBase(size_t max_shape_m, size_t /*shape_n*/, size_t shape_k,
                              size_t num_problems) override {
    max_m_4_ = std::max(max_m_4_, int64_t(bs::div_up(max_shape_m, size_t(4)) * 4));
    max_m_padded_ = deep_gemm::compute_padded_offset(int64_t(max_shape_m), int64_t(num_problems));
    return size_t(max_m_4_) * shape_k * sizeof(__nv_fp8_e4m3) +
           size_t(max_m_padded_) * bs::div_up(shape_k, size_t(128)) * sizeof(float);
  }

  size_t getWorkspaceSize(size_t shape_m, size_t shape_n, size_t shape_k, size_t top_k,
                          size_t num_problems) override {
    return getWorkspaceSizeBase(shape_m * top_k, shape_n, shape_k, num_problems);
  }

  void gemm(void*, void const*, void const*, int, int, int, cudaStream_t, float const*,
            float const*) override {
    unused("the dense GEMM");
  }
  void gemm(__nv_fp8_e4m3 const*, int, __nv_fp8_e4m3 const*, int, __nv_bfloat16*, int, int, int,
            int, float const*, float const*, cudaStream_t) override {
    unused("the dense fp8 GEMM");
  }
  void strideBatchGemm(__nv_bfloat16*, int, int, __nv_fp8_e4m3*, int, int, __nv_fp8_e4m3*, int,
                       int, int, int, int, int, cudaStream_t, float*, int, float*) override {
    unused("the strided-batch GEMM");
  }
  void fp8CS1x128(__nv_fp8_e4m3*, float*, __nv_bfloat16 const*, int, int,
                  cudaStream_t) override {
    unused("fp8CS1x128");
  }
  void fp8CS1x128Reshape(__nv_fp8_e4m3*, float*, __nv_bfloat16 const*, int, int, int, int,
                         cudaStream_t) override {
    unused("fp8CS1x128Reshape");
  }
  void fp8CS128x128(__nv_fp8_e4m3*, float*, __nv_bfloat16 const*, int, int,
                    cudaStream_t) override {
    unused("fp8CS128x128");
  }
  size_t getFP8DataSize(int, int, bool) override { unused("getFP8DataSize"); }
  size_t getActScaleSize(int, int) override { unused("getActScaleSize"); }
  size_t getWeightScaleSize(int, int) override { unused("getWeightScaleSize"); }
  size_t getActWorkspaceSize(int, int) override { unused("getActWorkspaceSize"); }
  size_t getWeightWorkspaceSize(int, int) override { unused("getWeightWorkspaceSize"); }

 private:
  int64_t max_m_4_ = 0;
  int64_t max_m_padded_ = 0;
  int sms_ = -1;
  bool narrow_carveout_ = false;
};

}  // namespace

std::unique_ptr<bs::CutlassFp8BlockScaleGemmRunnerInterface> make_moe_gemm() {
  return std::make_unique<MoeGemm>();
}

TileScope::TileScope(int32_t gemm1, int32_t gemm2, int64_t hidden, int64_t intermediate) {
  if (gemm1 < 0 || gemm1 >= kTileCount || gemm2 < 0 || gemm2 >= kTileCount) {
    throw std::invalid_argument("block-scale GEMM: tile index out of range");
  }
  choice = Choice{gemm1, gemm2, 2 * intermediate, hidden};
}

TileScope::~TileScope() { choice = Choice{}; }

}  // namespace fi::block_scale
