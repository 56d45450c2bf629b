// moe_block_scale.h: the grouped GEMM of the fp8 block-scale Hopper MoE layer
// (cutlass_moe_gemm_fp8_block.cu), which the block-scale runner, CutlassMoeFCRunner<bf16, fp8>
// (cutlass_moe_runner.cu), calls for both of its GEMMs.
#pragma once

#include <cstdint>
#include <iterator>
#include <memory>

#include "fp8_blockscale_gemm/fp8_blockscale_gemm.h"

namespace fi::block_scale {

// bf16 activations quantised per token and 128 columns (inside the call) x e4m3 weights with
// one f32 scale per 128x128 block (DeepSeek-V3's `weight_scale_inv`), bf16 output: upstream's
// moeGemm without DeepGEMM's JIT (the WGMMA kernel that upstream falls back to when NVRTC is
// absent). Every other entry of the interface (dense and strided GEMMs, stand-alone
// quantisation) throws: the MoE runner never calls them.
std::unique_ptr<tensorrt_llm::kernels::fp8_blockscale_gemm::CutlassFp8BlockScaleGemmRunnerInterface>
make_moe_gemm();

// The GEMM's output tiles (rows over the tokens, columns over the weights' rows), the layer's
// block-scale tactics by index (fi_cutlass_moe_tactic_info):
//   0  128x64, 8 stages, one CTA per SM: upstream's, for experts with many rows;
//   1  64x64, 6 stages (~100 KB of shared memory), two CTAs per SM: half the activation rows
//      loaded for the few an expert has at small batch, and one CTA's pipeline fill and
//      epilogue overlapped with another's streaming.
struct Tile {
  int32_t rows, cols;
};
inline constexpr Tile kTiles[] = {{128, 64}, {64, 64}};
inline constexpr int32_t kTileCount = int32_t(std::size(kTiles));
inline constexpr int32_t kWideTile = 0, kNarrowTile = 1;

// The tiles of GEMM 1 and GEMM 2 (indices into kTiles) for the block-scale GEMMs that run on
// this thread while the object lives: upstream's moeGemm has no parameter for it, so the layer
// (cutlass_moe.cu) opens one around its runMoe call, under the layer's mutex. GEMM 1 is told
// from GEMM 2 by its shape (N = 2 x intermediate, K = hidden; GEMM 2's N = hidden, K =
// intermediate). Outside any, both take tile 0.
class TileScope {
 public:
  TileScope(int32_t gemm1, int32_t gemm2, int64_t hidden, int64_t intermediate);
  ~TileScope();
  TileScope(const TileScope&) = delete;
  TileScope& operator=(const TileScope&) = delete;
};

}  // namespace fi::block_scale
