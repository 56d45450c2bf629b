// fused_moe.cu: the fused MoE entry points of the C ABI (sm_100a builds only).
//
// Upstream's launchers (csrc/trtllm_fused_moe_kernel_launcher.cu) are exported as tvm-ffi
// "safe call" symbols (`__tvm_ffi_<name>`). We call them through tvm::ffi::Function, which
// unpacks our arguments exactly as upstream's Python binding does and rethrows upstream's
// errors as tvm::ffi::Error, which fi::guarded turns into FI_STATUS_UPSTREAM_ERROR.
// Without the `sm100` feature every entry point answers FI_STATUS_KERNELS_NOT_BUILT.
//
// Every entry point passes fi::require_fused_arch() before touching upstream: besides
// refusing non-Blackwell devices with FI_STATUS_UNSUPPORTED_ARCH, it runs the device queries
// that upstream's batched-GEMM runner repeats through `getSMVersion()` in
// flashinfer/trtllm/common.h, whose CUDACHECK *exits the process* on failure. Ours turn the
// same failure into FI_STATUS_CUDA_ERROR first.
//
// What upstream's Python binding provides around a call, this file provides in C++:
//   - the stream (tvm-ffi's thread-local "current stream", set for the call and restored);
//   - a tensor allocator for upstream's per-call scratch (stream-ordered, see MoeAllocator);
//   - the cubin loader (upstream calls a process-wide callback; ours forwards to the loader
//     registered with fi_set_cubin_loader, which flashinfer-rs implements with sha256 checks).
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <atomic>
#include <list>
#include <mutex>
#include <string>
#include <vector>

#include "flashinfer_rs.h"
#include "flashinfer_rs_testing.h"
#include "info.h"
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

