/* not_built.c: the C ABI of a build with no kernels (no `sm90`/`sm100` feature).
 *
 * Compiled by the host C compiler instead of the CUDA sources, so a crate that depends on
 * flashinfer-rs builds and documents without nvcc. Every entry point answers
 * FI_STATUS_KERNELS_NOT_BUILT; including flashinfer_rs.h makes the compiler check that each
 * definition still matches its declaration. */
#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"

#define FI_NOT_BUILT_MESSAGE                                                                   \
  "flashinfer-rs was built without kernels: enable the `sm90` and/or `sm100` feature of "      \
  "flashinfer-sys (for example `cargo build --features sm90`)"

const char* fi_last_error_message(void) { return FI_NOT_BUILT_MESSAGE; }
const char* fi_last_error_call(void) { return ""; }
int32_t fi_last_error_cuda_code(void) { return 0; }

fi_status fi_get_build_info(fi_build_info* out) {
  if (out == 0) return FI_STATUS_INVALID_ARGUMENT;
  out->abi_version = FI_ABI_VERSION;
  out->flashinfer_version = FLASHINFER_RS_UPSTREAM_VERSION;
  out->bmm_artifact = FLASHINFER_RS_BMM_ARTIFACT;
  out->kernels_built = 0;
  out->has_sm90 = 0;
  out->has_sm100 = 0;
  out->cuda_version = 0;
  out->targets = "";
  out->crate_version = FLASHINFER_RS_CRATE_VERSION;
  out->patches = "";
  out->has_cutlass_moe = 0;
  out->has_cutlass_moe_fp8 = 0;
  return FI_STATUS_OK;
}

fi_status fi_get_device_info(fi_device_info* out) {
  (void)out;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_arch_gate(fi_device_info* device) {
  (void)device;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_check_device_shape(const fi_device_info* device) {
  (void)device;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_routing_buffer_sizes_for(int32_t num_tokens, int32_t top_k, int32_t num_experts,
                                      int32_t tile_tokens_dim, fi_routing_buffer_sizes* out) {
  (void)num_tokens, (void)top_k, (void)num_experts, (void)tile_tokens_dim, (void)out;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_routing_run(const fi_routing_params* params, const void* logits, const void* bias,
                         const fi_routing_buffers* buffers, int16_t* replay, void* stream) {
  (void)params, (void)logits, (void)bias, (void)buffers, (void)replay, (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_noaux_tc_run(const fi_noaux_tc_params* params, const void* scores, const void* bias,
                          void* topk_values, int32_t* topk_indices, int16_t* replay,
                          void* stream) {
  (void)params, (void)scores, (void)bias, (void)topk_values, (void)topk_indices, (void)replay;
  (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_launch_empty_kernel(void* stream) {
  (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_topk_route(const fi_topk_params* params, const fi_topk_buffers* buffers,
                        void* stream) {
  (void)params, (void)buffers, (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_moe_valid_configs(const fi_moe_config_query* query, int64_t* pairs,
                               int32_t capacity, int32_t* count) {
  (void)query, (void)pairs, (void)capacity, (void)count;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_moe_run(const fi_moe_args* args, void* stream, fi_moe_outputs** unfinalized) {
  (void)args, (void)stream;
  if (unfinalized != 0) *unfinalized = 0;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

int32_t fi_moe_outputs_count(const fi_moe_outputs* outputs) {
  (void)outputs;
  return 0;
}

fi_status fi_moe_outputs_get(const fi_moe_outputs* outputs, int32_t index, fi_tensor* out) {
  (void)outputs, (void)index, (void)out;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

void fi_moe_outputs_free(fi_moe_outputs* outputs) { (void)outputs; }

fi_status fi_set_cubin_loader(fi_cubin_loader loader, void* user) {
  (void)loader, (void)user;
  return FI_STATUS_OK;
}

fi_status fi_cubin_probe(const char* path, const char* sha256, size_t* size) {
  (void)path, (void)sha256;
  if (size != 0) *size = 0;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_moe_dry_run_without_device(const fi_moe_args* args) {
  (void)args;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_cutlass_moe_create(const fi_cutlass_moe_params* params, fi_cutlass_moe** out) {
  (void)params;
  if (out != 0) *out = 0;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

void fi_cutlass_moe_destroy(fi_cutlass_moe* layer) { (void)layer; }

fi_status fi_cutlass_moe_workspace_size(const fi_cutlass_moe* layer, size_t* bytes) {
  (void)layer, (void)bytes;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_cutlass_moe_tactic_count(const fi_cutlass_moe* layer, int32_t* gemm1,
                                      int32_t* gemm2) {
  (void)layer, (void)gemm1, (void)gemm2;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_cutlass_moe_tactic_info(const fi_cutlass_moe* layer, int32_t gemm, int32_t index,
                                     fi_cutlass_moe_tactic* out) {
  (void)layer, (void)gemm, (void)index, (void)out;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_cutlass_moe_kernels_for(const fi_cutlass_moe* layer, int32_t num_tokens,
                                     fi_cutlass_moe_kernels* out) {
  (void)layer, (void)num_tokens, (void)out;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_cutlass_moe_run(fi_cutlass_moe* layer, const fi_cutlass_moe_buffers* buffers,
                             void* stream) {
  (void)layer, (void)buffers, (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_quantize_fp8_blocks(const void* weights, int64_t experts, int64_t rows, int64_t cols,
                                 void* codes, float* scales, int32_t* nonfinite, void* stream) {
  (void)weights, (void)experts, (void)rows, (void)cols, (void)codes, (void)scales,
      (void)nonfinite, (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}

fi_status fi_quantize_fp8_per_expert(const void* weights, int64_t experts, int64_t per_expert,
                                     void* codes, float* scales, int32_t* nonfinite,
                                     void* stream) {
  (void)weights, (void)experts, (void)per_expert, (void)codes, (void)scales, (void)nonfinite,
      (void)stream;
  return FI_STATUS_KERNELS_NOT_BUILT;
}
