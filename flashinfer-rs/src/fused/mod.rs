//! The fused TRTLLM-gen MoE: routing, both grouped GEMMs, the activation and the weighted sum
//! in one call, with the routed expert ids optionally written to a replay buffer.
//!
//! Its GEMMs exist only as sm_100/sm_103 cubins, so the calls run on Blackwell (B200/GB200)
//! alone; on other GPUs they return [`crate::Error::UnsupportedArch`] before touching
//! upstream. Layers:
//! - `types` ([`Activation`], [`WeightLayout`], ...) and [`elements`]: upstream's enums and
//!   the fp8/fp4 element types;
//! - `plan`: every rule, on sizes, checked before any launch (tested on CPU);
//! - `call`: the four typed calls;
//! - [`cubin`]: the sha256-checked cubin loader upstream calls back into;
//! - [`prepare`]: host-side weight preparation (shuffles, layouts, scale interleaving);
//! - [`oracle`](mod@oracle): a CPU reference MoE (the routing oracle, then the expert math) to
//!   check the kernels against.
mod call;
pub mod cubin;
pub mod elements;
pub mod oracle;
pub(crate) mod plan;
pub mod prepare;
mod tactic;
mod types;

pub use call::{
    trtllm_bf16_moe, trtllm_fp4_block_scale_moe, trtllm_fp8_block_scale_moe,
    trtllm_fp8_per_tensor_scale_moe, Bf16Moe, Fp4Activations, Fp4BlockScaleMoe, Fp4Weights,
    Fp8Activations, Fp8BlockScaleMoe, Fp8BlockScales, Fp8PerTensorMoe, MoeRouting, MoeRoutingInput,
    RawTensor, SwigluParams, Unfinalized,
};
pub use cubin::CubinStore;
pub use elements::{E2m1x2, E4m3, Ue8m0};
pub use plan::{MoeOptions, MoeShape};
pub use tactic::{valid_tactics, Tactic, TacticQuery};
pub use types::{Activation, Fp8Quantization, MoeDtype, WeightLayout};
