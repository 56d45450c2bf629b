// moe_env.cu: the environment of a fused MoE call (see moe_env.h): the cubin hook, the
// stream-ordered scratch allocator and the tvm-ffi call environment. fi_set_cubin_loader is
// here too, in every build (it only stores the loader).
#include "moe_env.h"

#include <algorithm>
#include <atomic>
#include <memory>
#include <stdexcept>
#include <vector>

#include "flashinfer_rs.h"
#include "scratch.h"
#include "status.h"

namespace {

// The registered loader; read by the trampoline, written by fi_set_cubin_loader.
std::atomic<fi_cubin_loader> g_cubin_loader{nullptr};
std::atomic<void*> g_cubin_loader_user{nullptr};

}  // namespace

extern "C" fi_status fi_set_cubin_loader(fi_cubin_loader loader, void* user) {
  // Store the user pointer first, so a trampoline that sees the new loader sees its user.
  g_cubin_loader_user.store(user);
  g_cubin_loader.store(loader);
  return FI_STATUS_OK;
}

#ifdef FLASHINFER_RS_SM100

#include <tvm/ffi/container/tensor.h>

extern "C" {
// Upstream's cubin hook (flashinfer/cubin_loader.h, compiled into the launcher TU).
void FlashInferSetCubinCallback(void (*callback)(const char* path, const char* sha256));
void FlashInferSetCurrentCubin(const char* binary, int size);
}

