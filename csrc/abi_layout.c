/* abi_layout.c: sizeof/alignof of every C ABI struct, as the C compiler lays them out.
 * Compiled in every build (with or without kernels) so the Rust layout test always runs. */
#include <stdalign.h>

#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"

#define FI_LAYOUT(field, type)            \
  out->field##_size = sizeof(type);       \
  out->field##_align = alignof(type)

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
  return FI_STATUS_OK;
}
