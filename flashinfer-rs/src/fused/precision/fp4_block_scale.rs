use cudarc::driver::{CudaView, CudaViewMut};
use flashinfer_sys::fi_dtype::{FI_DTYPE_BF16 as BF16, FI_DTYPE_E4M3 as E4M3};
use flashinfer_sys::fi_dtype::{FI_DTYPE_F32 as F32, FI_DTYPE_I32 as I32, FI_DTYPE_U8 as U8};
use flashinfer_sys::MoeTensor as M;
use half::bf16;

use super::sealed::{BatchArgs, LayerArgs, Sealed};
use super::{Precision, SwigluParams};
use crate::error::{Error, Result};
use crate::fused::abi::ArgList;
use crate::fused::elements::{E2m1x2, E4m3, Ue8m0};
use crate::fused::plan::{Fp4Act, Fp4W, Op};
use crate::launch::RoArg;

/// fp4 weights, nvfp4 (e4m3 scales of 16-element blocks) or mxfp4 (ue8m0 scales of 32),
/// fed bf16, e4m3, MX e4m3 or nvfp4 activations: upstream's `trtllm_fp4_block_scale_moe`.
/// Routing from logits only; the call also writes its routing result (`topk_ids`,
/// `topk_weights`).
#[derive(Debug, Clone, Copy)]
pub struct Fp4BlockScale;

/// fp4 expert weights with their block scales (128x4 interleaved).
#[derive(Debug)]
pub enum Fp4Weights<'w> {
    /// nvfp4: e4m3 scales of 16-element blocks.
    Nvfp4 {
        /// `[local_experts, M1, hidden/2]`.
        gemm1: CudaView<'w, E2m1x2>,
        /// `local_experts * round_up(M1, 128) * round_up(hidden/16, 4)`.
        gemm1_scale: CudaView<'w, E4m3>,
        /// `[local_experts, hidden, I/2]`.
        gemm2: CudaView<'w, E2m1x2>,
        /// `local_experts * round_up(hidden, 128) * round_up(I/16, 4)`.
        gemm2_scale: CudaView<'w, E4m3>,
    },
    /// mxfp4: ue8m0 scales of 32-element blocks.
    Mxfp4 {
        /// `[local_experts, M1, hidden/2]`.
        gemm1: CudaView<'w, E2m1x2>,
        /// `local_experts * round_up(M1, 128) * round_up(hidden/32, 4)`.
        gemm1_scale: CudaView<'w, Ue8m0>,
        /// `[local_experts, hidden, I/2]`.
        gemm2: CudaView<'w, E2m1x2>,
        /// `local_experts * round_up(hidden, 128) * round_up(I/32, 4)`.
        gemm2_scale: CudaView<'w, Ue8m0>,
    },
}

/// Which activations an fp4 layer is fed (its kernels and tiles depend on it): nvfp4 with
/// nvfp4 weights, the rest with mxfp4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp4ActivationKind {
    /// bf16.
    Bf16,
    /// e4m3 with per-tensor scales folded into the output scales.
    E4m3,
    /// MX fp8: e4m3 with ue8m0 scales of 32-element blocks.
    MxE4m3,
    /// nvfp4: packed e2m1 with e4m3 scales of 16-element blocks.
    Nvfp4,
}

/// An fp4 layer's weights and per-expert parameters.
#[derive(Debug)]
pub struct Fp4BlockScaleWeights<'w> {
    /// The activations this layer will be fed.
    pub activations: Fp4ActivationKind,
    /// Weights and block scales.
    pub weights: Fp4Weights<'w>,
    /// `[local_experts, M1]` f32 bias of GEMM1.
    pub gemm1_bias: Option<CudaView<'w, f32>>,
    /// `[local_experts, hidden]` f32 bias of GEMM2.
    pub gemm2_bias: Option<CudaView<'w, f32>>,
    /// `[local_experts]` f32; required with nvfp4 or e4m3 activations.
    pub output1_scales_scalar: Option<CudaView<'w, f32>>,
    /// `[local_experts]` f32; required with nvfp4 or e4m3 activations.
    pub output1_scales_gate_scalar: Option<CudaView<'w, f32>>,
    /// `[local_experts]` f32; required with nvfp4 or e4m3 activations.
    pub output2_scales_scalar: Option<CudaView<'w, f32>>,
    /// SwiGLU parameters.
    pub swiglu: SwigluParams<'w>,
}

