//! The four typed fused MoE calls. Each describes its arguments by size, has [`plan`] check
//! every rule and produce the tensor shapes, checks the CUDA contexts, and only then crosses
//! the C ABI (`fi_moe_run`), which gates the architecture before touching upstream.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{
    CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceSlice, SyncOnDrop,
};
use flashinfer_sys as sys;
use half::{bf16, f16};
use sys::fi_dtype::{self, Type as Dtype};

use super::cubin;
use super::elements::{E2m1x2, E4m3, Ue8m0};
use super::plan::{plan, Desc, Fp4Act, Fp4W, Given, MoeOptions, MoeShape, Op, RoutingSrc, Spec};
use crate::context::same_context;
use crate::error::{Error, Result};
use crate::ffi::{check, device_info};
use crate::replay::ReplayView;
use crate::routing::route::device_ptr as logits_ptr;
use crate::routing::{Bias, Logits, RoutingConfig, RoutingMethod};

/// Where a fused call's routing comes from.
#[derive(Debug)]
pub enum MoeRoutingInput<'a> {
    /// Route inside the call from logits `[num_tokens, num_experts]` (and the method's bias).
    Logits {
        /// Router logits, f32 or bf16.
        logits: Logits<'a>,
        /// Per-expert bias: required by DeepSeekV3 and MiniMax2, refused by the others.
        bias: Option<Bias<'a>>,
    },
    /// Routing done elsewhere: `[num_tokens, top_k]` int32, each `(expert_id << 16) |
    /// bf16_weight_bits` (bf16 and fp8 block-scale calls only; no replay: the ids are yours).
    Packed(CudaView<'a, i32>),
}

/// A fused call's routing: the model's config and this call's input.
#[derive(Debug)]
pub struct MoeRouting<'a> {
    /// Method, experts, top-k and expert-parallel range (its `tile_tokens_dim` and `use_pdl`
    /// are the routing-only call's: the fused call takes its tile from the tactic and PDL from
    /// [`MoeOptions::use_pdl`]).
    pub config: RoutingConfig,
    /// Logits or precomputed ids.
    pub input: MoeRoutingInput<'a>,
}

/// SwiGLU's optional per-expert parameters, each `[local_num_experts]` f32: the activation
/// becomes `x2 * sigmoid(alpha * x2) * (x1 + beta)` with `x1` clamped to `±limit` and `x2`
/// to `<= limit` (gpt-oss).
#[derive(Debug, Default)]
pub struct SwigluParams<'a> {
    /// Scale inside the sigmoid.
    pub alpha: Option<CudaView<'a, f32>>,
    /// Offset of the linear half.
    pub beta: Option<CudaView<'a, f32>>,
    /// Clamp limit.
    pub clamp_limit: Option<CudaView<'a, f32>>,
}

/// Arguments of [`trtllm_bf16_moe`]: bf16 activations and weights, weights in BlockMajorK
/// layout (see [`super::prepare`]).
#[derive(Debug)]
pub struct Bf16Moe<'a> {
    /// `[num_tokens, hidden_size]`.
    pub hidden_states: CudaView<'a, bf16>,
    /// `[local_experts, hidden/64, M1, 64]` (M1 = 2I for gated activations, else I).
    pub gemm1_weights: CudaView<'a, bf16>,
    /// `[local_experts, I/64, hidden, 64]`.
    pub gemm2_weights: CudaView<'a, bf16>,
    /// LoRA delta added to GEMM1's output, `[num_tokens, top_k, 2I]`.
    pub gemm1_lora_delta: Option<CudaView<'a, bf16>>,
    /// SwiGLU parameters.
    pub swiglu: SwigluParams<'a>,
}

