//! Routing methods, their own parameters, and the limits FlashInfer 0.6.13 has for each.
//!
//! The limits matter more than usual: for an (experts, top_k) pair outside a method's compiled
//! kernel tiers, upstream only logs a warning and launches nothing, leaving the outputs (and
//! the replay buffer) as they were. [`RoutingConfig::validate`] rejects every such pair before
//! anything is launched.

use crate::error::{ensure, Result};
use flashinfer_sys as sys;

/// How a token's experts are chosen and weighted (upstream's `RoutingMethodType`), with the
/// parameters each method takes.
///
/// Selection order is descending key; ties go to the smaller expert index. Weights are bf16.
///
/// Non-exhaustive: methods are added as models need them (match with a `_` arm). Most are
/// upstream's; [`DeepSeekV2`](RoutingMethod::DeepSeekV2) is flashinfer-rs's own and only
/// [`TopKRouter`](super::TopKRouter) and the oracle's
/// [`route_topk`](super::oracle::route_topk) serve it ([`RoutingMethod::upstream_kernels`]).
/// docs/routing-methods.md says which method reproduces which model family's router.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum RoutingMethod {
    /// Softmax over all experts, top-k of the probabilities; weights are those probabilities.
    Default,
    /// Top-k of the raw logits; weights are the softmax over the chosen logits (Qwen3, Mixtral).
    Renormalize,
    /// Softmax, top-k, divide by the sum: the same function as `Renormalize`, and upstream
    /// runs the same kernel for both.
    RenormalizeNaive,
    /// DeepSeek-V3: key `sigmoid(l) + bias`; with `n_group > 1` the experts are split into
    /// groups, a group scores the sum of its two best keys, the best `topk_group` groups are
    /// kept and the top-k are chosen inside them. Weights: `sigmoid(l)` of the chosen ×
    /// `routed_scaling_factor` / their sum. Needs a bias.
    DeepSeekV3 {
        /// Expert groups; `<= 1` means no grouping.
        n_group: u32,
        /// Groups kept per token (ignored without grouping).
        topk_group: u32,
        /// Scale of the normalised weights.
        routed_scaling_factor: f32,
    },
    /// Llama 4: top-1 of the raw logits, weight `sigmoid(max logit)`.
    Llama4,
    /// Top-k of the raw logits; weights are the raw chosen logits.
    TopK,
    /// Key `sigmoid(l)`; weights `s / max(sum, 1e-20)` if `norm_topk_prob`, else `s`.
    SigmoidRenorm {
        /// Renormalise the chosen weights to sum to one.
        norm_topk_prob: bool,
    },
    /// MiniMax-M2: key `sigmoid(l) + bias`; weights `sigmoid × routed_scaling_factor /
    /// (sum + 1e-20)`. Needs a bias.
    MiniMax2 {
        /// Scale of the normalised weights.
        routed_scaling_factor: f32,
    },
    /// Key `sigmoid(l)`; weights `s`.
    Sigmoid,
    /// DeepSeek-V2 (`scoring_func = "softmax"`; also DeepSeek-V2-Lite, V2.5): key `p =
    /// softmax(l)` over all experts. With `n_group > 1` (`topk_method =
    /// "group_limited_greedy"`) a group scores the MAX of its experts' `p`, the best
    /// `topk_group` groups are kept and the top-k are chosen inside them; with `n_group <= 1`
    /// (`"greedy"`) the top-k of all. Weights, as DeepSeek-V2's `MoEGate`: `p / (sum + 1e-20)`
    /// over the chosen when `norm_topk_prob` and `top_k > 1`, else `p ×
    /// routed_scaling_factor` (normalising does not scale). No bias.
    ///
    /// flashinfer-rs's own method: upstream FlashInfer has no kernel for it, so only
    /// [`TopKRouter`](super::TopKRouter) routes it ([`RoutingConfig::validate`] refuses it for
    /// upstream's routers and fused layers; [`RoutingConfig::validate_topk`] admits it).
    DeepSeekV2 {
        /// Expert groups; `<= 1` means no grouping (`"greedy"`).
        n_group: u32,
        /// Groups kept per token (ignored without grouping).
        topk_group: u32,
        /// Scale of the weights when they are not normalised.
        routed_scaling_factor: f32,
        /// Normalise the chosen weights to sum to one (`top_k > 1` only); not scaled then.
        norm_topk_prob: bool,
    },
}

