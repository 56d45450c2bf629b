// cutlass_moe_runner.cu: the one explicit instantiation of FlashInfer's CUTLASS fused MoE
// runner that flashinfer-rs uses (bf16 activations, bf16 weights, bf16 output) and of the
// finalize kernel it calls. Its own unit because it parses upstream's whole
// cutlass_fused_moe_kernels.cuh; our C ABI (cutlass_moe.cu) sees only the class declaration.
#include "cutlass_fused_moe_kernels.cuh"

namespace tensorrt_llm::kernels::cutlass_kernels {
template class CutlassMoeFCRunner<__nv_bfloat16, __nv_bfloat16>;
INSTANTIATE_FINALIZE_MOE_ROUTING(__nv_bfloat16, __nv_bfloat16, __nv_bfloat16);
}  // namespace tensorrt_llm::kernels::cutlass_kernels
