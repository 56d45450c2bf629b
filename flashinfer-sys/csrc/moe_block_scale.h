// moe_block_scale.h: the grouped GEMM of the fp8 block-scale Hopper MoE layer
// (cutlass_moe_gemm_fp8_block.cu), which the block-scale runner, CutlassMoeFCRunner<bf16, fp8>
// (cutlass_moe_runner.cu), calls for both of its GEMMs.
#pragma once

#include <memory>

#include "fp8_blockscale_gemm/fp8_blockscale_gemm.h"

namespace fi::block_scale {

// bf16 activations quantised per token and 128 columns (inside the call) x e4m3 weights with
// one f32 scale per 128x128 block (DeepSeek-V3's `weight_scale_inv`), bf16 output: upstream's
// moeGemm without DeepGEMM's JIT (the 128x64x128 WGMMA kernel that upstream falls back to when
// NVRTC is absent). Every other entry of the interface (dense and strided GEMMs, stand-alone
// quantisation) throws: the MoE runner never calls them.
std::unique_ptr<tensorrt_llm::kernels::fp8_blockscale_gemm::CutlassFp8BlockScaleGemmRunnerInterface>
make_moe_gemm();

}  // namespace fi::block_scale
