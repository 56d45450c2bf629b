//! What a fused MoE layer is, apart from its weights: the model's routing, the layer's sizes
//! and the kernel options. [`FusedMoe::new`](super::FusedMoe::new) checks it once.

use super::tactic::Tactic;
use super::types::{Activation, WeightLayout};
use crate::routing::RoutingConfig;

/// A fused MoE layer's configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    /// Method, experts, top-k and expert-parallel range (its `tile_tokens_dim` and `use_pdl`
    /// are the routing-only call's: the fused call takes its tile from the tactic and PDL from
    /// [`MoeOptions::use_pdl`]).
    pub routing: RoutingConfig,
    /// Model hidden size.
    pub hidden_size: usize,
    /// Expert intermediate size (per projection; gated activations use twice as many rows).
    pub intermediate_size: usize,
    /// Kernel options.
    pub options: MoeOptions,
}

/// Kernel options of a fused MoE layer, with upstream's defaults from [`MoeOptions::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeOptions {
    /// Expert activation (default SwiGLU).
    pub activation: Activation,
    /// Weight layout (bf16 requires `BlockMajorK`; the fp8 per-tensor and fp4 layers `MajorK`).
    pub weight_layout: WeightLayout,
    /// Weights were shuffled for the kernels (see [`super::prepare`]); fp8 per-tensor, MxFp8
    /// and fp4 require it.
    pub use_shuffled_weight: bool,
    /// Reduce the experts' outputs into `output` (true), or hand back the per-expert
    /// (permuted) outputs for the caller to reduce.
    pub do_finalize: bool,
    /// Programmatic dependent launch.
    pub use_pdl: bool,
    /// Kernel choice; `None` lets upstream pick its default for the problem.
    pub tactic: Option<Tactic>,
}

impl MoeOptions {
    /// SwiGLU, `weight_layout`, shuffled weights, finalized, PDL on, default tactic.
    pub fn new(weight_layout: WeightLayout) -> MoeOptions {
        MoeOptions {
            activation: Activation::Swiglu,
            weight_layout,
            use_shuffled_weight: true,
            do_finalize: true,
            use_pdl: true,
            tactic: None,
        }
    }
}