/// Activations of the fp4 block-scale call, `[num_tokens, hidden]` (nvfp4 packs two per byte).
#[derive(Debug)]
pub enum Fp4Activations<'a> {
    /// bf16.
    Bf16(CudaView<'a, bf16>),
    /// e4m3 with per-tensor scales folded into the output scales.
    E4m3(CudaView<'a, E4m3>),
    /// MX fp8: e4m3 and ue8m0 scales of 32-element blocks.
    MxE4m3 {
        /// Values.
        data: CudaView<'a, E4m3>,
        /// Block scales, 128x4-interleaved as upstream's `mxfp8_quantize` makes them
        /// ([`crate::fused::prepare::interleave_scales`] of `[T, hidden/32]`): at least
        /// `round_up(T, 128) * round_up(hidden/32, 4)` of them. FlashInfer 0.6.13 infers the
        /// block size from the count declared to it, `T * hidden / 32`.
        scale: CudaView<'a, Ue8m0>,
    },
    /// nvfp4: `[T, hidden/2]` packed e2m1 and e4m3 scales of 16-element blocks.
    Nvfp4 {
        /// Values, two per byte.
        data: CudaView<'a, E2m1x2>,
        /// Block scales, 128x4-interleaved as upstream's `fp4_quantize` makes them
        /// ([`crate::fused::prepare::interleave_scales`] of `[T, hidden/16]`): at least
        /// `round_up(T, 128) * round_up(hidden/16, 4)` of them. FlashInfer 0.6.13 infers the
        /// block size from the count declared to it, `T * hidden / 16`.
        scale: CudaView<'a, E4m3>,
    },
}

impl Fp4Activations<'_> {
    /// Their kind.
    pub fn kind(&self) -> Fp4ActivationKind {
        match self {
            Fp4Activations::Bf16(_) => Fp4ActivationKind::Bf16,
            Fp4Activations::E4m3(_) => Fp4ActivationKind::E4m3,
            Fp4Activations::MxE4m3 { .. } => Fp4ActivationKind::MxE4m3,
            Fp4Activations::Nvfp4 { .. } => Fp4ActivationKind::Nvfp4,
        }
    }
}

/// An fp4 call's inputs, and the routing result it writes.
#[derive(Debug)]
pub struct Fp4BlockScaleInputs<'a> {
    /// Activations, of the layer's [`Fp4ActivationKind`].
    pub hidden_states: Fp4Activations<'a>,
    /// `[num_tokens]` f32 per-token activation scales.
    pub per_token_scales: Option<CudaView<'a, f32>>,
    /// Written by the call: the routing result `[T, top_k]` int32, each packed as
    /// `(expert_id << 16) | bf16_weight_bits` (upstream's `topk_ids`).
    pub topk_ids: CudaViewMut<'a, i32>,
    /// Written by the call: their weights `[T, top_k]` bf16 (upstream's `topk_weights`).
    pub topk_weights: CudaViewMut<'a, bf16>,
}

impl Sealed for Fp4BlockScale {}

impl Precision for Fp4BlockScale {
    type Weights<'w> = Fp4BlockScaleWeights<'w>;
    type Inputs<'a> = Fp4BlockScaleInputs<'a>;
}

fn act(kind: Fp4ActivationKind) -> Fp4Act {
    match kind {
        Fp4ActivationKind::Bf16 => Fp4Act::Bf16,
        Fp4ActivationKind::E4m3 => Fp4Act::E4m3,
        Fp4ActivationKind::MxE4m3 => Fp4Act::MxE4m3,
        Fp4ActivationKind::Nvfp4 => Fp4Act::Nvfp4,
    }
}