/// Activations of the fp8 per-tensor call.
#[derive(Debug)]
pub enum Fp8Activations<'a> {
    /// fp8 e4m3, already scaled by the calibrated input scale.
    E4m3(CudaView<'a, E4m3>),
    /// bf16.
    Bf16(CudaView<'a, bf16>),
    /// f16.
    F16(CudaView<'a, f16>),
}

/// Arguments of [`trtllm_fp8_per_tensor_scale_moe`] (Llama 4 style): e4m3 weights with one
/// scale per expert folded into the three output scales.
#[derive(Debug)]
pub struct Fp8PerTensorMoe<'a> {
    /// `[num_tokens, hidden_size]`.
    pub hidden_states: Fp8Activations<'a>,
    /// `[local_experts, M1, hidden]`, shuffled.
    pub gemm1_weights: CudaView<'a, E4m3>,
    /// `[local_experts]`: dequantisation of GEMM1's linear half (and requantisation of its
    /// output for GEMM2).
    pub output1_scales_scalar: CudaView<'a, f32>,
    /// `[local_experts]`: dequantisation of GEMM1's gate half.
    pub output1_scales_gate_scalar: CudaView<'a, f32>,
    /// `[local_experts, hidden, I]`, shuffled.
    pub gemm2_weights: CudaView<'a, E4m3>,
    /// `[local_experts]`: dequantisation of GEMM2's output.
    pub output2_scales_scalar: CudaView<'a, f32>,
    /// Multiply the routing weight into GEMM1's input instead of the output (Llama 4, top-1).
    pub use_routing_scales_on_input: bool,
}

/// Block scales of the fp8 block-scale call.
#[derive(Debug)]
pub enum Fp8BlockScales<'a> {
    /// DeepSeek-V3: f32 scales of 128-element activation blocks and 128x128 weight blocks.
    DeepSeek {
        /// `[hidden/128, num_tokens]` (transposed).
        hidden_states_scale: CudaView<'a, f32>,
        /// `[local_experts, M1/128, hidden/128]`.
        gemm1_weights_scale: CudaView<'a, f32>,
        /// `[local_experts, hidden/128, I/128]`.
        gemm2_weights_scale: CudaView<'a, f32>,
    },
    /// MX fp8: ue8m0 scales of 32-element blocks in the 128x4 interleaved layout.
    Mx {
        /// `round_up(T, 128) * round_up(hidden/32, 4)` scales.
        hidden_states_scale: CudaView<'a, Ue8m0>,
        /// `local_experts * round_up(M1, 128) * round_up(hidden/32, 4)` scales.
        gemm1_weights_scale: CudaView<'a, Ue8m0>,
        /// `local_experts * round_up(hidden, 128) * round_up(I/32, 4)` scales.
        gemm2_weights_scale: CudaView<'a, Ue8m0>,
    },
}

/// Arguments of [`trtllm_fp8_block_scale_moe`].
#[derive(Debug)]
pub struct Fp8BlockScaleMoe<'a> {
    /// `[num_tokens, hidden_size]` e4m3.
    pub hidden_states: CudaView<'a, E4m3>,
    /// `[local_experts, M1, hidden]` (MajorK) or `[local_experts, hidden/128, M1, 128]`.
    pub gemm1_weights: CudaView<'a, E4m3>,
    /// `[local_experts, hidden, I]` (MajorK) or `[local_experts, I/128, hidden, 128]`.
    pub gemm2_weights: CudaView<'a, E4m3>,
    /// The block scales, which also select DeepSeek fp8 or MxFp8.
    pub scales: Fp8BlockScales<'a>,
    /// MxFp8 only: LoRA delta `[num_tokens, top_k, 2I]` bf16.
    pub gemm1_lora_delta: Option<CudaView<'a, bf16>>,
    /// MxFp8 only: SwiGLU parameters.
    pub swiglu: SwigluParams<'a>,
}

/// Activations of the fp4 block-scale call.
#[derive(Debug)]
pub enum Fp4Activations<'a> {
    /// bf16 `[T, hidden]` (mxfp4 weights).
    Bf16(CudaView<'a, bf16>),
    /// e4m3 `[T, hidden]` with per-tensor scales folded into the output scales (mxfp4 weights).
    E4m3(CudaView<'a, E4m3>),
    /// MX fp8: e4m3 `[T, hidden]` and ue8m0 scales of 32-element blocks (mxfp4 weights).
    MxE4m3 {
        /// Values.
        data: CudaView<'a, E4m3>,
        /// Block scales, 128x4-interleaved as upstream's `mxfp8_quantize` makes them
        /// ([`super::prepare::interleave_scales`] of `[T, hidden/32]`): at least
        /// `round_up(T, 128) * round_up(hidden/32, 4)` of them. FlashInfer 0.6.13 infers the
        /// block size from the count declared to it, `T * hidden / 32`.
        scale: CudaView<'a, Ue8m0>,
    },
    /// nvfp4: `[T, hidden/2]` packed e2m1 and e4m3 scales of 16-element blocks (nvfp4
    /// weights).
    Nvfp4 {
        /// Values, two per byte.
        data: CudaView<'a, E2m1x2>,
        /// Block scales, 128x4-interleaved as upstream's `fp4_quantize` makes them
        /// ([`super::prepare::interleave_scales`] of `[T, hidden/16]`): at least
        /// `round_up(T, 128) * round_up(hidden/16, 4)` of them. FlashInfer 0.6.13 infers the
        /// block size from the count declared to it, `T * hidden / 16`.
        scale: CudaView<'a, E4m3>,
    },
}

/// fp4 expert weights with their block scales (128x4 interleaved).
#[derive(Debug)]
pub enum Fp4Weights<'a> {
    /// nvfp4: e4m3 scales of 16-element blocks.
    Nvfp4 {
        /// `[local_experts, M1, hidden/2]`.
        gemm1: CudaView<'a, E2m1x2>,
        /// `local_experts * round_up(M1, 128) * round_up(hidden/16, 4)`.
        gemm1_scale: CudaView<'a, E4m3>,
        /// `[local_experts, hidden, I/2]`.
        gemm2: CudaView<'a, E2m1x2>,
        /// `local_experts * round_up(hidden, 128) * round_up(I/16, 4)`.
        gemm2_scale: CudaView<'a, E4m3>,
    },
    /// mxfp4: ue8m0 scales of 32-element blocks.
    Mxfp4 {
        /// `[local_experts, M1, hidden/2]`.
        gemm1: CudaView<'a, E2m1x2>,
        /// `local_experts * round_up(M1, 128) * round_up(hidden/32, 4)`.
        gemm1_scale: CudaView<'a, Ue8m0>,
        /// `[local_experts, hidden, I/2]`.
        gemm2: CudaView<'a, E2m1x2>,
        /// `local_experts * round_up(hidden, 128) * round_up(I/32, 4)`.
        gemm2_scale: CudaView<'a, Ue8m0>,
    },
}

