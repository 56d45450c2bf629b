//! Tactics: which (tile, kernel config) pairs can run a fused MoE problem, so a caller can
//! tune once and pin one (upstream's `trtllm_get_valid_moe_configs`).
use flashinfer_sys as sys;

use super::types::{Activation, Fp8Quantization, MoeDtype, WeightLayout};
use crate::error::{ensure, Result};
use crate::ffi::check;

/// A fused MoE problem to find tactics for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TacticQuery {
    /// Activation element type.
    pub dtype_act: MoeDtype,
    /// Weight element type.
    pub dtype_weights: MoeDtype,
    /// fp8 scaling scheme (`None` for bf16 and fp4).
    pub fp8_quantization: Fp8Quantization,
    /// Experts per token.
    pub top_k: u32,
    /// Model hidden size.
    pub hidden_size: u32,
    /// Expert intermediate size.
    pub intermediate_size: u32,
    /// Experts on this rank.
    pub local_num_experts: u32,
    /// Expert activation.
    pub activation: Activation,
    /// Weights are pre-shuffled for the kernels.
    pub use_shuffled_weight: bool,
    /// Weight layout.
    pub weight_layout: WeightLayout,
    /// fp4 only: per-token activation scales.
    pub use_per_token_scaling: bool,
    /// Tokens to tune for.
    pub num_tokens: u32,
}

/// One runnable (tile, config) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tactic {
    /// Token tile of the grouped GEMMs (also the routing permutation's tile).
    pub tile_n: i64,
    /// Index of the kernel configuration.
    pub config: i64,
}

/// Every tactic that can run `q`. Host-side only: no GPU is touched. Errors when the
/// combination has no kernels (upstream's message) or when the fused MoE is not built.
pub fn valid_tactics(q: &TacticQuery) -> Result<Vec<Tactic>> {
    ensure(q.top_k > 0, "top_k", || "must be > 0".into())?;
    ensure(q.local_num_experts > 0, "local_num_experts", || {
        "must be > 0".into()
    })?;
    ensure(q.num_tokens > 0, "num_tokens", || "must be > 0".into())?;
    let raw = sys::fi_moe_config_query {
        dtype_act: q.dtype_act.upstream_value(),
        dtype_weights: q.dtype_weights.upstream_value(),
        fp8_quantization: q.fp8_quantization as i64,
        top_k: q.top_k.into(),
        hidden_size: q.hidden_size.into(),
        intermediate_size: q.intermediate_size.into(),
        num_local_experts: q.local_num_experts.into(),
        activation: q.activation as i64,
        use_shuffled_weight: q.use_shuffled_weight.into(),
        weight_layout: q.weight_layout as i32,
        use_per_token_scaling: q.use_per_token_scaling.into(),
        has_gemm1_bias_delta: 0,
        num_tokens: q.num_tokens.into(),
    };
    let mut pairs = vec![0i64; 2 * 256];
    loop {
        let mut count = 0i32;
        // SAFETY: `raw` and `count` are valid; `pairs` holds `pairs.len() / 2` pairs.
        check(unsafe {
            sys::fi_moe_valid_configs(
                &raw,
                pairs.as_mut_ptr(),
                (pairs.len() / 2) as i32,
                &mut count,
            )
        })?;
        let count = count.max(0) as usize;
        if count * 2 <= pairs.len() {
            return Ok(pairs[..count * 2]
                .chunks(2)
                .map(|p| Tactic {
                    tile_n: p[0],
                    config: p[1],
                })
                .collect());
        }
        pairs.resize(count * 2, 0);
    }
}