impl RoutingMethod {
    /// SigmoidRenorm or DeepSeekV2 with `norm_topk_prob`: the chosen weights are renormalised.
    pub(crate) fn norm_topk_prob(&self) -> bool {
        matches!(
            self,
            RoutingMethod::SigmoidRenorm {
                norm_topk_prob: true
            } | RoutingMethod::DeepSeekV2 {
                norm_topk_prob: true,
                ..
            }
        )
    }

    /// DeepSeekV3's or DeepSeekV2's `(n_group, topk_group)` (0, 0 for every other method:
    /// ungrouped, as the kernels read it) and the routed scaling factor (1 where the method
    /// has none).
    pub(crate) fn groups_and_scale(&self) -> (u32, u32, f32) {
        match *self {
            RoutingMethod::DeepSeekV3 {
                n_group,
                topk_group,
                routed_scaling_factor,
            }
            | RoutingMethod::DeepSeekV2 {
                n_group,
                topk_group,
                routed_scaling_factor,
                ..
            } => (n_group, topk_group, routed_scaling_factor),
            RoutingMethod::MiniMax2 {
                routed_scaling_factor,
            } => (0, 0, routed_scaling_factor),
            _ => (0, 0, 1.0),
        }
    }

    /// Upstream's `RoutingMethodType` value; `None` for a method upstream does not have
    /// ([`DeepSeekV2`](RoutingMethod::DeepSeekV2)).
    pub fn upstream_value(&self) -> Option<u32> {
        use sys::fi_routing_method as m;
        Some(match self {
            RoutingMethod::Default => m::FI_ROUTING_DEFAULT,
            RoutingMethod::Renormalize => m::FI_ROUTING_RENORMALIZE,
            RoutingMethod::DeepSeekV3 { .. } => m::FI_ROUTING_DEEPSEEK_V3,
            RoutingMethod::Llama4 => m::FI_ROUTING_LLAMA4,
            RoutingMethod::RenormalizeNaive => m::FI_ROUTING_RENORMALIZE_NAIVE,
            RoutingMethod::TopK => m::FI_ROUTING_TOPK,
            RoutingMethod::SigmoidRenorm { .. } => m::FI_ROUTING_SIGMOID_RENORM,
            RoutingMethod::MiniMax2 { .. } => m::FI_ROUTING_MINIMAX2,
            RoutingMethod::Sigmoid => m::FI_ROUTING_SIGMOID,
            RoutingMethod::DeepSeekV2 { .. } => return None,
        })
    }

    /// The C ABI's `fi_routing_method` value: upstream's value, or flashinfer-rs's own for a
    /// method upstream does not have (`FI_ROUTING_DEEPSEEK_V2`, outside upstream's
    /// `RoutingMethodType` values, so `fi_routing_run` refuses it).
    pub fn abi_value(&self) -> u32 {
        match self.upstream_value() {
            Some(v) => v,
            None => sys::fi_routing_method::FI_ROUTING_DEEPSEEK_V2,
        }
    }

    /// Whether upstream's kernels serve this method ([`Router`](super::Router), the fused
    /// layers' in-call routing); the others only [`TopKRouter`](super::TopKRouter) and the
    /// oracle's [`route_topk`](super::oracle::route_topk) do.
    pub fn upstream_kernels(&self) -> bool {
        self.upstream_value().is_some()
    }

