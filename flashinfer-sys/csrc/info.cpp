// info.cpp: build and device information, the ABI layout probe, and the architecture gate
// that every kernel entry point passes before it launches anything.
#include "info.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <string>

#include "status.h"

#ifndef FLASHINFER_RS_UPSTREAM_VERSION
#error "build.rs defines FLASHINFER_RS_UPSTREAM_VERSION"
#endif
#ifndef FLASHINFER_RS_BMM_ARTIFACT
#error "build.rs defines FLASHINFER_RS_BMM_ARTIFACT"
#endif
#ifndef FLASHINFER_RS_TARGETS
#error "build.rs defines FLASHINFER_RS_TARGETS"
#endif
#ifndef FLASHINFER_RS_CRATE_VERSION
#error "build.rs defines FLASHINFER_RS_CRATE_VERSION"
#endif
#ifndef FLASHINFER_RS_PATCHES
#error "build.rs defines FLASHINFER_RS_PATCHES"
#endif

namespace fi {
namespace {

// Blackwell data-centre chips: B200/GB200 (10.0) and B300/GB300 (10.3). Routing and the
// fused MoE's own kernels are built for the sm_100 family target (runs on both), and the
// pinned GEMM cubins cover both (sm100f and sm103a). Other 10.x or 12.x (consumer Blackwell)
// parts have none of these.
bool blackwell(int major, int minor) { return major == 10 && (minor == 0 || minor == 3); }

}  // namespace

bool routing_built_for(int major, int minor) {
#ifdef FLASHINFER_RS_SM90
  if (major == 9 && minor == 0) return true;
#endif
#ifdef FLASHINFER_RS_SM100
  if (blackwell(major, minor)) return true;
#endif
  (void)major;
  (void)minor;
  return false;
}

bool fused_built_for(int major, int minor) {
#ifdef FLASHINFER_RS_SM100
  if (blackwell(major, minor)) return true;
#endif
  (void)major;
  (void)minor;
  return false;
}

namespace {

std::string arch_list() {
  std::string s = FLASHINFER_RS_TARGETS;
  return s.empty() ? " (none)" : " " + s;
}

void query(fi_device_info* out) {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  int major = 0, minor = 0, sms = 0;
  check_cuda(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
             "cudaDeviceGetAttribute(major)");
  check_cuda(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
             "cudaDeviceGetAttribute(minor)");
  check_cuda(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev),
             "cudaDeviceGetAttribute(multiprocessors)");
  out->device = dev;
  out->sm_major = major;
  out->sm_minor = minor;
  out->sm_count = sms;
  out->routing_supported = routing_built_for(major, minor);
  out->fused_supported = fused_built_for(major, minor);
  out->cutlass_moe_supported = cutlass_moe_built_for(major, minor);
}

// Per-device verdicts, so the hot path pays one cudaGetDevice and an atomic load.
// 0 = unknown, 1 = supported, 2 = refused.
constexpr int kMaxDevices = 64;
std::atomic<int8_t> routing_ok[kMaxDevices];
std::atomic<int8_t> fused_ok[kMaxDevices];
std::atomic<int8_t> cutlass_moe_ok[kMaxDevices];

// FlashInfer 0.6.13's routing launchers keep the SM version and SM count of the device they
// first run on in function-local statics (`static int const smMajor` / `smCount` in
// trtllm_fused_moe_routing_{common,custom,deepseek}.cu) and size every later launch with
// them, on whatever device. So every device a process routes on must look the same to those
// statics: the first one we admit fixes (sm_major, sm_count); a device that differs is
// refused instead of getting launch shapes (cooperative grid sizes) meant for another GPU.
std::atomic<int64_t> first_device_shape{-1};

int64_t shape_key(const fi_device_info& d) {
  return (int64_t{d.sm_major} << 40) | (int64_t{d.sm_minor} << 32) | uint32_t(d.sm_count);
}

std::string describe(int64_t key) {
  return "sm_" + std::to_string(key >> 40) + std::to_string((key >> 32) & 0xff) + " with " +
         std::to_string(key & 0xffffffff) + " SMs";
}

void require_same_shape_as_first_device(const fi_device_info& info) {
  int64_t key = shape_key(info);
  int64_t first = -1;
  if (first_device_shape.compare_exchange_strong(first, key) || first == key) return;
  throw Failure(FI_STATUS_UNSUPPORTED_ARCH,
                "device " + std::to_string(info.device) + " (" + describe(key) +
                    ") differs from the first device this process routed on (" +
                    describe(first) +
                    "): FlashInfer 0.6.13 sizes routing launches from process-wide statics "
                    "of the first device; use one GPU model per process");
}

void require_arch(std::atomic<int8_t>* table, bool (*built_for)(int, int), const char* what) {
  int dev = 0;
  check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
  bool cached = dev >= 0 && dev < kMaxDevices;
  if (cached && table[dev].load(std::memory_order_relaxed) == 1) return;
  fi_device_info info{};
  query(&info);
  if (!built_for(info.sm_major, info.sm_minor)) {
    if (cached) table[dev].store(2, std::memory_order_relaxed);
    throw Failure(FI_STATUS_UNSUPPORTED_ARCH,
                  std::string(what) + " has no kernels for device " + std::to_string(dev) +
                      " (sm_" + std::to_string(info.sm_major) + std::to_string(info.sm_minor) +
                      "); this build has:" + arch_list());
  }
  require_same_shape_as_first_device(info);
  if (cached) table[dev].store(1, std::memory_order_relaxed);
}

}  // namespace

