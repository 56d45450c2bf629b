/* scratch.h: how many bytes the fused MoE's scratch allocator takes for one upstream tensor.
 *
 * Upstream's launchers size their per-call tensors; our allocator (fused_moe.cu,
 * alloc_scratch) takes the memory. Two upstream fixes after 0.6.13 pad those tensors because
 * the shipped Blackwell kernels read past their logical end:
 *   - 8b6af1aaa (flashinfer#4237): the routed batched-GEMM cubins read one int32 past the end
 *     of the route map (permuted_idx_to_token_idx): an illegal-address fault whenever the
 *     allocation ends at a mapped-region boundary;
 *   - 2fb785c19 (flashinfer#4319): TMA may use BASE_128KB address generation, so at least
 *     128 KiB must be mapped from each GEMM operand's base (the bf16 launcher's intermediates
 *     are 16-32 KiB at small decode batches: illegal address in UTMALDG).
 * Rather than patch each allocation site, the allocator applies both rules to every scratch
 * tensor: at least FI_SCRATCH_MIN_BYTES, and at least FI_SCRATCH_TAIL_BYTES past the end,
 * rounded up to FI_SCRATCH_ALIGN. The logical shape upstream sees is unchanged.
 */
#ifndef FLASHINFER_RS_SCRATCH_H
#define FLASHINFER_RS_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

#define FI_SCRATCH_MIN_BYTES ((size_t)128 * 1024)
#define FI_SCRATCH_TAIL_BYTES ((size_t)16)
#define FI_SCRATCH_ALIGN ((size_t)256)

/* Bytes to allocate for a tensor of `requested` bytes; 0 stays 0 (no memory, NULL data).
 * SIZE_MAX when the padded size does not fit a size_t (the allocation then fails). */
static inline size_t fi_scratch_padded_bytes(size_t requested) {
  if (requested == 0) return 0;
  if (requested > SIZE_MAX - FI_SCRATCH_TAIL_BYTES - FI_SCRATCH_ALIGN) return SIZE_MAX;
  size_t padded = (requested + FI_SCRATCH_TAIL_BYTES + FI_SCRATCH_ALIGN - 1) / FI_SCRATCH_ALIGN *
                  FI_SCRATCH_ALIGN;
  return padded < FI_SCRATCH_MIN_BYTES ? FI_SCRATCH_MIN_BYTES : padded;
}

#endif /* FLASHINFER_RS_SCRATCH_H */
