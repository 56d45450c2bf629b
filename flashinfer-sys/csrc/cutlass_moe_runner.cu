// cutlass_moe_runner.cu: the explicit instantiations of FlashInfer's CUTLASS fused MoE runner
// that flashinfer-rs uses (bf16 activations, bf16 weights, bf16 output; with
// FLASHINFER_RS_MOE_FP8 also e4m3 activations and weights with bf16 output (per-tensor), and
// bf16 activations with e4m3 weights (DeepSeek's block scale)) and of the finalize kernel they
// call. One unit for both: upstream's cutlass_fused_moe_kernels.cuh
// defines non-template functions, so two units that include it do not link together (as
// upstream's one cutlass_fused_moe_instantiation.cu); our C ABI (cutlass_moe.cu) sees only the
// class declarations.
#include "cutlass_fused_moe_kernels.cuh"
#ifdef FLASHINFER_RS_MOE_FP8
#include "moe_block_scale.h"
#endif

namespace tensorrt_llm::kernels::cutlass_kernels {
// Upstream's constructor creates a DeepSeek fp8 block-scale GEMM runner in every runner, which
// links fp8_blockscale_gemm.cu (477 s of a cold CI run's nvcc) into a build of bf16 weights:
// that runner serves fp8 block-scaled weights only, and our C ABI passes
// use_deepseek_fp8_block_scale = false on every call. These specialisations, seen before the
// explicit instantiations below, leave it null instead; every upstream use of it is behind
// use_deepseek_fp8_block_scale and TLLM_CHECKs that it is not null, so a call that asked for
// it would get upstream's error, never a null dereference.
template <>
CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>::CutlassMoeFCRunner() : blockscale_gemm_runner_{} {}

template class CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>;

#ifdef FLASHINFER_RS_MOE_FP8
// fp8 per-tensor (feature sm90-moe-fp8): per-tensor scales, no block-scale runner either.
template <>
CutlassMoeFCRunner<__nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16>::CutlassMoeFCRunner()
    : blockscale_gemm_runner_{} {}

template class CutlassMoeFCRunner<__nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16>;

// fp8 block scale: the one runner upstream gives a block-scale GEMM, here ours
// (cutlass_moe_gemm_fp8_block.cu: upstream's kernel without upstream's 477-s unit).
template <>
CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3>::CutlassMoeFCRunner()
    : blockscale_gemm_runner_{fi::block_scale::make_moe_gemm()} {}

template class CutlassMoeFCRunner<__nv_bfloat16, __nv_fp8_e4m3>;
#endif

INSTANTIATE_FINALIZE_MOE_ROUTING(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16);
}  // namespace tensorrt_llm::kernels::cutlass_kernels