namespace fi::moe {

std::mutex g_call_mutex;
thread_local std::string t_cubin_error;

namespace {

// ---- cubins -------------------------------------------------------------------------------

void cubin_sink(void*, const uint8_t* data, size_t len) {
  FlashInferSetCurrentCubin(reinterpret_cast<const char*>(data), static_cast<int>(len));
}

// Upstream's callback signature returns nothing and upstream passes the bytes it then gets to
// cuModuleLoadData without checking the result; so a failure must not return: it throws, and
// the exception unwinds through upstream's C++ (all of it compiled with exceptions) to the
// safe-call wrapper of the entry point.
void cubin_trampoline(const char* path, const char* sha256) {
  fi_cubin_loader loader = g_cubin_loader.load();
  if (loader == nullptr) {
    t_cubin_error = std::string("no cubin loader is registered (needed for ") + path + ")";
    throw std::runtime_error(t_cubin_error);
  }
  FlashInferSetCurrentCubin("", 0);
  char err[512] = {0};
  if (loader(g_cubin_loader_user.load(), path, sha256, cubin_sink, nullptr, err, sizeof err) != 0) {
    err[sizeof err - 1] = 0;
    t_cubin_error = err[0] ? std::string(err) : std::string("cubin loader failed for ") + path;
    throw std::runtime_error(t_cubin_error);
  }
}

// ---- scratch --------------------------------------------------------------------------------

// One memory pool per device for eager calls: a release threshold of "never" keeps freed
// blocks for the next call, so steady-state calls allocate without touching the driver's
// physical allocator. Created on first use; lives for the process (guarded by g_call_mutex).
cudaMemPool_t pool_for(int device) {
  static std::vector<cudaMemPool_t> pools;
  if (pools.size() <= static_cast<size_t>(device)) pools.resize(device + 1, nullptr);
  if (pools[device] == nullptr) {
    cudaMemPoolProps props = {};
    props.allocType = cudaMemAllocationTypePinned;
    props.handleTypes = cudaMemHandleTypeNone;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    cudaMemPool_t pool;
    fi::check_cuda(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
    uint64_t keep = UINT64_MAX;
    fi::check_cuda(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
                   "cudaMemPoolSetAttribute(ReleaseThreshold)");
    pools[device] = pool;
  }
  return pools[device];
}

struct ScratchTensor {
  DLManagedTensorVersioned managed{};
  std::vector<int64_t> shape;
  void* ptr = nullptr;
  cudaStream_t stream = nullptr;
};

void free_scratch(DLManagedTensorVersioned* self) {
  auto* t = static_cast<ScratchTensor*>(self->manager_ctx);
  if (t->ptr != nullptr) cudaFreeAsync(t->ptr, t->stream);  // stream-ordered; cannot fail usefully
  delete t;
}

// The DLPack allocator tvm-ffi's TVMFFIEnvTensorAlloc calls for upstream's alloc_tensor().
// The stream is the call's (tvm-ffi's current stream, set by fi_moe_run).
int alloc_scratch(DLTensor* proto, DLManagedTensorVersioned** out, void* error_ctx,
                  void (*set_error)(void*, const char*, const char*)) {
  try {
    auto t = std::make_unique<ScratchTensor>();
    t->shape.assign(proto->shape, proto->shape + proto->ndim);
    size_t bytes = (static_cast<size_t>(proto->dtype.bits) * proto->dtype.lanes + 7) / 8;
    for (int64_t d : t->shape) bytes *= static_cast<size_t>(std::max<int64_t>(d, 0));
    int device = proto->device.device_id;
    t->stream = static_cast<cudaStream_t>(TVMFFIEnvGetStream(kDLCUDA, device));
    // Padded past what upstream asked for: its shipped kernels read beyond some tensors' ends
    // (upstream 8b6af1aaa, 2fb785c19; see scratch.h).
    bytes = fi_scratch_padded_bytes(bytes);
    if (bytes > 0) {
      cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
      fi::check_cuda(cudaStreamIsCapturing(t->stream, &capture), "cudaStreamIsCapturing");
      if (capture == cudaStreamCaptureStatusActive) {
        // Recorded by the graph as an allocation node (graph-owned memory).
        fi::check_cuda(cudaMallocAsync(&t->ptr, bytes, t->stream), "cudaMallocAsync");
      } else {
        fi::check_cuda(cudaMallocFromPoolAsync(&t->ptr, bytes, pool_for(device), t->stream),
                       "cudaMallocFromPoolAsync");
      }
      // Index tensors start as -1: the route map's tile padding is never written by the
      // 0.6.13 routing kernels and is read by the grouped GEMMs' TMA gathers (upstream's
      // initRoutingTilePadding, 0.7.1, issue #5349). Every int32 scratch tensor is filled, as
      // the allocator does not know which one is the route map; upstream allocates them
      // uninitialised, so no kernel relies on their contents, and what the kernels write
      // overwrites the fill (stream-ordered, before the kernels).
      if (proto->dtype.code == kDLInt && proto->dtype.bits == 32) {
        fi::check_cuda(cudaMemsetAsync(t->ptr, 0xff, bytes, t->stream),
                       "cudaMemsetAsync(int32 scratch)");
      }
    }
    DLManagedTensorVersioned& m = t->managed;
    m.version = {DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION};
    m.flags = 0;
    m.deleter = free_scratch;
    m.dl_tensor.data = t->ptr;
    m.dl_tensor.device = proto->device;
    m.dl_tensor.ndim = proto->ndim;
    m.dl_tensor.dtype = proto->dtype;
    m.dl_tensor.shape = t->shape.data();
    m.dl_tensor.strides = nullptr;
    m.dl_tensor.byte_offset = 0;
    m.manager_ctx = t.get();
    *out = &t.release()->managed;
    return 0;
  } catch (const std::exception& e) {
    set_error(error_ctx, "RuntimeError", e.what());
    return -1;
  }
}

}  // namespace

void install_cubin_hook() {
  static std::once_flag once;
  std::call_once(once, [] { FlashInferSetCubinCallback(cubin_trampoline); });
}

CallEnv::CallEnv(int device, void* stream) : device_(device) {
  fi::require(device >= 0, "device must be a CUDA ordinal (>= 0)");
  fi::require(TVMFFIEnvSetStream(kDLCUDA, device, stream, &old_stream_) == 0,
              "tvm-ffi refused the stream");
  if (TVMFFIEnvSetDLPackManagedTensorAllocator(alloc_scratch, 0, &old_alloc_) != 0) {
    TVMFFIEnvSetStream(kDLCUDA, device_, old_stream_, nullptr);
    throw fi::Failure(FI_STATUS_INTERNAL_ERROR, "tvm-ffi refused the tensor allocator");
  }
}

CallEnv::~CallEnv() {
  TVMFFIEnvSetDLPackManagedTensorAllocator(old_alloc_, 0, nullptr);
  TVMFFIEnvSetStream(kDLCUDA, device_, old_stream_, nullptr);
}

}  // namespace fi::moe

#endif  // FLASHINFER_RS_SM100
