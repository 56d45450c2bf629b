// cutlass_moe_absent.cpp: the CUTLASS fused MoE's C ABI in a kernel build without it (no
// `sm90-moe` feature): every entry point answers FI_STATUS_KERNELS_NOT_BUILT, saying which
// feature builds it. cutlass_moe.cu replaces this unit when the feature is on.
#include "flashinfer_rs.h"
#include "info.h"
#include "status.h"

namespace fi {
bool cutlass_moe_built() { return false; }
bool cutlass_moe_fp8_built() { return false; }
bool cutlass_moe_built_for(int, int) { return false; }
}  // namespace fi

namespace {
fi_status absent() {
  return fi::fail(FI_STATUS_KERNELS_NOT_BUILT,
                  "the CUTLASS fused MoE is not in this build: enable the `sm90-moe` feature "
                  "of flashinfer-rs (Hopper, sm_90)");
}
}  // namespace

extern "C" fi_status fi_cutlass_moe_create(const fi_cutlass_moe_params*, fi_cutlass_moe** out) {
  if (out != nullptr) *out = nullptr;
  return absent();
}
extern "C" void fi_cutlass_moe_destroy(fi_cutlass_moe*) {}
extern "C" fi_status fi_cutlass_moe_workspace_size(const fi_cutlass_moe*, size_t*) {
  return absent();
}
extern "C" fi_status fi_cutlass_moe_tactic_count(const fi_cutlass_moe*, int32_t*, int32_t*) {
  return absent();
}
extern "C" fi_status fi_cutlass_moe_tactic_info(const fi_cutlass_moe*, int32_t, int32_t,
                                                fi_cutlass_moe_tactic*) {
  return absent();
}
extern "C" fi_status fi_cutlass_moe_kernels_for(const fi_cutlass_moe*, int32_t,
                                                fi_cutlass_moe_kernels*) {
  return absent();
}
extern "C" fi_status fi_cutlass_moe_run(fi_cutlass_moe*, const fi_cutlass_moe_buffers*, void*) {
  return absent();
}