/// Arguments of [`trtllm_fp4_block_scale_moe`].
#[derive(Debug)]
pub struct Fp4BlockScaleMoe<'a> {
    /// Activations (their kind must suit the weights: nvfp4 with nvfp4, the rest mxfp4).
    pub hidden_states: Fp4Activations<'a>,
    /// Weights and block scales.
    pub weights: Fp4Weights<'a>,
    /// `[local_experts, M1]` f32 bias of GEMM1.
    pub gemm1_bias: Option<CudaView<'a, f32>>,
    /// `[local_experts, hidden]` f32 bias of GEMM2.
    pub gemm2_bias: Option<CudaView<'a, f32>>,
    /// `[local_experts]` f32; required with nvfp4 or e4m3 activations.
    pub output1_scales_scalar: Option<CudaView<'a, f32>>,
    /// `[local_experts]` f32; required with nvfp4 or e4m3 activations.
    pub output1_scales_gate_scalar: Option<CudaView<'a, f32>>,
    /// `[local_experts]` f32; required with nvfp4 or e4m3 activations.
    pub output2_scales_scalar: Option<CudaView<'a, f32>>,
    /// `[num_tokens]` f32 per-token activation scales.
    pub per_token_scales: Option<CudaView<'a, f32>>,
    /// SwiGLU parameters.
    pub swiglu: SwigluParams<'a>,
    /// Written by the call: the routing result `[T, top_k]` int32, each packed as
    /// `(expert_id << 16) | bf16_weight_bits` (upstream's `topk_ids`).
    pub topk_ids: CudaViewMut<'a, i32>,
    /// Written by the call: their weights `[T, top_k]` bf16 (upstream's `topk_weights`).
    pub topk_weights: CudaViewMut<'a, bf16>,
}

/// Per-expert results of a call with `do_finalize = false`, owned by this handle and freed
/// (stream-ordered, on the call's stream) when it drops.
#[derive(Debug)]
pub struct Unfinalized {
    raw: *mut sys::fi_moe_outputs,
    tensors: Vec<RawTensor>,
    // Keeps the stream the memory is freed on alive.
    _stream: Arc<CudaStream>,
}

/// A device tensor upstream returned, described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// Device address (valid while the [`Unfinalized`] lives).
    pub ptr: CUdeviceptr,
    /// `fi_dtype` value of its elements.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<i64>,
}

impl Unfinalized {
    /// `[gemm2_output [padded, hidden] bf16, expert_weights [T, top_k],
    /// expanded_idx_to_permuted_idx [T * top_k] i32]` (an entry upstream left undefined has
    /// `ptr == 0`).
    pub fn tensors(&self) -> &[RawTensor] {
        &self.tensors
    }
}

impl Drop for Unfinalized {
    fn drop(&mut self) {
        // SAFETY: `raw` came from fi_moe_run and is freed exactly once, here.
        unsafe { sys::fi_moe_outputs_free(self.raw) }
    }
}

