// info.h: the architecture gate every kernel entry point passes before launching.
#pragma once

namespace fi {
// Throw fi::Failure(FI_STATUS_UNSUPPORTED_ARCH) unless this build has kernels for the calling
// thread's current device and it has the SM version and count of the first device admitted
// (upstream caches those in process-wide statics, see info.cpp). Cached per device: one
// cudaGetDevice and an atomic load when warm.
void require_routing_arch();
void require_fused_arch();
void require_cutlass_moe_arch();

// Whether this build has routing (fused MoE) kernels for compute capability major.minor.
bool routing_built_for(int major, int minor);
bool fused_built_for(int major, int minor);
// Defined by cutlass_moe.cu where the CUTLASS fused MoE is built (feature sm90-moe), else by
// cutlass_moe_absent.cpp: which of the two is linked is what the build has.
bool cutlass_moe_built();
bool cutlass_moe_fp8_built();
bool cutlass_moe_built_for(int major, int minor);
}  // namespace fi
