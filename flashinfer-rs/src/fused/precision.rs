//! The four precisions of the fused MoE, one per upstream entry point: what a layer of each
//! holds ([`Precision::Weights`]) and what each call passes ([`Precision::Inputs`]).
//!
//! | precision | upstream entry point | activations | weights |
//! |---|---|---|---|
//! | [`Bf16`] | `trtllm_bf16_moe` | bf16 | bf16, BlockMajorK |
//! | [`Fp8PerTensor`] | `trtllm_fp8_per_tensor_scale_moe` | e4m3, bf16 or f16 | e4m3, one scale per expert (Llama 4) |
//! | [`Fp8BlockScale`] | `trtllm_fp8_block_scale_moe` | e4m3 + block scales | e4m3, DeepSeek 128x128 or MX 1x32 block scales |
//! | [`Fp4BlockScale`] | `trtllm_fp4_block_scale_moe` | bf16, e4m3, MX e4m3 or nvfp4 | nvfp4 or mxfp4 |

use cudarc::driver::CudaView;

use super::abi::ArgList;
use super::plan::Op;
use crate::error::Result;

mod bf16;
mod fp4_block_scale;
mod fp8_block_scale;
mod fp8_per_tensor;

pub use bf16::{Bf16, Bf16Inputs, Bf16Weights};
pub use fp4_block_scale::{
    Fp4ActivationKind, Fp4Activations, Fp4BlockScale, Fp4BlockScaleInputs, Fp4BlockScaleWeights,
    Fp4Weights,
};
pub use fp8_block_scale::{
    Fp8BlockInputScale, Fp8BlockScale, Fp8BlockScaleInputs, Fp8BlockScaleWeights,
    Fp8BlockWeightScales,
};
pub use fp8_per_tensor::{Fp8Activations, Fp8PerTensor, Fp8PerTensorInputs, Fp8PerTensorWeights};

/// A precision of the fused MoE: the type parameter of [`FusedMoe`](super::FusedMoe).
pub trait Precision: sealed::Sealed {
    /// A layer's tensors: weights, their scales, per-expert parameters.
    type Weights<'w>: sealed::LayerArgs + std::fmt::Debug;
    /// One call's tensors besides routing and output: activations and their scales.
    type Inputs<'a>: sealed::BatchArgs + std::fmt::Debug;
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

/// How a precision's tensors reach the planner and the C ABI. Not nameable outside the crate,
/// so [`Precision`] has exactly the four implementations above.
pub(crate) mod sealed {
    use super::*;

    pub trait Sealed {}

    /// A layer's tensors.
    pub trait LayerArgs {
        /// The upstream entry point and variant these weights select.
        fn op(&self) -> Op;
        /// Every tensor, with the dtype it is declared as.
        fn describe<'v>(&'v self, list: &mut ArgList<'v>);
        /// Fp8 per-tensor (Llama 4): routing weights scale GEMM1's input.
        fn use_routing_scales_on_input(&self) -> bool {
            false
        }
    }

    /// One call's tensors.
    pub trait BatchArgs {
        /// Refuses inputs of another variant than the layer's (`op`).
        fn check_layer(&self, op: Op) -> Result<()>;
        /// Every tensor, with the dtype it is declared as.
        fn describe<'v>(&'v mut self, list: &mut ArgList<'v>);
    }
}
