/* abi_layout.c: sizeof/alignof of every C ABI struct, as the C compiler lays them out.
 * Compiled in every build (with or without kernels) so the Rust layout test always runs. */
#include <stdalign.h>
#include <stddef.h>

#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"

#define FI_LAYOUT(field, type)            \
  out->field##_size = sizeof(type);       \
  out->field##_align = alignof(type)

#define FI_COUNT_TENSOR(name) +1
enum { FI_MOE_TENSOR_COUNT = 0 FI_MOE_TENSORS(FI_COUNT_TENSOR) };
#undef FI_COUNT_TENSOR
_Static_assert(FI_MOE_TENSOR_COUNT <= FI_MOE_TENSORS_MAX, "raise FI_MOE_TENSORS_MAX");
/* The list names every tensor field, in order: from the first listed to the last, the fields
 * are exactly FI_MOE_TENSOR_COUNT fi_tensors. */
_Static_assert(offsetof(fi_moe_args, routing_replay_out) - offsetof(fi_moe_args, routing_logits) ==
                   (FI_MOE_TENSOR_COUNT - 1) * sizeof(fi_tensor),
               "FI_MOE_TENSORS must list every fi_tensor field of fi_moe_args");

fi_status fi_get_abi_layout(fi_abi_layout* out) {
  if (out == 0) return FI_STATUS_INVALID_ARGUMENT;
  FI_LAYOUT(routing_params, fi_routing_params);
  FI_LAYOUT(routing_buffers, fi_routing_buffers);
  FI_LAYOUT(routing_buffer_sizes, fi_routing_buffer_sizes);
  FI_LAYOUT(build_info, fi_build_info);
  FI_LAYOUT(device_info, fi_device_info);
  FI_LAYOUT(moe_config_query, fi_moe_config_query);
  FI_LAYOUT(tensor, fi_tensor);
  FI_LAYOUT(moe_args, fi_moe_args);
  FI_LAYOUT(noaux_tc_params, fi_noaux_tc_params);
  FI_LAYOUT(topk_params, fi_topk_params);
  FI_LAYOUT(topk_buffers, fi_topk_buffers);
  FI_LAYOUT(cutlass_moe_params, fi_cutlass_moe_params);
  FI_LAYOUT(cutlass_moe_buffers, fi_cutlass_moe_buffers);
  FI_LAYOUT(cutlass_moe_tactic, fi_cutlass_moe_tactic);
  FI_LAYOUT(cutlass_moe_kernels, fi_cutlass_moe_kernels);
  out->moe_tensor_count = 0;
#define FI_TENSOR_OFFSET(name) \
  out->moe_tensor_offsets[out->moe_tensor_count++] = offsetof(fi_moe_args, name);
  FI_MOE_TENSORS(FI_TENSOR_OFFSET)
#undef FI_TENSOR_OFFSET
  return FI_STATUS_OK;
}