extern "C" {
int __tvm_ffi_trtllm_get_valid_moe_configs(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_bf16_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_fp8_per_tensor_scale_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_fp8_block_scale_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_fp4_block_scale_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
// Upstream's cubin hook (flashinfer/cubin_loader.h, compiled into the launcher TU).
void FlashInferSetCubinCallback(void (*callback)(const char* path, const char* sha256));
void FlashInferSetCurrentCubin(const char* binary, int size);
}

// What upstream's batched-GEMM runner calls for a cubin (same header, same TU).
namespace flashinfer::trtllm_cubin_loader {
std::string getCubin(const std::string& name, const std::string& sha256);
}

namespace {

using tvm::ffi::AnyView;

// A borrowed view of an exported upstream function (nothing to free).
tvm::ffi::Function upstream(TVMFFISafeCallType symbol) {
  return tvm::ffi::Function::FromExternC(nullptr, symbol, nullptr);
}

// ---- cubins -------------------------------------------------------------------------------

// Set by the trampoline when the loader fails, so the status survives upstream's safe-call
// wrapper (which turns our exception into a generic tvm::ffi::Error).
thread_local std::string t_cubin_error;

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

// Points upstream's process-wide hook at our trampoline, once.
void install_cubin_hook() {
  static std::once_flag once;
  std::call_once(once, [] { FlashInferSetCubinCallback(cubin_trampoline); });
}

// Runs `body`, reporting a failed cubin load (recorded by the trampoline, whatever exception
// reached us) as FI_STATUS_CUBIN_ERROR.
template <typename F>
auto with_cubin_errors(F&& body) -> decltype(body()) {
  t_cubin_error.clear();
  try {
    return body();
  } catch (...) {
    if (!t_cubin_error.empty()) throw fi::Failure(FI_STATUS_CUBIN_ERROR, t_cubin_error);
    throw;
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

// Sets tvm-ffi's thread-local stream and allocator for one call and restores both after.
class CallEnv {
 public:
  CallEnv(int device, void* stream) : device_(device) {
    fi::require(device >= 0, "device must be a CUDA ordinal (>= 0)");
    fi::require(TVMFFIEnvSetStream(kDLCUDA, device, stream, &old_stream_) == 0,
                "tvm-ffi refused the stream");
    if (TVMFFIEnvSetDLPackManagedTensorAllocator(alloc_scratch, 0, &old_alloc_) != 0) {
      TVMFFIEnvSetStream(kDLCUDA, device_, old_stream_, nullptr);
      throw fi::Failure(FI_STATUS_INTERNAL_ERROR, "tvm-ffi refused the tensor allocator");
    }
  }
  ~CallEnv() {
    TVMFFIEnvSetDLPackManagedTensorAllocator(old_alloc_, 0, nullptr);
    TVMFFIEnvSetStream(kDLCUDA, device_, old_stream_, nullptr);
  }
  CallEnv(const CallEnv&) = delete;
  CallEnv& operator=(const CallEnv&) = delete;

 private:
  int device_;
  TVMFFIStreamHandle old_stream_ = nullptr;
  DLPackManagedTensorAllocator old_alloc_ = nullptr;
};

// Upstream keeps its loaded cubins in an unlocked process-wide map
// (globalTrtllmGenBatchedGemmModuleCache in trtllm_batched_gemm_runner.cu) and our scratch
// pools are process-wide too: the host part of fused calls runs one at a time.
std::mutex g_call_mutex;

// ---- tensors --------------------------------------------------------------------------------

// fi_dtype <-> DLPack, one table for both directions.
struct DtypePair {
  int32_t fi;
  DLDataType dl;
};
constexpr DtypePair kDtypes[] = {
    {FI_DTYPE_F32, {kDLFloat, 32, 1}},  {FI_DTYPE_BF16, {kDLBfloat, 16, 1}},
    {FI_DTYPE_F16, {kDLFloat, 16, 1}},  {FI_DTYPE_E4M3, {kDLFloat8_e4m3fn, 8, 1}},
    {FI_DTYPE_U8, {kDLUInt, 8, 1}},     {FI_DTYPE_I32, {kDLInt, 32, 1}},
    {FI_DTYPE_I16, {kDLInt, 16, 1}},
};

DLDataType dl_dtype(int32_t dtype) {
  for (const auto& p : kDtypes) {
    if (p.fi == dtype) return p.dl;
  }
  throw fi::Failure(FI_STATUS_INVALID_ARGUMENT, "unknown fi_dtype " + std::to_string(dtype));
}

int32_t fi_dtype_of(DLDataType dt) {
  for (const auto& p : kDtypes) {
    if (p.dl.code == dt.code && p.dl.bits == dt.bits && p.dl.lanes == dt.lanes) return p.fi;
  }
  throw fi::Failure(FI_STATUS_INTERNAL_ERROR, "upstream returned an unexpected dtype");
}

// DLTensors of one call, pointing into the caller's fi_tensor structs (which outlive the call).
class Tensors {
 public:
  explicit Tensors(int device) : device_(device) {}

  // An upstream Optional<TensorView>: the tensor, or None when `t.data` is NULL.
  AnyView opt(const fi_tensor& t, const char* name) {
    if (t.data == nullptr) return AnyView(nullptr);
    return AnyView(make(t, name));
  }
  // A required TensorView.
  AnyView req(const fi_tensor& t, const char* name) {
    fi::require(t.data != nullptr, (std::string(name) + " must be given").c_str());
    return AnyView(make(t, name));
  }
  // A required TensorView the caller may leave out: upstream's "empty placeholder" (0 rows).
  AnyView placeholder_or(const fi_tensor& t, const char* name) {
    if (t.data != nullptr) return AnyView(make(t, name));
    slots_.emplace_back();
    DLTensor& d = slots_.back().dl;
    slots_.back().shape[0] = 0;
    d.data = nullptr;
    d.device = {kDLCUDA, device_};
    d.ndim = 1;
    d.dtype = {kDLInt, 32, 1};
    d.shape = slots_.back().shape;
    d.strides = nullptr;
    d.byte_offset = 0;
    return AnyView(&d);
  }

 private:
  struct Slot {
    DLTensor dl{};
    int64_t shape[4] = {0, 0, 0, 0};
  };
  DLTensor* make(const fi_tensor& t, const char* name) {
    fi::require(t.ndim >= 1 && t.ndim <= 4, (std::string(name) + ": ndim must be 1..4").c_str());
    slots_.emplace_back();
    Slot& s = slots_.back();
    for (int i = 0; i < t.ndim; ++i) {
      fi::require(t.shape[i] >= 0, (std::string(name) + ": negative dimension").c_str());
      s.shape[i] = t.shape[i];
    }
    s.dl.data = t.data;
    s.dl.device = {kDLCUDA, device_};
    s.dl.ndim = t.ndim;
    s.dl.dtype = dl_dtype(t.dtype);
    s.dl.shape = s.shape;
    s.dl.strides = nullptr;  // compact row-major
    s.dl.byte_offset = 0;
    return &s.dl;
  }
  int device_;
  // Stable addresses: the AnyViews point into the slots.
  std::list<Slot> slots_;
};

AnyView opt_i64(int64_t v) { return v < 0 ? AnyView(nullptr) : AnyView(v); }

bool given(const fi_tensor& t) { return t.data != nullptr; }

// Refuses tensors the op does not take, so nothing the caller passes is silently ignored.
void refuse(const fi_tensor& t, const char* name, const char* op) {
  if (given(t)) {
    throw fi::Failure(FI_STATUS_INVALID_ARGUMENT,
                      std::string(name) + " is not an argument of " + op);
  }
}

}  // namespace

struct fi_moe_outputs {
  tvm::ffi::Array<tvm::ffi::Tensor> tensors;
};

namespace {

tvm::ffi::Array<tvm::ffi::Tensor> call_upstream(const fi_moe_args& a) {
  Tensors t(a.device);
  tvm::ffi::Array<int64_t> tactic{a.tile_n, a.config};
  AnyView scale = a.has_routed_scaling_factor ? AnyView(a.routed_scaling_factor) : AnyView(nullptr);
  bool shuffled = a.use_shuffled_weight != 0, finalize = a.do_finalize != 0;
  bool pdl = a.enable_pdl != 0, norm = a.norm_topk_prob != 0;
  int64_t method = a.routing_method, act = a.activation, layout = a.weight_layout;
  std::vector<AnyView> args;
  TVMFFISafeCallType fn = nullptr;
  switch (a.op) {
    case FI_MOE_BF16: {
      const char* op = "trtllm_bf16_moe";
      for (auto [x, n] : {std::pair{&a.hidden_states_scale, "hidden_states_scale"},
                          {&a.gemm1_weights_scale, "gemm1_weights_scale"},
                          {&a.gemm2_weights_scale, "gemm2_weights_scale"},
                          {&a.gemm2_bias, "gemm2_bias"},
                          {&a.output1_scales_scalar, "output1_scales_scalar"},
                          {&a.output1_scales_gate_scalar, "output1_scales_gate_scalar"},
                          {&a.output2_scales_scalar, "output2_scales_scalar"},
                          {&a.per_token_scales, "per_token_scales"}})
        refuse(*x, n, op);
      fn = __tvm_ffi_trtllm_bf16_moe;
      args = {t.opt(a.routing_logits, "routing_logits"), t.opt(a.routing_bias, "routing_bias"),
              t.placeholder_or(a.expert_indices, "expert_indices"),
              t.placeholder_or(a.expert_weights, "expert_weights"),
              t.req(a.hidden_states, "hidden_states"), t.req(a.gemm1_weights, "gemm1_weights"),
              t.req(a.gemm2_weights, "gemm2_weights"), t.opt(a.gemm1_bias, "gemm1_bias"),
              t.opt(a.gemm1_alpha, "gemm1_alpha"), t.opt(a.gemm1_beta, "gemm1_beta"),
              t.opt(a.gemm1_clamp_limit, "gemm1_clamp_limit"), t.req(a.output, "output"),
              AnyView(a.num_experts), AnyView(a.top_k), opt_i64(a.n_group),
              opt_i64(a.topk_group), AnyView(a.intermediate_size),
              AnyView(a.local_expert_offset), AnyView(a.local_num_experts), scale,
              AnyView(method), AnyView(shuffled), AnyView(layout), AnyView(finalize),
              AnyView(pdl), AnyView(tactic), AnyView(act), AnyView(norm),
              t.opt(a.routing_replay_out, "routing_replay_out")};
      break;
    }
    case FI_MOE_FP8_PER_TENSOR: {
      const char* op = "trtllm_fp8_per_tensor_scale_moe";
      for (auto [x, n] : {std::pair{&a.expert_indices, "expert_indices"},
                          {&a.expert_weights, "expert_weights"},
                          {&a.hidden_states_scale, "hidden_states_scale"},
                          {&a.gemm1_weights_scale, "gemm1_weights_scale"},
                          {&a.gemm1_bias, "gemm1_bias"}, {&a.gemm1_alpha, "gemm1_alpha"},
                          {&a.gemm1_beta, "gemm1_beta"}, {&a.gemm1_clamp_limit, "gemm1_clamp_limit"},
                          {&a.gemm2_weights_scale, "gemm2_weights_scale"},
                          {&a.gemm2_bias, "gemm2_bias"}, {&a.per_token_scales, "per_token_scales"}})
        refuse(*x, n, op);
      fn = __tvm_ffi_trtllm_fp8_per_tensor_scale_moe;
      args = {t.req(a.routing_logits, "routing_logits"), t.opt(a.routing_bias, "routing_bias"),
              t.req(a.hidden_states, "hidden_states"), t.req(a.gemm1_weights, "gemm1_weights"),
              t.req(a.output1_scales_scalar, "output1_scales_scalar"),
              t.req(a.output1_scales_gate_scalar, "output1_scales_gate_scalar"),
              t.req(a.gemm2_weights, "gemm2_weights"),
              t.req(a.output2_scales_scalar, "output2_scales_scalar"), t.req(a.output, "output"),
              AnyView(a.num_experts), AnyView(a.top_k), opt_i64(a.n_group),
              opt_i64(a.topk_group), AnyView(a.intermediate_size),
              AnyView(a.local_expert_offset), AnyView(a.local_num_experts), scale,
              AnyView(a.use_routing_scales_on_input != 0), AnyView(method), AnyView(finalize),
              AnyView(pdl), AnyView(tactic), AnyView(act), AnyView(norm),
              t.opt(a.routing_replay_out, "routing_replay_out")};
      break;
    }
    case FI_MOE_FP8_BLOCK_SCALE: {
      const char* op = "trtllm_fp8_block_scale_moe";
      for (auto [x, n] : {std::pair{&a.gemm2_bias, "gemm2_bias"},
                          {&a.output1_scales_scalar, "output1_scales_scalar"},
                          {&a.output1_scales_gate_scalar, "output1_scales_gate_scalar"},
                          {&a.output2_scales_scalar, "output2_scales_scalar"},
                          {&a.per_token_scales, "per_token_scales"}})
        refuse(*x, n, op);
      fn = __tvm_ffi_trtllm_fp8_block_scale_moe;
      args = {t.opt(a.routing_logits, "routing_logits"),
              t.placeholder_or(a.expert_indices, "expert_indices"),
              t.placeholder_or(a.expert_weights, "expert_weights"),
              t.opt(a.routing_bias, "routing_bias"), t.req(a.hidden_states, "hidden_states"),
              t.req(a.hidden_states_scale, "hidden_states_scale"),
              t.req(a.gemm1_weights, "gemm1_weights"),
              t.req(a.gemm1_weights_scale, "gemm1_weights_scale"),
              t.opt(a.gemm1_bias, "gemm1_bias"), t.opt(a.gemm1_alpha, "gemm1_alpha"),
              t.opt(a.gemm1_beta, "gemm1_beta"), t.opt(a.gemm1_clamp_limit, "gemm1_clamp_limit"),
              t.req(a.gemm2_weights, "gemm2_weights"),
              t.req(a.gemm2_weights_scale, "gemm2_weights_scale"), t.req(a.output, "output"),
              AnyView(a.num_experts), AnyView(a.top_k), opt_i64(a.n_group),
              opt_i64(a.topk_group), AnyView(a.intermediate_size),
              AnyView(a.local_expert_offset), AnyView(a.local_num_experts), scale,
              AnyView(method), AnyView(shuffled), AnyView(layout), AnyView(finalize),
              AnyView(pdl), AnyView(tactic), AnyView(int64_t{a.fp8_quantization}), AnyView(act),
              AnyView(norm), t.opt(a.routing_replay_out, "routing_replay_out")};
      break;
    }
    case FI_MOE_FP4_BLOCK_SCALE: {
      fn = __tvm_ffi_trtllm_fp4_block_scale_moe;
      args = {AnyView(int64_t{a.routing_input_mode}), t.opt(a.routing_logits, "routing_logits"),
              t.req(a.expert_indices, "expert_indices (topk_ids)"),
              t.req(a.expert_weights, "expert_weights (topk_weights)"),
              t.opt(a.routing_bias, "routing_bias"), t.req(a.hidden_states, "hidden_states"),
              t.opt(a.hidden_states_scale, "hidden_states_scale"),
              t.req(a.gemm1_weights, "gemm1_weights"),
              t.req(a.gemm1_weights_scale, "gemm1_weights_scale"),
              t.opt(a.gemm1_bias, "gemm1_bias"), t.opt(a.gemm1_alpha, "gemm1_alpha"),
              t.opt(a.gemm1_beta, "gemm1_beta"), t.opt(a.gemm1_clamp_limit, "gemm1_clamp_limit"),
              t.req(a.gemm2_weights, "gemm2_weights"),
              t.req(a.gemm2_weights_scale, "gemm2_weights_scale"),
              t.opt(a.gemm2_bias, "gemm2_bias"),
              t.opt(a.output1_scales_scalar, "output1_scales_scalar"),
              t.opt(a.output1_scales_gate_scalar, "output1_scales_gate_scalar"),
              t.opt(a.output2_scales_scalar, "output2_scales_scalar"),
              t.opt(a.per_token_scales, "per_token_scales"), AnyView(a.num_experts),
              AnyView(a.top_k), opt_i64(a.n_group), opt_i64(a.topk_group),
              AnyView(a.intermediate_size), AnyView(a.local_expert_offset),
              AnyView(a.local_num_experts), scale, AnyView(method), AnyView(finalize),
              AnyView(pdl), AnyView(act), t.req(a.output, "output"), AnyView(tactic),
              AnyView(norm), t.opt(a.routing_replay_out, "routing_replay_out")};
      break;
    }
    default:
      throw fi::Failure(FI_STATUS_INVALID_ARGUMENT, "unknown fi_moe_op " + std::to_string(a.op));
  }
  tvm::ffi::Any result;
  upstream(fn).CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  return result.cast<tvm::ffi::Array<tvm::ffi::Tensor>>();
}

}  // namespace

extern "C" fi_status fi_moe_run(const fi_moe_args* args, void* stream,
                                fi_moe_outputs** unfinalized) {
  return fi::guarded([&] {
    fi::require(args != nullptr && unfinalized != nullptr, "args and unfinalized must not be NULL");
    *unfinalized = nullptr;
    fi::require_fused_arch();
    std::lock_guard<std::mutex> lock(g_call_mutex);
    install_cubin_hook();
    CallEnv env(args->device, stream);
    auto out = with_cubin_errors([&] { return call_upstream(*args); });
    if (args->do_finalize == 0) *unfinalized = new fi_moe_outputs{std::move(out)};
  });
}

extern "C" int32_t fi_moe_outputs_count(const fi_moe_outputs* outputs) {
  return outputs == nullptr ? 0 : static_cast<int32_t>(outputs->tensors.size());
}

extern "C" fi_status fi_moe_dry_run_without_device(const fi_moe_args* args) {
  return fi::guarded([&] {
    fi::require(args != nullptr, "args must not be NULL");
    int devices = 0;
    bool has_device = cudaGetDeviceCount(&devices) == cudaSuccess && devices > 0;
    (void)cudaGetLastError();
    if (has_device) {
      throw fi::Failure(FI_STATUS_INVALID_ARGUMENT,
                        "fi_moe_dry_run_without_device runs only where no CUDA device is "
                        "present (upstream would launch)");
    }
    std::lock_guard<std::mutex> lock(g_call_mutex);
    CallEnv env(args->device, nullptr);
    call_upstream(*args);
    throw fi::Failure(FI_STATUS_INTERNAL_ERROR, "upstream returned without a CUDA device");
  });
}

extern "C" fi_status fi_cubin_probe(const char* path, const char* sha256, size_t* size) {
  return fi::guarded([&] {
    fi::require(path != nullptr && sha256 != nullptr && size != nullptr,
                "path, sha256 and size must not be NULL");
    std::lock_guard<std::mutex> lock(g_call_mutex);
    install_cubin_hook();
    *size = with_cubin_errors([&] { return flashinfer::trtllm_cubin_loader::getCubin(path, sha256); })
                .size();
  });
}

extern "C" fi_status fi_moe_outputs_get(const fi_moe_outputs* outputs, int32_t index,
                                        fi_tensor* out) {
  return fi::guarded([&] {
    fi::require(outputs != nullptr && out != nullptr, "outputs and out must not be NULL");
    fi::require(index >= 0 && index < static_cast<int32_t>(outputs->tensors.size()),
                "index out of range");
    *out = fi_tensor{};
    const tvm::ffi::Tensor& t = outputs->tensors[index];
    if (!t.defined()) return;
    const DLTensor* d = t.GetDLTensorPtr();
    fi::require(d->ndim >= 1 && d->ndim <= 4, "upstream returned a tensor of unexpected rank");
    out->data = static_cast<char*>(d->data) + d->byte_offset;
    out->ndim = d->ndim;
    for (int i = 0; i < d->ndim; ++i) out->shape[i] = d->shape[i];
    out->dtype = fi_dtype_of(d->dtype);
  });
}

extern "C" void fi_moe_outputs_free(fi_moe_outputs* outputs) {
  // Dropping the last references runs free_scratch: cudaFreeAsync on the run's stream.
  try {
    delete outputs;
  } catch (...) {
    // Destructors here do not throw; nothing may unwind across the C ABI regardless.
  }
}

extern "C" fi_status fi_moe_valid_configs(const fi_moe_config_query* q, int64_t* pairs,
                                          int32_t capacity, int32_t* count) {
  return fi::guarded([&] {
    fi::require(q != nullptr && count != nullptr, "query and count must not be NULL");
    fi::require(capacity >= 0 && (capacity == 0 || pairs != nullptr),
                "pairs must hold capacity entries");
    fi::require_fused_arch();
    auto configs = upstream(__tvm_ffi_trtllm_get_valid_moe_configs)(
                       q->dtype_act, q->dtype_weights, q->fp8_quantization, q->top_k,
                       q->hidden_size, q->intermediate_size, q->num_local_experts, q->activation,
                       q->use_shuffled_weight != 0, int64_t{q->weight_layout},
                       q->use_per_token_scaling != 0, q->num_tokens, q->has_gemm1_bias_delta != 0)
                       .cast<tvm::ffi::Array<tvm::ffi::Array<int64_t>>>();
    *count = static_cast<int32_t>(configs.size());
    int32_t n = std::min<int32_t>(capacity, *count);
    for (int32_t i = 0; i < n; ++i) {
      auto pair = configs[i];
      fi::require(pair.size() == 2, "upstream returned a config that is not a (tile_n, config) pair");
      pairs[2 * i] = pair[0];
      pairs[2 * i + 1] = pair[1];
    }
  });
}

#else  // no sm100 feature: the fused MoE is not in this build

namespace {
fi_status not_built() {
  return fi::fail(FI_STATUS_KERNELS_NOT_BUILT,
                  "the fused MoE is built only with the `sm100` feature of flashinfer-sys");
}
}  // namespace

extern "C" fi_status fi_moe_valid_configs(const fi_moe_config_query*, int64_t*, int32_t,
                                          int32_t*) {
  return not_built();
}

extern "C" fi_status fi_moe_run(const fi_moe_args*, void*, fi_moe_outputs** unfinalized) {
  if (unfinalized != nullptr) *unfinalized = nullptr;
  return not_built();
}

extern "C" int32_t fi_moe_outputs_count(const fi_moe_outputs*) { return 0; }

extern "C" fi_status fi_moe_outputs_get(const fi_moe_outputs*, int32_t, fi_tensor*) {
  return not_built();
}

extern "C" void fi_moe_outputs_free(fi_moe_outputs*) {}

extern "C" fi_status fi_cubin_probe(const char*, const char*, size_t* size) {
  if (size != nullptr) *size = 0;
  return not_built();
}

extern "C" fi_status fi_moe_dry_run_without_device(const fi_moe_args*) { return not_built(); }

#endif