void require_routing_arch() { require_arch(routing_ok, routing_built_for, "routing"); }
void require_fused_arch() { require_arch(fused_ok, fused_built_for, "the fused MoE"); }
void require_cutlass_moe_arch() {
  require_arch(cutlass_moe_ok, cutlass_moe_built_for, "the CUTLASS fused MoE");
}

}  // namespace fi

extern "C" fi_status fi_get_build_info(fi_build_info* out) {
  return fi::guarded([&] {
    fi::require(out != nullptr, "out must not be NULL");
    out->abi_version = FI_ABI_VERSION;
    out->flashinfer_version = FLASHINFER_RS_UPSTREAM_VERSION;
    out->bmm_artifact = FLASHINFER_RS_BMM_ARTIFACT;
    out->kernels_built = 1;
#ifdef FLASHINFER_RS_SM90
    out->has_sm90 = 1;
#else
    out->has_sm90 = 0;
#endif
#ifdef FLASHINFER_RS_SM100
    out->has_sm100 = 1;
#else
    out->has_sm100 = 0;
#endif
    out->cuda_version = CUDART_VERSION;
    out->targets = FLASHINFER_RS_TARGETS;
    out->crate_version = FLASHINFER_RS_CRATE_VERSION;
    out->patches = FLASHINFER_RS_PATCHES;
    out->has_cutlass_moe = fi::cutlass_moe_built();
    out->has_cutlass_moe_fp8 = fi::cutlass_moe_fp8_built();
  });
}

extern "C" fi_status fi_get_device_info(fi_device_info* out) {
  return fi::guarded([&] {
    fi::require(out != nullptr, "out must not be NULL");
    fi::query(out);
  });
}

extern "C" fi_status fi_arch_gate(fi_device_info* device) {
  return fi::guarded([&] {
    fi::require(device != nullptr, "device must not be NULL");
    device->routing_supported = fi::routing_built_for(device->sm_major, device->sm_minor);
    device->fused_supported = fi::fused_built_for(device->sm_major, device->sm_minor);
    device->cutlass_moe_supported =
        fi::cutlass_moe_built_for(device->sm_major, device->sm_minor);
  });
}

extern "C" fi_status fi_check_device_shape(const fi_device_info* device) {
  return fi::guarded([&] {
    fi::require(device != nullptr, "device must not be NULL");
    fi::require_same_shape_as_first_device(*device);
  });
}