/// Runs `trtllm_bf16_moe`: route (from logits or precomputed ids), then the two grouped
/// GEMMs with the activation between them, then (with `do_finalize`) the weighted sum into
/// `output` `[T, hidden]`. Routed ids land in `routing_replay_out` when given.
///
/// Everything is enqueued on `stream`; scratch is taken stream-ordered and nothing
/// synchronises (see the crate docs on graphs). Returns the per-expert outputs when
/// `do_finalize` is off, else `None`. With zero tokens nothing is launched.
pub fn trtllm_bf16_moe(
    stream: &Arc<CudaStream>,
    routing: &MoeRouting<'_>,
    moe: &Bf16Moe<'_>,
    shape: MoeShape,
    opts: &MoeOptions,
    output: &mut CudaViewMut<'_, bf16>,
    routing_replay_out: Option<&mut ReplayView<'_>>,
) -> Result<Option<Unfinalized>> {
    let mut args = Args::new(Op::Bf16, shape, routing, opts);
    args.ro("hidden_states", fi_dtype::FI_DTYPE_BF16, &moe.hidden_states);
    args.ro("gemm1_weights", fi_dtype::FI_DTYPE_BF16, &moe.gemm1_weights);
    args.ro("gemm2_weights", fi_dtype::FI_DTYPE_BF16, &moe.gemm2_weights);
    args.ro_opt("gemm1_bias", fi_dtype::FI_DTYPE_BF16, &moe.gemm1_lora_delta);
    args.swiglu(&moe.swiglu);
    args.run(stream, output, routing_replay_out, false)
}

/// Runs `trtllm_fp8_per_tensor_scale_moe` (routing from logits only). See [`trtllm_bf16_moe`]
/// for what the call does with `output` and `routing_replay_out`.
pub fn trtllm_fp8_per_tensor_scale_moe(
    stream: &Arc<CudaStream>,
    routing: &MoeRouting<'_>,
    moe: &Fp8PerTensorMoe<'_>,
    shape: MoeShape,
    opts: &MoeOptions,
    output: &mut CudaViewMut<'_, bf16>,
    routing_replay_out: Option<&mut ReplayView<'_>>,
) -> Result<Option<Unfinalized>> {
    let mut args = Args::new(Op::Fp8PerTensor, shape, routing, opts);
    match &moe.hidden_states {
        Fp8Activations::E4m3(v) => args.ro("hidden_states", fi_dtype::FI_DTYPE_E4M3, v),
        Fp8Activations::Bf16(v) => args.ro("hidden_states", fi_dtype::FI_DTYPE_BF16, v),
        Fp8Activations::F16(v) => args.ro("hidden_states", fi_dtype::FI_DTYPE_F16, v),
    }
    args.ro("gemm1_weights", fi_dtype::FI_DTYPE_E4M3, &moe.gemm1_weights);
    args.ro("gemm2_weights", fi_dtype::FI_DTYPE_E4M3, &moe.gemm2_weights);
    let f32_ = fi_dtype::FI_DTYPE_F32;
    args.ro("output1_scales_scalar", f32_, &moe.output1_scales_scalar);
    args.ro(
        "output1_scales_gate_scalar",
        f32_,
        &moe.output1_scales_gate_scalar,
    );
    args.ro("output2_scales_scalar", f32_, &moe.output2_scales_scalar);
    args.run(
        stream,
        output,
        routing_replay_out,
        moe.use_routing_scales_on_input,
    )
}

/// Runs `trtllm_fp8_block_scale_moe` (DeepSeek fp8 or MxFp8, chosen by the scales). See
/// [`trtllm_bf16_moe`] for what the call does with `output` and `routing_replay_out`.
pub fn trtllm_fp8_block_scale_moe(
    stream: &Arc<CudaStream>,
    routing: &MoeRouting<'_>,
    moe: &Fp8BlockScaleMoe<'_>,
    shape: MoeShape,
    opts: &MoeOptions,
    output: &mut CudaViewMut<'_, bf16>,
    routing_replay_out: Option<&mut ReplayView<'_>>,
) -> Result<Option<Unfinalized>> {
    let op = match moe.scales {
        Fp8BlockScales::DeepSeek { .. } => Op::Fp8BlockDeepSeek,
        Fp8BlockScales::Mx { .. } => Op::Fp8BlockMx,
    };
    let mut args = Args::new(op, shape, routing, opts);
    let e4m3 = fi_dtype::FI_DTYPE_E4M3;
    args.ro("hidden_states", e4m3, &moe.hidden_states);
    args.ro("gemm1_weights", e4m3, &moe.gemm1_weights);
    args.ro("gemm2_weights", e4m3, &moe.gemm2_weights);
    match &moe.scales {
        Fp8BlockScales::DeepSeek {
            hidden_states_scale,
            gemm1_weights_scale,
            gemm2_weights_scale,
        } => {
            let f32_ = fi_dtype::FI_DTYPE_F32;
            args.ro("hidden_states_scale", f32_, hidden_states_scale);
            args.ro("gemm1_weights_scale", f32_, gemm1_weights_scale);
            args.ro("gemm2_weights_scale", f32_, gemm2_weights_scale);
        }
        Fp8BlockScales::Mx {
            hidden_states_scale,
            gemm1_weights_scale,
            gemm2_weights_scale,
        } => {
            let u8_ = fi_dtype::FI_DTYPE_U8;
            args.ro("hidden_states_scale", u8_, hidden_states_scale);
            args.ro("gemm1_weights_scale", u8_, gemm1_weights_scale);
            args.ro("gemm2_weights_scale", u8_, gemm2_weights_scale);
        }
    }
    args.ro_opt("gemm1_bias", fi_dtype::FI_DTYPE_BF16, &moe.gemm1_lora_delta);
    args.swiglu(&moe.swiglu);
    args.run(stream, output, routing_replay_out, false)
}

