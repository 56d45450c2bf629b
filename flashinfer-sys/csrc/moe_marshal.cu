// moe_marshal.cu: one fi_moe_args into the positional arguments of upstream's four fused MoE
// entry points (csrc/trtllm_fused_moe_kernel_launcher.cu, exported as tvm-ffi "safe call"
// symbols `__tvm_ffi_<name>`), and the call. We call them through tvm::ffi::Function, which
// unpacks our arguments exactly as upstream's Python binding does and rethrows upstream's
// errors as tvm::ffi::Error (fi::guarded turns it into FI_STATUS_UPSTREAM_ERROR).
//
// Tensors are named once, by FI_MOE_TENSORS (flashinfer_rs.h): each op's argument list takes
// them by that name, and a tensor the caller set that the op's list did not take is refused,
// so nothing passed is silently ignored. sm_100 builds only.
#include "moe_marshal.h"

#ifdef FLASHINFER_RS_SM100

#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/tensor.h>

#include <cstddef>
#include <list>
#include <string>
#include <utility>
#include <vector>

#include "moe_env.h"
#include "status.h"

extern "C" {
int __tvm_ffi_trtllm_bf16_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_fp8_per_tensor_scale_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_fp8_block_scale_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
int __tvm_ffi_trtllm_fp4_block_scale_moe(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
}

namespace fi::moe {
namespace {

using tvm::ffi::AnyView;

// ---- the tensors of fi_moe_args, from FI_MOE_TENSORS -------------------------------------

enum class T : int {
#define FI_TENSOR_ENUM(name) name,
  FI_MOE_TENSORS(FI_TENSOR_ENUM)
#undef FI_TENSOR_ENUM
      count
};

struct TensorField {
  const char* name;
  fi_tensor fi_moe_args::*field;
};

constexpr TensorField kTensors[] = {
#define FI_TENSOR_FIELD(name) {#name, &fi_moe_args::name},
    FI_MOE_TENSORS(FI_TENSOR_FIELD)
#undef FI_TENSOR_FIELD
};
constexpr int kTensorCount = static_cast<int>(T::count);

// That the list names every tensor field of fi_moe_args, in order, is asserted once, in
// abi_layout.c (compiled in every build).

const char* tensor_name(T t) { return kTensors[static_cast<int>(t)].name; }

}  // namespace

// fi_dtype <-> DLPack, one table for both directions.
namespace {
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
}  // namespace

int32_t fi_dtype_of(DLDataType dt) {
  for (const auto& p : kDtypes) {
    if (p.dl.code == dt.code && p.dl.bits == dt.bits && p.dl.lanes == dt.lanes) return p.fi;
  }
  throw fi::Failure(FI_STATUS_INTERNAL_ERROR, "upstream returned an unexpected dtype");
}

namespace {

// DLTensors of one call, pointing into the caller's fi_tensor structs (which outlive the
// call), and which of them the op's argument list took.
class Tensors {
 public:
  explicit Tensors(const fi_moe_args& a) : a_(a) {}

  // An upstream Optional<TensorView>: the tensor, or None when it is not given.
  AnyView opt(T t) {
    const fi_tensor& x = take(t);
    if (x.data == nullptr) return AnyView(nullptr);
    return AnyView(make(x, tensor_name(t)));
  }
  // A required TensorView; `label` names it in the error (upstream's own name, when the
  // op calls it something else).
  AnyView req(T t, const char* label = nullptr) {
    const fi_tensor& x = take(t);
    std::string name = label != nullptr ? label : tensor_name(t);
    fi::require(x.data != nullptr, (name + " must be given").c_str());
    return AnyView(make(x, name.c_str()));
  }
  // A required TensorView the caller may leave out: upstream's "empty placeholder" (0 rows).
  AnyView placeholder_or(T t) {
    const fi_tensor& x = take(t);
    if (x.data != nullptr) return AnyView(make(x, tensor_name(t)));
    slots_.emplace_back();
    DLTensor& d = slots_.back().dl;
    slots_.back().shape[0] = 0;
    d.data = nullptr;
    d.device = {kDLCUDA, a_.device};
    d.ndim = 1;
    d.dtype = {kDLInt, 32, 1};
    d.shape = slots_.back().shape;
    d.strides = nullptr;
    d.byte_offset = 0;
    return AnyView(&d);
  }

  // Refuses every tensor the caller set that `op`'s argument list did not take.
  void refuse_untaken(const char* op) const {
    for (int i = 0; i < kTensorCount; ++i) {
      if (!taken_[i] && (a_.*kTensors[i].field).data != nullptr) {
        throw fi::Failure(FI_STATUS_INVALID_ARGUMENT,
                          std::string(kTensors[i].name) + " is not an argument of " + op);
      }
    }
  }

 private:
  struct Slot {
    DLTensor dl{};
    int64_t shape[4] = {0, 0, 0, 0};
  };
  const fi_tensor& take(T t) {
    taken_[static_cast<int>(t)] = true;
    return a_.*kTensors[static_cast<int>(t)].field;
  }
  DLTensor* make(const fi_tensor& t, const std::string& name) {
    fi::require(t.ndim >= 1 && t.ndim <= 4, (name + ": ndim must be 1..4").c_str());
    slots_.emplace_back();
    Slot& s = slots_.back();
    for (int i = 0; i < t.ndim; ++i) {
      fi::require(t.shape[i] >= 0, (name + ": negative dimension").c_str());
      s.shape[i] = t.shape[i];
    }
    s.dl.data = t.data;
    s.dl.device = {kDLCUDA, a_.device};
    s.dl.ndim = t.ndim;
    s.dl.dtype = dl_dtype(t.dtype);
    s.dl.shape = s.shape;
    s.dl.strides = nullptr;  // compact row-major
    s.dl.byte_offset = 0;
    return &s.dl;
  }
  const fi_moe_args& a_;
  bool taken_[kTensorCount] = {};
  // Stable addresses: the AnyViews point into the slots.
  std::list<Slot> slots_;
};

AnyView opt_i64(int64_t v) { return v < 0 ? AnyView(nullptr) : AnyView(v); }

// The scalar arguments the four ops share, as upstream takes them.
struct Scalars {
  explicit Scalars(const fi_moe_args& a)
      : tactic{a.tile_n, a.config},
        scale(a.has_routed_scaling_factor ? AnyView(a.routed_scaling_factor) : AnyView(nullptr)),
        shuffled(a.use_shuffled_weight != 0),
        finalize(a.do_finalize != 0),
        pdl(a.enable_pdl != 0),
        norm(a.norm_topk_prob != 0),
        method(a.routing_method),
        act(a.activation),
        layout(a.weight_layout) {}
  tvm::ffi::Array<int64_t> tactic;
  AnyView scale;
  bool shuffled, finalize, pdl, norm;
  int64_t method, act, layout;
};

// Each op's positional arguments, in upstream's order.
std::vector<AnyView> bf16_args(const fi_moe_args& a, Tensors& t, const Scalars& s) {
  return {t.opt(T::routing_logits), t.opt(T::routing_bias),
          t.placeholder_or(T::expert_indices), t.placeholder_or(T::expert_weights),
          t.req(T::hidden_states), t.req(T::gemm1_weights), t.req(T::gemm2_weights),
          t.opt(T::gemm1_bias), t.opt(T::gemm1_alpha), t.opt(T::gemm1_beta),
          t.opt(T::gemm1_clamp_limit), t.req(T::output), AnyView(a.num_experts),
          AnyView(a.top_k), opt_i64(a.n_group), opt_i64(a.topk_group),
          AnyView(a.intermediate_size), AnyView(a.local_expert_offset),
          AnyView(a.local_num_experts), s.scale, AnyView(s.method), AnyView(s.shuffled),
          AnyView(s.layout), AnyView(s.finalize), AnyView(s.pdl), AnyView(s.tactic),
          AnyView(s.act), AnyView(s.norm), t.opt(T::routing_replay_out)};
}

std::vector<AnyView> fp8_per_tensor_args(const fi_moe_args& a, Tensors& t, const Scalars& s) {
  return {t.req(T::routing_logits), t.opt(T::routing_bias), t.req(T::hidden_states),
          t.req(T::gemm1_weights), t.req(T::output1_scales_scalar),
          t.req(T::output1_scales_gate_scalar), t.req(T::gemm2_weights),
          t.req(T::output2_scales_scalar), t.req(T::output), AnyView(a.num_experts),
          AnyView(a.top_k), opt_i64(a.n_group), opt_i64(a.topk_group),
          AnyView(a.intermediate_size), AnyView(a.local_expert_offset),
          AnyView(a.local_num_experts), s.scale, AnyView(a.use_routing_scales_on_input != 0),
          AnyView(s.method), AnyView(s.finalize), AnyView(s.pdl), AnyView(s.tactic),
          AnyView(s.act), AnyView(s.norm), t.opt(T::routing_replay_out)};
}

std::vector<AnyView> fp8_block_scale_args(const fi_moe_args& a, Tensors& t, const Scalars& s) {
  return {t.opt(T::routing_logits), t.placeholder_or(T::expert_indices),
          t.placeholder_or(T::expert_weights), t.opt(T::routing_bias),
          t.req(T::hidden_states), t.req(T::hidden_states_scale), t.req(T::gemm1_weights),
          t.req(T::gemm1_weights_scale), t.opt(T::gemm1_bias), t.opt(T::gemm1_alpha),
          t.opt(T::gemm1_beta), t.opt(T::gemm1_clamp_limit), t.req(T::gemm2_weights),
          t.req(T::gemm2_weights_scale), t.req(T::output), AnyView(a.num_experts),
          AnyView(a.top_k), opt_i64(a.n_group), opt_i64(a.topk_group),
          AnyView(a.intermediate_size), AnyView(a.local_expert_offset),
          AnyView(a.local_num_experts), s.scale, AnyView(s.method), AnyView(s.shuffled),
          AnyView(s.layout), AnyView(s.finalize), AnyView(s.pdl), AnyView(s.tactic),
          AnyView(int64_t{a.fp8_quantization}), AnyView(s.act), AnyView(s.norm),
          t.opt(T::routing_replay_out)};
}

std::vector<AnyView> fp4_block_scale_args(const fi_moe_args& a, Tensors& t, const Scalars& s) {
  return {AnyView(int64_t{a.routing_input_mode}), t.opt(T::routing_logits),
          t.req(T::expert_indices, "expert_indices (topk_ids)"),
          t.req(T::expert_weights, "expert_weights (topk_weights)"), t.opt(T::routing_bias),
          t.req(T::hidden_states), t.opt(T::hidden_states_scale), t.req(T::gemm1_weights),
          t.req(T::gemm1_weights_scale), t.opt(T::gemm1_bias), t.opt(T::gemm1_alpha),
          t.opt(T::gemm1_beta), t.opt(T::gemm1_clamp_limit), t.req(T::gemm2_weights),
          t.req(T::gemm2_weights_scale), t.opt(T::gemm2_bias),
          t.opt(T::output1_scales_scalar), t.opt(T::output1_scales_gate_scalar),
          t.opt(T::output2_scales_scalar), t.opt(T::per_token_scales),
          AnyView(a.num_experts), AnyView(a.top_k), opt_i64(a.n_group),
          opt_i64(a.topk_group), AnyView(a.intermediate_size),
          AnyView(a.local_expert_offset), AnyView(a.local_num_experts), s.scale,
          AnyView(s.method), AnyView(s.finalize), AnyView(s.pdl), AnyView(s.act),
          t.req(T::output), AnyView(s.tactic), AnyView(s.norm), t.opt(T::routing_replay_out)};
}

// Which upstream entry point an op calls, under which name, with which argument list.
struct OpEntry {
  int32_t op;
  const char* name;
  TVMFFISafeCallType symbol;
  std::vector<AnyView> (*args)(const fi_moe_args&, Tensors&, const Scalars&);
};

constexpr OpEntry kOps[] = {
    {FI_MOE_BF16, "trtllm_bf16_moe", __tvm_ffi_trtllm_bf16_moe, bf16_args},
    {FI_MOE_FP8_PER_TENSOR, "trtllm_fp8_per_tensor_scale_moe",
     __tvm_ffi_trtllm_fp8_per_tensor_scale_moe, fp8_per_tensor_args},
    {FI_MOE_FP8_BLOCK_SCALE, "trtllm_fp8_block_scale_moe", __tvm_ffi_trtllm_fp8_block_scale_moe,
     fp8_block_scale_args},
    {FI_MOE_FP4_BLOCK_SCALE, "trtllm_fp4_block_scale_moe", __tvm_ffi_trtllm_fp4_block_scale_moe,
     fp4_block_scale_args},
};

}  // namespace

tvm::ffi::Array<tvm::ffi::Tensor> call_upstream(const fi_moe_args& a) {
  const OpEntry* entry = nullptr;
  for (const auto& e : kOps) {
    if (e.op == a.op) entry = &e;
  }
  if (entry == nullptr) {
    throw fi::Failure(FI_STATUS_INVALID_ARGUMENT, "unknown fi_moe_op " + std::to_string(a.op));
  }
  Tensors t(a);
  Scalars s(a);
  std::vector<AnyView> args = entry->args(a, t, s);
  t.refuse_untaken(entry->name);
  tvm::ffi::Any result;
  upstream(entry->symbol).CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  return result.cast<tvm::ffi::Array<tvm::ffi::Tensor>>();
}

}  // namespace fi::moe

#endif  // FLASHINFER_RS_SM100
