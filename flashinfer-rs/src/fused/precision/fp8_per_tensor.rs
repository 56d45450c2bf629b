use cudarc::driver::CudaView;
use flashinfer_sys::fi_dtype::{self, FI_DTYPE_E4M3 as E4M3, FI_DTYPE_F32 as F32};
use flashinfer_sys::MoeTensor as M;
use half::{bf16, f16};

use super::sealed::{BatchArgs, LayerArgs, Sealed};
use super::Precision;
use crate::error::Result;
use crate::fused::abi::ArgList;
use crate::fused::elements::E4m3;
use crate::fused::plan::Op;

/// fp8 e4m3 weights with one scale per expert, folded into three output scales (Llama 4
/// style): upstream's `trtllm_fp8_per_tensor_scale_moe`. Routing from logits only.
#[derive(Debug, Clone, Copy)]
pub struct Fp8PerTensor;

/// An fp8 per-tensor layer's weights and scales.
#[derive(Debug)]
pub struct Fp8PerTensorWeights<'w> {
    /// `[local_experts, M1, hidden]`, shuffled.
    pub gemm1_weights: CudaView<'w, E4m3>,
    /// `[local_experts]`: dequantisation of GEMM1's linear half (and requantisation of its
    /// output for GEMM2).
    pub output1_scales_scalar: CudaView<'w, f32>,
    /// `[local_experts]`: dequantisation of GEMM1's gate half.
    pub output1_scales_gate_scalar: CudaView<'w, f32>,
    /// `[local_experts, hidden, I]`, shuffled.
    pub gemm2_weights: CudaView<'w, E4m3>,
    /// `[local_experts]`: dequantisation of GEMM2's output.
    pub output2_scales_scalar: CudaView<'w, f32>,
    /// Multiply the routing weight into GEMM1's input instead of the output (Llama 4, top-1).
    pub use_routing_scales_on_input: bool,
}

/// Activations of the fp8 per-tensor call, `[num_tokens, hidden_size]`.
#[derive(Debug)]
pub enum Fp8Activations<'a> {
    /// fp8 e4m3, already scaled by the calibrated input scale.
    E4m3(CudaView<'a, E4m3>),
    /// bf16.
    Bf16(CudaView<'a, bf16>),
    /// f16.
    F16(CudaView<'a, f16>),
}

/// An fp8 per-tensor call's inputs.
#[derive(Debug)]
pub struct Fp8PerTensorInputs<'a> {
    /// The activations.
    pub hidden_states: Fp8Activations<'a>,
}

impl Sealed for Fp8PerTensor {}

impl Precision for Fp8PerTensor {
    type Weights<'w> = Fp8PerTensorWeights<'w>;
    type Inputs<'a> = Fp8PerTensorInputs<'a>;
}

impl LayerArgs for Fp8PerTensorWeights<'_> {
    fn op(&self) -> Op {
        Op::Fp8PerTensor
    }
    fn describe<'v>(&'v self, list: &mut ArgList<'v>) {
        list.ro(M::Gemm1Weights, E4M3, &self.gemm1_weights);
        list.ro(M::Gemm2Weights, E4M3, &self.gemm2_weights);
        list.ro(M::Output1ScalesScalar, F32, &self.output1_scales_scalar);
        list.ro(
            M::Output1ScalesGateScalar,
            F32,
            &self.output1_scales_gate_scalar,
        );
        list.ro(M::Output2ScalesScalar, F32, &self.output2_scales_scalar);
    }
    fn use_routing_scales_on_input(&self) -> bool {
        self.use_routing_scales_on_input
    }
}

impl BatchArgs for Fp8PerTensorInputs<'_> {
    fn check_layer(&self, _: Op) -> Result<()> {
        Ok(())
    }
    fn describe<'v>(&'v mut self, list: &mut ArgList<'v>) {
        match &self.hidden_states {
            Fp8Activations::E4m3(v) => list.ro(M::HiddenStates, E4M3, v),
            Fp8Activations::Bf16(v) => list.ro(M::HiddenStates, fi_dtype::FI_DTYPE_BF16, v),
            Fp8Activations::F16(v) => list.ro(M::HiddenStates, fi_dtype::FI_DTYPE_F16, v),
        }
    }
}