/// Runs `trtllm_fp4_block_scale_moe` (nvfp4 or mxfp4 weights; routing from logits). The
/// routing result is also written to `moe.topk_ids`/`moe.topk_weights`. See
/// [`trtllm_bf16_moe`] for what the call does with `output` and `routing_replay_out`.
pub fn trtllm_fp4_block_scale_moe(
    stream: &Arc<CudaStream>,
    routing: &MoeRouting<'_>,
    moe: &mut Fp4BlockScaleMoe<'_>,
    shape: MoeShape,
    opts: &MoeOptions,
    output: &mut CudaViewMut<'_, bf16>,
    routing_replay_out: Option<&mut ReplayView<'_>>,
) -> Result<Option<Unfinalized>> {
    let (e4m3, u8_, f32_) = (
        fi_dtype::FI_DTYPE_E4M3,
        fi_dtype::FI_DTYPE_U8,
        fi_dtype::FI_DTYPE_F32,
    );
    let act = match moe.hidden_states {
        Fp4Activations::Bf16(_) => Fp4Act::Bf16,
        Fp4Activations::E4m3(_) => Fp4Act::E4m3,
        Fp4Activations::MxE4m3 { .. } => Fp4Act::MxE4m3,
        Fp4Activations::Nvfp4 { .. } => Fp4Act::Nvfp4,
    };
    let weights = match moe.weights {
        Fp4Weights::Nvfp4 { .. } => Fp4W::Nvfp4,
        Fp4Weights::Mxfp4 { .. } => Fp4W::Mxfp4,
    };
    let Fp4BlockScaleMoe {
        hidden_states,
        weights: w,
        gemm1_bias,
        gemm2_bias,
        output1_scales_scalar,
        output1_scales_gate_scalar,
        output2_scales_scalar,
        per_token_scales,
        swiglu,
        topk_ids,
        topk_weights,
    } = moe;
    let mut args = Args::new(Op::Fp4 { act, weights }, shape, routing, opts);
    match hidden_states {
        Fp4Activations::Bf16(v) => args.ro("hidden_states", fi_dtype::FI_DTYPE_BF16, v),
        Fp4Activations::E4m3(v) => args.ro("hidden_states", e4m3, v),
        // Upstream reads every activation scale as e4m3 bytes (the ue8m0 ones included).
        Fp4Activations::MxE4m3 { data, scale } => {
            args.ro("hidden_states", e4m3, data);
            args.ro("hidden_states_scale", e4m3, scale);
        }
        Fp4Activations::Nvfp4 { data, scale } => {
            args.ro("hidden_states", u8_, data);
            args.ro("hidden_states_scale", e4m3, scale);
        }
    }
    // Likewise the weight scales: e4m3 bytes for both formats; the count tells them apart.
    match w {
        Fp4Weights::Nvfp4 {
            gemm1,
            gemm1_scale,
            gemm2,
            gemm2_scale,
        } => {
            args.ro("gemm1_weights", u8_, gemm1);
            args.ro("gemm1_weights_scale", e4m3, gemm1_scale);
            args.ro("gemm2_weights", u8_, gemm2);
            args.ro("gemm2_weights_scale", e4m3, gemm2_scale);
        }
        Fp4Weights::Mxfp4 {
            gemm1,
            gemm1_scale,
            gemm2,
            gemm2_scale,
        } => {
            args.ro("gemm1_weights", u8_, gemm1);
            args.ro("gemm1_weights_scale", e4m3, gemm1_scale);
            args.ro("gemm2_weights", u8_, gemm2);
            args.ro("gemm2_weights_scale", e4m3, gemm2_scale);
        }
    }
    args.ro_opt("gemm1_bias", f32_, gemm1_bias);
    args.ro_opt("gemm2_bias", f32_, gemm2_bias);
    args.ro_opt("output1_scales_scalar", f32_, output1_scales_scalar);
    args.ro_opt(
        "output1_scales_gate_scalar",
        f32_,
        output1_scales_gate_scalar,
    );
    args.ro_opt("output2_scales_scalar", f32_, output2_scales_scalar);
    args.ro_opt("per_token_scales", f32_, per_token_scales);
    args.swiglu(swiglu);
    args.rw("topk_ids", fi_dtype::FI_DTYPE_I32, topk_ids);
    args.rw("topk_weights", fi_dtype::FI_DTYPE_BF16, topk_weights);
    args.run(stream, output, routing_replay_out, false)
}