    /// The method's name as upstream spells it.
    pub fn name(&self) -> &'static str {
        match self {
            RoutingMethod::Default => "Default",
            RoutingMethod::Renormalize => "Renormalize",
            RoutingMethod::DeepSeekV3 { .. } => "DeepSeekV3",
            RoutingMethod::Llama4 => "Llama4",
            RoutingMethod::RenormalizeNaive => "RenormalizeNaive",
            RoutingMethod::TopK => "TopK",
            RoutingMethod::SigmoidRenorm { .. } => "SigmoidRenorm",
            RoutingMethod::MiniMax2 { .. } => "MiniMax2",
            RoutingMethod::Sigmoid => "Sigmoid",
            RoutingMethod::DeepSeekV2 { .. } => "DeepSeekV2",
        }
    }

    /// Whether the method adds a per-expert bias to its selection key (and so requires one).
    pub fn needs_bias(&self) -> bool {
        matches!(
            self,
            RoutingMethod::DeepSeekV3 { .. } | RoutingMethod::MiniMax2 { .. }
        )
    }

    /// DeepSeekV3 with `n_group > 1` runs upstream's grouped DeepSeek kernels; everything
    /// else runs the policy-based "custom" kernels (or Llama4's).
    pub fn is_grouped(&self) -> bool {
        matches!(self, RoutingMethod::DeepSeekV3 { n_group, .. } if *n_group > 1)
    }

    /// Largest (experts, top_k) this method's kernels are compiled for in 0.6.13; every
    /// pair up to both bounds is covered by some tier.
    pub fn limits(&self) -> MethodLimits {
        match self {
            // PolicyTraits<Softmax, NoOp>, <Sigmoid, SumNormalize>, <NoOp, NoOp>:
            // Tier<128, 8>, Tier<256, 8> only. (Beyond them a softmax spreads so thin that
            // the oracle's separated inputs cannot be made: the top-k router keeps them too.)
            RoutingMethod::Default
            | RoutingMethod::TopK
            | RoutingMethod::SigmoidRenorm { .. }
            | RoutingMethod::Sigmoid => MethodLimits {
                max_experts: 256,
                max_top_k: 8,
            },
            // PolicyTraits<NoOp, Softmax>: up to Tier<2048, 32>.
            RoutingMethod::Renormalize | RoutingMethod::RenormalizeNaive => MethodLimits {
                max_experts: 2048,
                max_top_k: 32,
            },
            // Grouped DeepSeek kernel: at most 512 experts; Routing::Runner allows top_k <= 22.
            RoutingMethod::DeepSeekV3 { n_group, .. } if *n_group > 1 => MethodLimits {
                max_experts: 512,
                max_top_k: 22,
            },
            // PolicyTraits<SigmoidBias, ScaledSumNormalize>: up to Tier<1024, 32>; the
            // ungrouped DeepSeekV3 path is still held to Routing::Runner's top_k <= 22.
            RoutingMethod::DeepSeekV3 { .. } => MethodLimits {
                max_experts: 1024,
                max_top_k: 22,
            },
            RoutingMethod::MiniMax2 { .. } => MethodLimits {
                max_experts: 1024,
                max_top_k: 32,
            },
            // routingLlama4: MaxSupportedExperts = 128, MaxNumTopExperts = 1.
            RoutingMethod::Llama4 => MethodLimits {
                max_experts: 128,
                max_top_k: 1,
            },
            // Only the top-k router serves it: Default's bounds (the same softmax keys; the
            // grouped form has at most MAX_EXPERT_GROUPS x MAX_EXPERTS_PER_GROUP = 256 anyway).
            RoutingMethod::DeepSeekV2 { .. } => MethodLimits {
                max_experts: 256,
                max_top_k: 8,
            },
        }
    }
}

/// Upper bounds of one method's kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodLimits {
    /// Most experts any compiled tier covers.
    pub max_experts: u32,
    /// Largest top-k any compiled tier covers.
    pub max_top_k: u32,
}

/// Grouped DeepSeekV3 limits of 0.6.13's routingDeepSeek kernels (grouped DeepSeekV2, which
/// only the top-k router serves, has the same group limits).
pub const MAX_EXPERT_GROUPS: u32 = 8;
/// At most this many groups are kept per token (DeepSeekV3; DeepSeekV2 may keep all).
pub const MAX_TOPK_GROUPS: u32 = 4;
/// A group's experts are scored by one warp.
pub const MAX_EXPERTS_PER_GROUP: u32 = 32;

/// A model's routing, fixed for the life of a server: validated once, then every call only
/// checks its buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct RoutingConfig {
    /// The method and its parameters.
    pub method: RoutingMethod,
    /// Experts in the model (columns of the logits).
    pub num_experts: u32,
    /// Experts chosen per token.
    pub top_k: u32,
    /// First expert owned by this rank (expert parallelism); 0 without EP.
    pub local_expert_offset: u32,
    /// Experts owned by this rank; `num_experts` without EP.
    pub local_num_experts: u32,
    /// Token tile of the permutation outputs (a power of two, 8..=256).
    pub tile_tokens_dim: u32,
    /// Launch with programmatic dependent launch (overlaps a kernel's start with the previous
    /// kernel's tail; upstream always enables it).
    pub use_pdl: bool,
}

