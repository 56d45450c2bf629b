/*
 * flashinfer_rs_testing.h: entry points of the C ABI that exist for tests, kept out of the
 * production header (flashinfer_rs.h). They are in every library (the layout and gate tests
 * run against a prebuilt one too), never launch anything, and follow the same rules: plain
 * structs in, fi_status out, nothing unwinds.
 */
#ifndef FLASHINFER_RS_TESTING_H
#define FLASHINFER_RS_TESTING_H

#include "flashinfer_rs.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Most tensors FI_MOE_TENSORS may list (the size of fi_abi_layout's offset table). */
#define FI_MOE_TENSORS_MAX 32

/** sizeof/alignof of every struct in flashinfer_rs.h, for the Rust layout test, and the
 * offset in fi_moe_args of every tensor FI_MOE_TENSORS lists, in its order (the Rust
 * `MoeTensor` enum generated from the same list must find the same fields). */
typedef struct fi_abi_layout {
  size_t routing_params_size, routing_params_align;
  size_t routing_buffers_size, routing_buffers_align;
  size_t routing_buffer_sizes_size, routing_buffer_sizes_align;
  size_t build_info_size, build_info_align;
  size_t device_info_size, device_info_align;
  size_t moe_config_query_size, moe_config_query_align;
  size_t tensor_size, tensor_align;
  size_t moe_args_size, moe_args_align;
  size_t noaux_tc_params_size, noaux_tc_params_align;
  size_t topk_params_size, topk_params_align;
  size_t topk_buffers_size, topk_buffers_align;
  size_t cutlass_moe_params_size, cutlass_moe_params_align;
  size_t cutlass_moe_buffers_size, cutlass_moe_buffers_align;
  size_t cutlass_moe_tactic_size, cutlass_moe_tactic_align;
  size_t cutlass_moe_kernels_size, cutlass_moe_kernels_align;
  size_t moe_tensor_count;
  size_t moe_tensor_offsets[FI_MOE_TENSORS_MAX];
} fi_abi_layout;

fi_status fi_get_abi_layout(fi_abi_layout* out);

/** For tests of the device-shape guard, which every routing and fused call runs after its
 * architecture check: upstream sizes routing launches from the SM version and SM count of the
 * first device it ran on (process-wide statics), so the first device admitted fixes
 * (sm_major, sm_minor, sm_count) for the process and a device that differs is refused with
 * FI_STATUS_UNSUPPORTED_ARCH naming both. This runs that guard on a described device (only
 * `device`, `sm_major`, `sm_minor` and `sm_count` are read) and, like a call, fixes the shape
 * if none is fixed yet: use it only in a process that does not route. */
fi_status fi_check_device_shape(const fi_device_info* device);

/** For tests of the architecture gate, which every routing and fused call runs first: the
 * verdicts for a device of compute capability `sm_major`.`sm_minor` (read from `device`),
 * written to its `routing_supported` and `fused_supported`. Pure: no device is queried. */
fi_status fi_arch_gate(fi_device_info* device);

/** For tests of this ABI on machines without a GPU: passes `args` to upstream's entry point
 * exactly as fi_moe_run does, skipping only the architecture gate, so upstream unpacks every
 * argument and runs its host-side checks until its first device query fails (its
 * "requires SM 10.x" check). Refused with FI_STATUS_INVALID_ARGUMENT wherever a CUDA device is
 * present, so it can never launch anything. Device pointers may be any non-NULL values. */
fi_status fi_moe_dry_run_without_device(const fi_moe_args* args);

/** Bytes the scratch allocator of fi_moe_run takes for an upstream tensor of `requested`
 * bytes: at least 128 KiB and at least 16 bytes past its end (the shipped Blackwell kernels
 * read past some tensors; see csrc/scratch.h). Pure arithmetic, in every build. */
size_t fi_scratch_bytes(size_t requested);

/** For benchmarks: launches one empty kernel (one warp) on `stream`, the launch floor a
 * routing call is measured against. */
fi_status fi_launch_empty_kernel(void* stream);

#ifdef __cplusplus
}
#endif

#endif /* FLASHINFER_RS_TESTING_H */