// ---- plumbing ---------------------------------------------------------------------------

/// A device view of any element type, read-only.
trait RoArg {
    fn arg_len(&self) -> usize;
    fn arg_stream(&self) -> &Arc<CudaStream>;
    fn arg_ptr<'s>(&'s self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>);
}

impl<T> RoArg for CudaView<'_, T> {
    fn arg_len(&self) -> usize {
        self.len()
    }
    fn arg_stream(&self) -> &Arc<CudaStream> {
        self.stream()
    }
    fn arg_ptr<'s>(&'s self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>) {
        self.device_ptr(stream)
    }
}

/// A device view of any element type the call writes.
trait RwArg {
    fn arg_len(&self) -> usize;
    fn arg_stream(&self) -> &Arc<CudaStream>;
    fn arg_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>);
}

impl<T> RwArg for CudaViewMut<'_, T> {
    fn arg_len(&self) -> usize {
        self.len()
    }
    fn arg_stream(&self) -> &Arc<CudaStream> {
        self.stream()
    }
    fn arg_ptr_mut<'s>(&'s mut self, stream: &'s CudaStream) -> (CUdeviceptr, SyncOnDrop<'s>) {
        self.device_ptr_mut(stream)
    }
}

/// One call's arguments on their way to the C ABI.
struct Args<'v> {
    op: Op,
    shape: MoeShape,
    routing: &'v MoeRouting<'v>,
    opts: &'v MoeOptions,
    ro: Vec<(&'static str, Dtype, &'v dyn RoArg)>,
    rw: Vec<(&'static str, Dtype, &'v mut dyn RwArg)>,
}

impl<'v> Args<'v> {
    fn new(op: Op, shape: MoeShape, routing: &'v MoeRouting<'v>, opts: &'v MoeOptions) -> Self {
        Args {
            op,
            shape,
            routing,
            opts,
            ro: Vec::new(),
            rw: Vec::new(),
        }
    }

    fn ro(&mut self, name: &'static str, dtype: Dtype, v: &'v dyn RoArg) {
        self.ro.push((name, dtype, v));
    }

    fn ro_opt<T>(&mut self, name: &'static str, dtype: Dtype, v: &'v Option<CudaView<'v, T>>) {
        if let Some(v) = v {
            self.ro.push((name, dtype, v));
        }
    }

    fn rw(&mut self, name: &'static str, dtype: Dtype, v: &'v mut dyn RwArg) {
        self.rw.push((name, dtype, v));
    }

    fn swiglu(&mut self, s: &'v SwigluParams<'v>) {
        let f32_ = fi_dtype::FI_DTYPE_F32;
        self.ro_opt("gemm1_alpha", f32_, &s.alpha);
        self.ro_opt("gemm1_beta", f32_, &s.beta);
        self.ro_opt("gemm1_clamp_limit", f32_, &s.clamp_limit);
    }

