// cutlass_moe_runner.cu: the one explicit instantiation of FlashInfer's CUTLASS fused MoE
// runner that flashinfer-rs uses (bf16 activations, bf16 weights, bf16 output) and of the
// finalize kernel it calls. Its own unit because it parses upstream's whole
// cutlass_fused_moe_kernels.cuh; our C ABI (cutlass_moe.cu) sees only the class declaration.
#include "cutlass_fused_moe_kernels.cuh"

namespace tensorrt_llm::kernels::cutlass_kernels {
// Upstream's constructor creates a DeepSeek fp8 block-scale GEMM runner in every runner, which
// links fp8_blockscale_gemm.cu (477 s of a cold CI run's nvcc) into a build of bf16 weights:
// that runner serves fp8 weights only, and our C ABI passes
// use_deepseek_fp8_block_scale = false on every call. This specialisation, seen before the
// explicit instantiation below, leaves it null instead; every upstream use of it is behind
// use_deepseek_fp8_block_scale and TLLM_CHECKs that it is not null, so a call that asked for
// it would get upstream's error, never a null dereference.
template <>
CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>::CutlassMoeFCRunner() : blockscale_gemm_runner_{} {}

template class CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>;
INSTANTIATE_FINALIZE_MOE_ROUTING(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16);
}  // namespace tensorrt_llm::kernels::cutlass_kernels