impl LayerArgs for Fp4BlockScaleWeights<'_> {
    fn op(&self) -> Op {
        let weights = match self.weights {
            Fp4Weights::Nvfp4 { .. } => Fp4W::Nvfp4,
            Fp4Weights::Mxfp4 { .. } => Fp4W::Mxfp4,
        };
        Op::Fp4 {
            act: act(self.activations),
            weights,
        }
    }
    fn describe<'v>(&'v self, list: &mut ArgList<'v>) {
        // Upstream reads both formats' weight scales as e4m3 bytes; the count tells them apart.
        type Parts<'a, 'w> = (
            &'a CudaView<'w, E2m1x2>,
            &'a CudaView<'w, E2m1x2>,
            &'a dyn RoArg,
            &'a dyn RoArg,
        );
        let (gemm1, gemm2, gemm1_scale, gemm2_scale): Parts<'v, '_> = match &self.weights {
            Fp4Weights::Nvfp4 {
                gemm1,
                gemm1_scale,
                gemm2,
                gemm2_scale,
            } => (gemm1, gemm2, gemm1_scale, gemm2_scale),
            Fp4Weights::Mxfp4 {
                gemm1,
                gemm1_scale,
                gemm2,
                gemm2_scale,
            } => (gemm1, gemm2, gemm1_scale, gemm2_scale),
        };
        list.ro(M::Gemm1Weights, U8, gemm1);
        list.ro(M::Gemm1WeightsScale, E4M3, gemm1_scale);
        list.ro(M::Gemm2Weights, U8, gemm2);
        list.ro(M::Gemm2WeightsScale, E4M3, gemm2_scale);
        list.ro_opt(M::Gemm1Bias, F32, &self.gemm1_bias);
        list.ro_opt(M::Gemm2Bias, F32, &self.gemm2_bias);
        list.ro_opt(M::Output1ScalesScalar, F32, &self.output1_scales_scalar);
        list.ro_opt(
            M::Output1ScalesGateScalar,
            F32,
            &self.output1_scales_gate_scalar,
        );
        list.ro_opt(M::Output2ScalesScalar, F32, &self.output2_scales_scalar);
        list.swiglu(&self.swiglu);
    }
}

impl BatchArgs for Fp4BlockScaleInputs<'_> {
    fn check_layer(&self, op: Op) -> Result<()> {
        let given = act(self.hidden_states.kind());
        match op {
            Op::Fp4 { act, .. } if act == given => Ok(()),
            Op::Fp4 { act, .. } => Err(Error::invalid(
                "hidden_states",
                format!("are {given:?}; this layer was built for {act:?} activations"),
            )),
            _ => Err(Error::Internal(format!("fp4 inputs on a {op:?} layer"))),
        }
    }
    fn describe<'v>(&'v mut self, list: &mut ArgList<'v>) {
        // Upstream reads every activation scale as e4m3 bytes (the ue8m0 ones included).
        match &self.hidden_states {
            Fp4Activations::Bf16(v) => list.ro(M::HiddenStates, BF16, v),
            Fp4Activations::E4m3(v) => list.ro(M::HiddenStates, E4M3, v),
            Fp4Activations::MxE4m3 { data, scale } => {
                list.ro(M::HiddenStates, E4M3, data);
                list.ro(M::HiddenStatesScale, E4M3, scale);
            }
            Fp4Activations::Nvfp4 { data, scale } => {
                list.ro(M::HiddenStates, U8, data);
                list.ro(M::HiddenStatesScale, E4M3, scale);
            }
        }
        list.ro_opt(M::PerTokenScales, F32, &self.per_token_scales);
        list.rw(M::ExpertIndices, I32, &mut self.topk_ids);
        list.rw(M::ExpertWeights, BF16, &mut self.topk_weights);
    }
}