    fn run(
        self,
        stream: &Arc<CudaStream>,
        output: &mut CudaViewMut<'_, bf16>,
        replay: Option<&mut ReplayView<'_>>,
        use_routing_scales_on_input: bool,
    ) -> Result<Option<Unfinalized>> {
        let Args {
            op,
            shape,
            routing,
            opts,
            ro,
            mut rw,
        } = self;
        let src = match &routing.input {
            MoeRoutingInput::Logits { logits, bias } => RoutingSrc::Logits {
                dtype: logits.dtype(),
                len: logits.len(),
                bias: bias.as_ref().map(|b| (b.dtype(), b.len())),
            },
            MoeRoutingInput::Packed(v) => RoutingSrc::Packed { len: v.len() },
        };
        let mut given: Vec<Given> = ro
            .iter()
            .map(|(name, dtype, v)| Given {
                name,
                dtype: *dtype,
                len: v.arg_len(),
            })
            .chain(rw.iter().map(|(name, dtype, v)| Given {
                name,
                dtype: *dtype,
                len: v.arg_len(),
            }))
            .collect();
        given.push(Given {
            name: "output",
            dtype: fi_dtype::FI_DTYPE_BF16,
            len: output.len(),
        });
        let desc = Desc {
            op,
            shape,
            routing: routing.config,
            src,
            opts: *opts,
            replay: replay.as_deref().map(|r| (r.rows(), r.cols())),
            given,
        };
        let specs = plan(&desc)?;

        let routing_streams: Vec<(&'static str, &Arc<CudaStream>)> = match &routing.input {
            MoeRoutingInput::Logits { logits, bias } => {
                std::iter::once(("logits", logits.stream()))
                    .chain(bias.as_ref().map(|b| ("bias", b.stream())))
                    .collect()
            }
            MoeRoutingInput::Packed(p) => vec![("packed_ids", p.stream())],
        };
        same_context(
            stream,
            ro.iter()
                .map(|(name, _, v)| (*name, v.arg_stream()))
                .chain(rw.iter().map(|(name, _, v)| (*name, v.arg_stream())))
                .chain(routing_streams)
                .chain([("output", output.stream())])
                .chain(replay.as_deref().map(|r| ("replay", r.stream()))),
        )?;
        let ctx = stream.context();
        if shape.num_tokens == 0 {
            return Ok(None);
        }

        let mut a = scalar_args(&desc, ctx.ordinal() as i32, use_routing_scales_on_input);

        // Pointers: the guards keep cudarc's stream ordering alive across the call.
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
        let spec = |name: &str| specs.iter().find(|s| s.name == name);
        let fill = |name: &str, ptr: CUdeviceptr, a: &mut sys::fi_moe_args| -> Result<()> {
            match spec(name) {
                Some(s) => fill_tensor(a, s, ptr),
                None => Ok(()),
            }
        };
        match &routing.input {
            MoeRoutingInput::Logits { logits, bias } => {
                let (p, g) = logits_ptr(logits, stream);
                guards.push(g);
                fill("routing_logits", p, &mut a)?;
                if let Some(b) = bias {
                    let (p, g) = logits_ptr(b, stream);
                    guards.push(g);
                    fill("routing_bias", p, &mut a)?;
                }
            }
            MoeRoutingInput::Packed(v) => {
                let (p, g) = v.device_ptr(stream);
                guards.push(g);
                fill("expert_indices", p, &mut a)?;
            }
        }
        for (name, _, v) in &ro {
            let (p, g) = v.arg_ptr(stream);
            guards.push(g);
            fill(name, p, &mut a)?;
        }
        for (name, _, v) in rw.iter_mut() {
            let (p, g) = v.arg_ptr_mut(stream);
            guards.push(g);
            fill(name, p, &mut a)?;
        }
        let (p, g) = output.device_ptr_mut(stream);
        guards.push(g);
        fill("output", p, &mut a)?;
        if let Some(r) = replay {
            let (p, g) = r.data_mut().device_ptr_mut(stream);
            guards.push(g);
            fill("routing_replay_out", p, &mut a)?;
        }

        // The architecture gate comes first (the shim answers UnsupportedArch or
        // KernelsNotBuilt without touching upstream), so the default cubin store (which needs
        // the cache) is installed only where the fused kernels can run. Once it is, a call
        // pays one read lock here, not a device query.
        ctx.bind_to_thread()?;
        if !cubin::is_installed() && device_info(ctx)?.fused_supported {
            cubin::ensure_installed()?;
        }
        let mut out: *mut sys::fi_moe_outputs = std::ptr::null_mut();
        // SAFETY: every tensor is device memory of `ctx` (checked above) at least as large as
        // its spec (`plan`); the context is current; the guards keep memory and ordering alive
        // until the call returns; `out` is a valid out-pointer.
        check(unsafe { sys::fi_moe_run(&a, stream.cu_stream() as *mut _, &mut out) })?;
        drop(guards);
        if out.is_null() {
            return Ok(None);
        }
        unfinalized(out, stream).map(Some)
    }
}

