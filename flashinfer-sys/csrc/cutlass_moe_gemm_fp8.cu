// cutlass_moe_gemm_fp8.cu (feature sm90-moe-fp8): the grouped-GEMM runner classes the fp8 MoE
// runners hold: e4m3 x e4m3 -> bf16 (per-tensor), and bf16 x e4m3 -> bf16, which the
// block-scale runner holds but never launches (its GEMMs are cutlass_moe_gemm_fp8_block.cu's;
// with patch 0007 the class has no kernel of its own on Hopper). Upstream's
// moe_gemm_kernels_fp8_fp8.cu instantiates four classes in one unit.
#include "moe_gemm/moe_gemm_template_dispatch.h"

namespace tensorrt_llm::kernels::cutlass_kernels {
template class MoeGemmRunner<__nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16>;
template class MoeGemmRunner<__nv_bfloat16, __nv_fp8_e4m3, __nv_bfloat16>;
}  // namespace tensorrt_llm::kernels::cutlass_kernels