impl RoutingConfig {
    /// A config for `method` over all `num_experts` (no expert parallelism), tile 8, PDL on.
    pub fn new(method: RoutingMethod, num_experts: u32, top_k: u32) -> RoutingConfig {
        RoutingConfig {
            method,
            num_experts,
            top_k,
            local_expert_offset: 0,
            local_num_experts: num_experts,
            tile_tokens_dim: 8,
            use_pdl: true,
        }
    }

    /// This rank owns experts `[offset, offset + count)`.
    pub fn with_local_experts(mut self, offset: u32, count: u32) -> RoutingConfig {
        self.local_expert_offset = offset;
        self.local_num_experts = count;
        self
    }

    /// Sets the permutation tile.
    pub fn with_tile_tokens_dim(mut self, tile: u32) -> RoutingConfig {
        self.tile_tokens_dim = tile;
        self
    }

    /// Turns programmatic dependent launch on or off.
    pub fn with_pdl(mut self, use_pdl: bool) -> RoutingConfig {
        self.use_pdl = use_pdl;
        self
    }

    /// The C ABI parameters of a call routing `num_tokens` rows of this config: the one place
    /// the method's own parameters become `fi_routing_params` (the safe call uses it, and so
    /// can callers of the raw bindings). Assumes a config [`validate`](Self::validate) accepts
    /// (a method without upstream kernels gets its own ABI value, which `fi_routing_run`
    /// refuses).
    pub fn raw_params(
        &self,
        num_tokens: usize,
        logits_dtype: sys::fi_dtype::Type,
        bias_dtype: sys::fi_dtype::Type,
    ) -> sys::fi_routing_params {
        let (n_group, topk_group, routed_scaling_factor) = self.method.groups_and_scale();
        sys::fi_routing_params {
            method: self.method.abi_value() as i32,
            num_tokens: num_tokens as i32,
            num_experts: self.num_experts as i32,
            top_k: self.top_k as i32,
            n_group: n_group as i32,
            topk_group: topk_group as i32,
            local_expert_offset: self.local_expert_offset as i32,
            local_num_experts: self.local_num_experts as i32,
            tile_tokens_dim: self.tile_tokens_dim as i32,
            routed_scaling_factor,
            norm_topk_prob: self.method.norm_topk_prob() as i32,
            use_pdl: self.use_pdl as i32,
            logits_dtype,
            bias_dtype,
        }
    }