/// Every scalar of `fi_moe_args` for a planned call (tensors left empty).
fn scalar_args(desc: &Desc, device: i32, use_routing_scales_on_input: bool) -> sys::fi_moe_args {
    let (cfg, opts, op) = (&desc.routing, &desc.opts, desc.op);
    let raw = cfg.raw_params(
        desc.shape.num_tokens,
        fi_dtype::FI_DTYPE_F32,
        fi_dtype::FI_DTYPE_F32,
    );
    let (n_group, topk_group) = match cfg.method {
        // The fused launchers want DeepSeekV3's groups given (1 = ungrouped).
        RoutingMethod::DeepSeekV3 { .. } => (
            i64::from(raw.n_group.max(1)),
            i64::from(raw.topk_group.max(1)),
        ),
        _ => (-1, -1),
    };
    let has_scale = matches!(
        cfg.method,
        RoutingMethod::DeepSeekV3 { .. } | RoutingMethod::MiniMax2 { .. }
    );
    // SAFETY: fi_moe_args is plain data; all-zero is "no tensor, zero scalars".
    let mut a: sys::fi_moe_args = unsafe { std::mem::zeroed() };
    a.op = op.raw();
    a.device = device;
    a.num_experts = cfg.num_experts.into();
    a.top_k = cfg.top_k.into();
    a.n_group = n_group;
    a.topk_group = topk_group;
    a.intermediate_size = desc.shape.intermediate_size as i64;
    a.local_expert_offset = cfg.local_expert_offset.into();
    a.local_num_experts = cfg.local_num_experts.into();
    a.routed_scaling_factor = raw.routed_scaling_factor.into();
    a.has_routed_scaling_factor = has_scale.into();
    a.routing_method = raw.method;
    a.routing_input_mode = 0;
    a.use_routing_scales_on_input = use_routing_scales_on_input.into();
    a.use_shuffled_weight = opts.use_shuffled_weight.into();
    a.weight_layout = opts.weight_layout as i32;
    a.fp8_quantization = match op {
        Op::Fp8BlockDeepSeek => 1,
        Op::Fp8BlockMx => 2,
        _ => 0,
    };
    a.activation = opts.activation as i32;
    a.do_finalize = opts.do_finalize.into();
    a.enable_pdl = opts.use_pdl.into();
    a.norm_topk_prob = raw.norm_topk_prob;
    (a.tile_n, a.config) = opts.tactic.map_or((-1, -1), |t| (t.tile_n, t.config));
    a
}

/// Puts planned tensor `s` at `ptr` into its `fi_moe_args` field.
fn fill_tensor(a: &mut sys::fi_moe_args, s: &Spec, ptr: CUdeviceptr) -> Result<()> {
    *slot(a, s.name)? = tensor(s, ptr);
    Ok(())
}

fn unfinalized(raw: *mut sys::fi_moe_outputs, stream: &Arc<CudaStream>) -> Result<Unfinalized> {
    let mut handle = Unfinalized {
        raw,
        tensors: Vec::new(),
        _stream: stream.clone(),
    };
    // SAFETY: `raw` is a live handle from fi_moe_run.
    let n = unsafe { sys::fi_moe_outputs_count(raw) };
    for i in 0..n {
        // SAFETY: fi_tensor is plain data; the handle is live and `i` in range.
        let mut t: sys::fi_tensor = unsafe { std::mem::zeroed() };
        check(unsafe { sys::fi_moe_outputs_get(raw, i, &mut t) })?;
        let ndim = t.ndim.clamp(0, 4) as usize;
        handle.tensors.push(RawTensor {
            ptr: t.data as CUdeviceptr,
            dtype: t.dtype as Dtype,
            shape: t.shape[..ndim].to_vec(),
        });
    }
    Ok(handle)
}

fn tensor(s: &Spec, ptr: CUdeviceptr) -> sys::fi_tensor {
    let mut shape = [0i64; 4];
    shape[..s.shape.len()].copy_from_slice(&s.shape);
    sys::fi_tensor {
        data: ptr as *mut _,
        dtype: s.dtype as i32,
        ndim: s.shape.len() as i32,
        shape,
    }
}

/// The `fi_moe_args` field of an ABI tensor name.
fn slot<'a>(a: &'a mut sys::fi_moe_args, name: &str) -> Result<&'a mut sys::fi_tensor> {
    Ok(match name {
        "routing_logits" => &mut a.routing_logits,
        "routing_bias" => &mut a.routing_bias,
        "expert_indices" | "topk_ids" => &mut a.expert_indices,
        "expert_weights" | "topk_weights" => &mut a.expert_weights,
        "hidden_states" => &mut a.hidden_states,
        "hidden_states_scale" => &mut a.hidden_states_scale,
        "gemm1_weights" => &mut a.gemm1_weights,
        "gemm1_weights_scale" => &mut a.gemm1_weights_scale,
        "gemm1_bias" => &mut a.gemm1_bias,
        "gemm1_alpha" => &mut a.gemm1_alpha,
        "gemm1_beta" => &mut a.gemm1_beta,
        "gemm1_clamp_limit" => &mut a.gemm1_clamp_limit,
        "gemm2_weights" => &mut a.gemm2_weights,
        "gemm2_weights_scale" => &mut a.gemm2_weights_scale,
        "gemm2_bias" => &mut a.gemm2_bias,
        "output1_scales_scalar" => &mut a.output1_scales_scalar,
        "output1_scales_gate_scalar" => &mut a.output1_scales_gate_scalar,
        "output2_scales_scalar" => &mut a.output2_scales_scalar,
        "per_token_scales" => &mut a.per_token_scales,
        "output" => &mut a.output,
        "routing_replay_out" => &mut a.routing_replay_out,
        other => {
            return Err(Error::Internal(format!(
                "no fi_moe_args field for tensor `{other}`"
            )))
        }
    })
}

#[cfg(test)]
mod tests;
