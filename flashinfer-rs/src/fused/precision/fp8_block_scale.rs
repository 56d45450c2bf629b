use cudarc::driver::CudaView;
use flashinfer_sys::fi_dtype::{FI_DTYPE_BF16 as BF16, FI_DTYPE_E4M3 as E4M3};
use flashinfer_sys::fi_dtype::{FI_DTYPE_F32 as F32, FI_DTYPE_U8 as U8};
use flashinfer_sys::MoeTensor as M;
use half::bf16;

use super::sealed::{BatchArgs, LayerArgs, Sealed};
use super::{Precision, SwigluParams};
use crate::error::{Error, Result};
use crate::fused::abi::ArgList;
use crate::fused::elements::{E4m3, Ue8m0};
use crate::fused::plan::Op;

/// fp8 e4m3 activations and weights with block scales, DeepSeek-V3's 128x128 (f32) or MX
/// fp8's 1x32 (ue8m0), chosen by the weights' scales: upstream's
/// `trtllm_fp8_block_scale_moe`.
#[derive(Debug, Clone, Copy)]
pub struct Fp8BlockScale;

/// The weights' block scales, which select DeepSeek fp8 or MxFp8.
#[derive(Debug)]
pub enum Fp8BlockWeightScales<'w> {
    /// DeepSeek-V3: f32 scales of 128x128 weight blocks.
    DeepSeek {
        /// `[local_experts, M1/128, hidden/128]`.
        gemm1_weights_scale: CudaView<'w, f32>,
        /// `[local_experts, hidden/128, I/128]`.
        gemm2_weights_scale: CudaView<'w, f32>,
    },
    /// MX fp8: ue8m0 scales of 32-element blocks in the 128x4 interleaved layout.
    Mx {
        /// `local_experts * round_up(M1, 128) * round_up(hidden/32, 4)` scales.
        gemm1_weights_scale: CudaView<'w, Ue8m0>,
        /// `local_experts * round_up(hidden, 128) * round_up(I/32, 4)` scales.
        gemm2_weights_scale: CudaView<'w, Ue8m0>,
    },
}

/// An fp8 block-scale layer's weights.
#[derive(Debug)]
pub struct Fp8BlockScaleWeights<'w> {
    /// `[local_experts, M1, hidden]` (MajorK) or `[local_experts, hidden/128, M1, 128]`.
    pub gemm1_weights: CudaView<'w, E4m3>,
    /// `[local_experts, hidden, I]` (MajorK) or `[local_experts, I/128, hidden, 128]`.
    pub gemm2_weights: CudaView<'w, E4m3>,
    /// The block scales.
    pub scales: Fp8BlockWeightScales<'w>,
    /// MxFp8 only: SwiGLU parameters.
    pub swiglu: SwigluParams<'w>,
}

/// The activations' block scales, of the layer's kind.
#[derive(Debug)]
pub enum Fp8BlockInputScale<'a> {
    /// DeepSeek-V3: `[hidden/128, num_tokens]` f32 (transposed).
    DeepSeek(CudaView<'a, f32>),
    /// MX fp8: `round_up(T, 128) * round_up(hidden/32, 4)` ue8m0, 128x4 interleaved.
    Mx(CudaView<'a, Ue8m0>),
}

/// An fp8 block-scale call's inputs.
#[derive(Debug)]
pub struct Fp8BlockScaleInputs<'a> {
    /// `[num_tokens, hidden_size]` e4m3.
    pub hidden_states: CudaView<'a, E4m3>,
    /// Their block scales.
    pub hidden_states_scale: Fp8BlockInputScale<'a>,
    /// MxFp8 only: LoRA delta `[num_tokens, top_k, 2I]` bf16.
    pub gemm1_lora_delta: Option<CudaView<'a, bf16>>,
}

impl Sealed for Fp8BlockScale {}

impl Precision for Fp8BlockScale {
    type Weights<'w> = Fp8BlockScaleWeights<'w>;
    type Inputs<'a> = Fp8BlockScaleInputs<'a>;
}

impl LayerArgs for Fp8BlockScaleWeights<'_> {
    fn op(&self) -> Op {
        match self.scales {
            Fp8BlockWeightScales::DeepSeek { .. } => Op::Fp8BlockDeepSeek,
            Fp8BlockWeightScales::Mx { .. } => Op::Fp8BlockMx,
        }
    }
    fn describe<'v>(&'v self, list: &mut ArgList<'v>) {
        list.ro(M::Gemm1Weights, E4M3, &self.gemm1_weights);
        list.ro(M::Gemm2Weights, E4M3, &self.gemm2_weights);
        match &self.scales {
            Fp8BlockWeightScales::DeepSeek {
                gemm1_weights_scale,
                gemm2_weights_scale,
            } => {
                list.ro(M::Gemm1WeightsScale, F32, gemm1_weights_scale);
                list.ro(M::Gemm2WeightsScale, F32, gemm2_weights_scale);
            }
            Fp8BlockWeightScales::Mx {
                gemm1_weights_scale,
                gemm2_weights_scale,
            } => {
                list.ro(M::Gemm1WeightsScale, U8, gemm1_weights_scale);
                list.ro(M::Gemm2WeightsScale, U8, gemm2_weights_scale);
            }
        }
        list.swiglu(&self.swiglu);
    }
}

impl BatchArgs for Fp8BlockScaleInputs<'_> {
    fn check_layer(&self, op: Op) -> Result<()> {
        match (&self.hidden_states_scale, op) {
            (Fp8BlockInputScale::DeepSeek(_), Op::Fp8BlockDeepSeek)
            | (Fp8BlockInputScale::Mx(_), Op::Fp8BlockMx) => Ok(()),
            (Fp8BlockInputScale::DeepSeek(_), _) => Err(Error::invalid(
                "hidden_states_scale",
                "this layer's weights have MX scales: pass Fp8BlockInputScale::Mx",
            )),
            (Fp8BlockInputScale::Mx(_), _) => Err(Error::invalid(
                "hidden_states_scale",
                "this layer's weights have DeepSeek scales: pass Fp8BlockInputScale::DeepSeek",
            )),
        }
    }
    fn describe<'v>(&'v mut self, list: &mut ArgList<'v>) {
        list.ro(M::HiddenStates, E4M3, &self.hidden_states);
        match &self.hidden_states_scale {
            Fp8BlockInputScale::DeepSeek(v) => list.ro(M::HiddenStatesScale, F32, v),
            Fp8BlockInputScale::Mx(v) => list.ro(M::HiddenStatesScale, U8, v),
        }
        list.ro_opt(M::Gemm1Bias, BF16, &self.gemm1_lora_delta);
    }
}
