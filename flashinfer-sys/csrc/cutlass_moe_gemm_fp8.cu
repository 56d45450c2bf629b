// cutlass_moe_gemm_fp8.cu (feature sm90-moe-fp8): the one grouped-GEMM runner class the fp8
// per-tensor MoE runner uses (e4m3 x e4m3 -> bf16). Upstream's moe_gemm_kernels_fp8_fp8.cu
// instantiates four (half output, and the MXFPX variants) in one unit.
#include "moe_gemm/moe_gemm_template_dispatch.h"

namespace tensorrt_llm::kernels::cutlass_kernels {
template class MoeGemmRunner<__nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16>;
}  // namespace tensorrt_llm::kernels::cutlass_kernels
