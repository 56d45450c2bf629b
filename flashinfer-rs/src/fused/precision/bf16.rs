use cudarc::driver::CudaView;
use flashinfer_sys::fi_dtype::FI_DTYPE_BF16 as BF16;
use flashinfer_sys::MoeTensor as M;
use half::bf16;

use super::sealed::{BatchArgs, LayerArgs, Sealed};
use super::{Precision, SwigluParams};
use crate::error::Result;
use crate::fused::abi::ArgList;
use crate::fused::plan::Op;

/// bf16 activations and weights: upstream's `trtllm_bf16_moe`. Weights in BlockMajorK layout
/// (see [`crate::fused::prepare`]).
#[derive(Debug, Clone, Copy)]
pub struct Bf16;

/// A bf16 layer's weights.
#[derive(Debug)]
pub struct Bf16Weights<'w> {
    /// `[local_experts, hidden/64, M1, 64]` (M1 = 2I for gated activations, else I).
    pub gemm1_weights: CudaView<'w, bf16>,
    /// `[local_experts, I/64, hidden, 64]`.
    pub gemm2_weights: CudaView<'w, bf16>,
    /// SwiGLU parameters.
    pub swiglu: SwigluParams<'w>,
}

/// A bf16 call's inputs.
#[derive(Debug)]
pub struct Bf16Inputs<'a> {
    /// `[num_tokens, hidden_size]`.
    pub hidden_states: CudaView<'a, bf16>,
    /// LoRA delta added to GEMM1's output, `[num_tokens, top_k, 2I]`.
    pub gemm1_lora_delta: Option<CudaView<'a, bf16>>,
}

impl Sealed for Bf16 {}

impl Precision for Bf16 {
    type Weights<'w> = Bf16Weights<'w>;
    type Inputs<'a> = Bf16Inputs<'a>;
}

impl LayerArgs for Bf16Weights<'_> {
    fn op(&self) -> Op {
        Op::Bf16
    }
    fn describe<'v>(&'v self, list: &mut ArgList<'v>) {
        list.ro(M::Gemm1Weights, BF16, &self.gemm1_weights);
        list.ro(M::Gemm2Weights, BF16, &self.gemm2_weights);
        list.swiglu(&self.swiglu);
    }
}

impl BatchArgs for Bf16Inputs<'_> {
    fn check_layer(&self, _: Op) -> Result<()> {
        Ok(())
    }
    fn describe<'v>(&'v mut self, list: &mut ArgList<'v>) {
        list.ro(M::HiddenStates, BF16, &self.hidden_states);
        list.ro_opt(M::Gemm1Bias, BF16, &self.gemm1_lora_delta);
    }
}
