/* flashinfer-rs compat header: FlashInfer 0.6.13's trtllm_fused_moe_kernel_launcher.cu
 * includes <nvrtc.h> but calls no NVRTC function; the registry's CUDA 13.0 compiler wheels
 * ship no NVRTC headers. Searched after the toolkit's includes (-idirafter). */
#ifndef FLASHINFER_RS_COMPAT_NVRTC_H
#define FLASHINFER_RS_COMPAT_NVRTC_H
#endif