    /// Checks every rule FlashInfer 0.6.13 has for this method, plus the ones it forgets: the
    /// config of upstream's routing kernels ([`Router`](super::Router), [`RoutingBuffers`](
    /// super::RoutingBuffers), the fused layers, the NoAux router). Refuses a method upstream
    /// has no kernel for ([`RoutingMethod::upstream_kernels`], e.g.
    /// [`DeepSeekV2`](RoutingMethod::DeepSeekV2)) with
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) on `method`, saying to route
    /// it with [`TopKRouter`](super::TopKRouter).
    pub fn validate(&self) -> Result<()> {
        let name = self.method.name();
        ensure(self.method.upstream_kernels(), "method", || {
            format!(
                "{name} routing has no FlashInfer kernel (upstream's routers and fused layers \
                 refuse it): route it with TopKRouter, flashinfer-rs's own top-k router"
            )
        })?;
        self.validate_topk()
    }

    /// The rules of [`TopKRouter`](super::TopKRouter) and of the oracle's
    /// [`route_topk`](super::oracle::route_topk): every method, each with the rules
    /// [`validate`](Self::validate) has for it (upstream's limits where upstream has the
    /// method; the top-k router's own otherwise).
    pub fn validate_topk(&self) -> Result<()> {
        let (e, k) = (self.num_experts, self.top_k);
        let name = self.method.name();
        ensure(e > 0, "num_experts", || "must be > 0".into())?;
        ensure(k > 0, "top_k", || "must be > 0".into())?;
        ensure(k <= e, "top_k", || {
            format!("top_k ({k}) must not exceed num_experts ({e})")
        })?;
        let lim = self.method.limits();
        ensure(e <= lim.max_experts, "num_experts", || {
            format!(
                "{name} routing supports at most {} experts in FlashInfer 0.6.13, got {e}",
                lim.max_experts
            )
        })?;
        ensure(k <= lim.max_top_k, "top_k", || {
            format!(
                "{name} routing supports top_k <= {} in FlashInfer 0.6.13, got {k}",
                lim.max_top_k
            )
        })?;
        ensure(
            self.local_expert_offset
                .checked_add(self.local_num_experts)
                .is_some_and(|end| end <= e),
            "local_num_experts",
            || {
                format!(
                    "local experts [{}, {}+{}) must lie inside [0, num_experts = {e})",
                    self.local_expert_offset, self.local_expert_offset, self.local_num_experts
                )
            },
        )?;
        let t = self.tile_tokens_dim;
        ensure(
            t.is_power_of_two() && (8..=256).contains(&t),
            "tile_tokens_dim",
            || format!("must be a power of two in 8..=256, got {t}"),
        )?;
        // The methods with a scale (DeepSeekV3, DeepSeekV2, MiniMax2) and their groups, as the
        // kernels read them (1 and ungrouped for every other method).
        let (n_group, topk_group, scale) = self.method.groups_and_scale();
        ensure(scale.is_finite(), "routed_scaling_factor", || {
            format!("must be finite, got {scale}")
        })?;
        if n_group > 1 {
            // Upstream's grouped kernels keep at most MAX_TOPK_GROUPS groups; the top-k router
            // keeps any number of DeepSeekV2's (at most 8).
            let max_kept = if matches!(self.method, RoutingMethod::DeepSeekV2 { .. }) {
                MAX_EXPERT_GROUPS
            } else {
                MAX_TOPK_GROUPS
            };
            validate_groups(name, e, k, n_group, topk_group, max_kept)?;
        }
        Ok(())
    }
}

/// The bias rule of every routing (and fused) call, and of the oracle: required by the methods
/// that add one to their keys, refused by the others, `[num_experts]` long.
pub(crate) fn check_bias(cfg: &RoutingConfig, bias_len: Option<usize>) -> Result<()> {
    let (name, e) = (cfg.method.name(), cfg.num_experts as usize);
    match (bias_len, cfg.method.needs_bias()) {
        (None, true) => Err(crate::Error::invalid(
            "bias",
            format!("{name} routing needs a bias"),
        )),
        (Some(_), false) => Err(crate::Error::invalid(
            "bias",
            format!("{name} routing takes no bias"),
        )),
        (Some(n), true) => ensure(n == e, "bias", || {
            format!("must hold num_experts ({e}) elements, holds {n}")
        }),
        (None, false) => Ok(()),
    }
}

fn validate_groups(
    name: &str,
    e: u32,
    k: u32,
    n_group: u32,
    topk_group: u32,
    max_topk_group: u32,
) -> Result<()> {
    ensure(n_group <= MAX_EXPERT_GROUPS, "n_group", || {
        format!("{name} supports at most {MAX_EXPERT_GROUPS} expert groups, got {n_group}")
    })?;
    ensure(e.is_multiple_of(n_group), "n_group", || {
        format!("num_experts ({e}) must be a multiple of n_group ({n_group})")
    })?;
    ensure(e / n_group <= MAX_EXPERTS_PER_GROUP, "n_group", || {
        format!(
            "{name} supports at most {MAX_EXPERTS_PER_GROUP} experts per group, got {e} / {n_group} = {}",
            e / n_group
        )
    })?;
    ensure(topk_group >= 1, "topk_group", || {
        "must be >= 1 with n_group > 1".into()
    })?;
    ensure(topk_group <= max_topk_group, "topk_group", || {
        format!("{name} keeps at most {max_topk_group} groups, got {topk_group}")
    })?;
    ensure(topk_group <= n_group, "topk_group", || {
        format!("topk_group ({topk_group}) must not exceed n_group ({n_group})")
    })?;
    // The kept groups must hold at least top_k experts, or the top-k is not defined.
    ensure(topk_group * (e / n_group) >= k, "top_k", || {
        format!(
            "top_k ({k}) exceeds the experts in the kept groups ({topk_group} x {} = {})",
            e / n_group,
            topk_group * (e / n_group)
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests;
