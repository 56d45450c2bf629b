//! The fused TRTLLM-gen MoE: routing, both grouped GEMMs, the activation and the weighted sum
//! in one call, with the routed expert ids optionally written to a replay buffer.
//!
//! Its GEMMs exist only as sm_100/sm_103 cubins, so the calls run on Blackwell (B200/GB200,
//! B300/GB300) alone; on other GPUs they return [`crate::Error::UnsupportedArch`] before
//! touching upstream. Layers:
//! - [`FusedMoe`] (`moe`): a layer of one [`Precision`], checked once by [`FusedMoe::new`],
//!   called per batch by [`FusedMoe::forward`]; `call`: upstream's four entry points by name,
//!   each building and calling a layer once;
//! - `precision`: what each precision's layer holds and each call passes; `config`
//!   ([`MoeConfig`], [`MoeOptions`]), `types` ([`Activation`], [`WeightLayout`], ...) and
//!   [`elements`] (the fp8/fp4 element types);
//! - [`plan`] ([`FusedPlan`]): every rule, on sizes, checked before any launch (tested on
//!   CPU and fuzzed; public, so a server checks a batch before it has buffers); `abi`: the
//!   Rust side of `fi_moe_args`;
//! - [`cubin`]: the sha256-checked cubin loader upstream calls back into;
//! - [`prepare`]: host-side weight preparation (shuffles, layouts, scale interleaving);
//! - [`oracle`](mod@oracle): a CPU reference MoE (the routing oracle, then the expert math) to
//!   check the kernels against.
mod abi;
mod call;
mod config;
pub mod cubin;
pub mod elements;
mod moe;
pub mod oracle;
pub mod plan;
mod precision;
pub mod prepare;
mod tactic;
mod types;
mod unfinalized;

pub use call::{
    trtllm_bf16_moe, trtllm_fp4_block_scale_moe, trtllm_fp8_block_scale_moe,
    trtllm_fp8_per_tensor_scale_moe,
};
pub use config::{MoeConfig, MoeOptions};
pub use cubin::CubinStore;
pub use elements::{E2m1x2, E4m3, Ue8m0};
pub use moe::{FusedMoe, MoeBatch, MoeRoutingInput};
pub use plan::{FusedBatchSizes, FusedLayerSizes, FusedPlan};
pub use precision::{
    Bf16, Bf16Inputs, Bf16Weights, Fp4ActivationKind, Fp4Activations, Fp4BlockScale,
    Fp4BlockScaleInputs, Fp4BlockScaleWeights, Fp4Weights, Fp8Activations, Fp8BlockInputScale,
    Fp8BlockScale, Fp8BlockScaleInputs, Fp8BlockScaleWeights, Fp8BlockWeightScales, Fp8PerTensor,
    Fp8PerTensorInputs, Fp8PerTensorWeights, Precision, SwigluParams,
};
pub use tactic::{valid_tactics, Tactic, TacticQuery};
pub use types::{Activation, Fp8Quantization, MoeDtype, WeightLayout};
pub use unfinalized::{RawTensor, Unfinalized};
