//! Every rule of the CUTLASS MoE on sizes, checked before anything is launched (tested on
//! CPU): the layer's (routing, sizes, expert range, weights) once, each batch's per call.

use crate::error::{covers, ensure, Result, MAX_TOKENS};
use crate::routing::{validate_topk_call, RoutingConfig, TopKCallSizes};

/// The sizes a layer is built for.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CutlassMoeConfig {
    /// Routing method, experts, top-k and this rank's expert range
    /// ([`RoutingConfig::with_local_experts`]); `tile_tokens_dim` and `use_pdl` do not apply.
    pub routing: RoutingConfig,
    /// Hidden size (columns of the activations): a positive multiple of 64, at most 65536.
    pub hidden_size: usize,
    /// Intermediate size of each expert: a positive multiple of 64, at most 65536.
    pub intermediate_size: usize,
    /// The most tokens one call takes (sizes the workspace).
    pub max_tokens: usize,
}

/// A checked layer: its sizes and expert parallelism.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LayerPlan {
    pub config: CutlassMoeConfig,
    /// Expert-parallel ranks and this one's index: the local range is
    /// `[rank * E / size, (rank + 1) * E / size)`.
    pub ep_size: usize,
    pub ep_rank: usize,
}

impl LayerPlan {
    pub fn experts(&self) -> usize {
        self.config.routing.num_experts as usize
    }
    pub fn top_k(&self) -> usize {
        self.config.routing.top_k as usize
    }
    pub fn local_experts(&self) -> usize {
        self.config.routing.local_num_experts as usize
    }
    /// Elements of GEMM 1's weights: `[local, 2 * intermediate, hidden]`.
    pub fn fc1_len(&self) -> usize {
        self.local_experts() * 2 * self.config.intermediate_size * self.config.hidden_size
    }
    /// Elements of GEMM 2's weights: `[local, hidden, intermediate]`.
    pub fn fc2_len(&self) -> usize {
        self.local_experts() * self.config.hidden_size * self.config.intermediate_size
    }
    /// Elements of the routed ids (and of the scales) at `max_tokens`.
    pub fn routed_len(&self) -> usize {
        self.config.max_tokens * self.top_k()
    }
}

const MAX_DIM: usize = 1 << 16;

/// Checks a layer's config and its weights' lengths.
pub(crate) fn plan_layer(config: CutlassMoeConfig, fc1: usize, fc2: usize) -> Result<LayerPlan> {
    let r = &config.routing;
    r.validate()?;
    for (name, v) in [
        ("hidden_size", config.hidden_size),
        ("intermediate_size", config.intermediate_size),
    ] {
        ensure(v > 0 && v % 64 == 0 && v <= MAX_DIM, name, || {
            format!("{v} is not a positive multiple of 64 up to {MAX_DIM}")
        })?;
    }
    let (e, local, offset) = (
        r.num_experts as usize,
        r.local_num_experts as usize,
        r.local_expert_offset as usize,
    );
    // The runner's expert parallelism is E / ep_size contiguous experts at rank * that.
    ensure(
        local > 0 && e.is_multiple_of(local) && offset.is_multiple_of(local),
        "routing",
        || {
            format!(
                "local experts [{offset}, {}) of {e}: the CUTLASS MoE splits experts into equal \
                 contiguous ranges (count dividing num_experts, offset a multiple of count)",
                offset + local
            )
        },
    )?;
    let t = config.max_tokens;
    ensure(t > 0 && t <= MAX_TOKENS, "max_tokens", || {
        format!("{t} is not in 1..={MAX_TOKENS}")
    })?;
    ensure(
        t.checked_mul(e).is_some_and(|n| n <= MAX_TOKENS),
        "max_tokens",
        || format!("{t} tokens x {e} experts exceed the runner's int32 row maps"),
    )?;
    let plan = LayerPlan {
        config,
        ep_size: e / local,
        ep_rank: offset / local,
    };
    for (name, len, need) in [("fc1", fc1, plan.fc1_len()), ("fc2", fc2, plan.fc2_len())] {
        ensure(len == need, name, || {
            let shape = if name == "fc1" {
                "[local_experts, 2 * intermediate_size, hidden_size]"
            } else {
                "[local_experts, hidden_size, intermediate_size]"
            };
            format!("holds {len} elements, {shape} is {need}")
        })?;
    }
    Ok(plan)
}

/// Where one call's routing comes from, by sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RoutingSizes {
    /// Logits (and bias) routed by the layer's top-k router.
    Logits { logits: usize, bias: Option<usize> },
    /// The caller's ids and scales.
    Precomputed { ids: usize, scales: usize },
}

/// One call, by sizes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchSizes {
    pub num_tokens: usize,
    pub routing: RoutingSizes,
    pub hidden_states: usize,
    pub output: usize,
    /// `(rows, cols)` of the replay buffer.
    pub replay: Option<(usize, usize)>,
    /// Elements of the captured weights view, when the router writes the scales into one.
    pub captured_weights: Option<usize>,
}

/// Every per-call rule of [`CutlassMoe::forward`](super::CutlassMoe::forward), on sizes.
pub(crate) fn check_batch(plan: &LayerPlan, b: &BatchSizes) -> Result<()> {
    let (t, h, k) = (b.num_tokens, plan.config.hidden_size, plan.top_k());
    let max = plan.config.max_tokens;
    ensure(t <= max, "num_tokens", || {
        format!("{t} exceeds the layer's max_tokens ({max})")
    })?;
    for (name, len) in [("hidden_states", b.hidden_states), ("output", b.output)] {
        ensure(covers(len, t, h), name, || {
            format!("holds {len}, {t} tokens x hidden {h} need {}", t * h)
        })?;
    }
    match b.routing {
        // The layer's top-k router's own rules (logits, bias, replay), its outputs being the
        // workspace's `[num_tokens, top_k]` ids and scales.
        RoutingSizes::Logits { logits, bias } => validate_topk_call(
            &plan.config.routing,
            &TopKCallSizes {
                num_tokens: t,
                logits,
                bias,
                ids: Some(t * k),
                weights_f32: Some(t * k),
                weights_bf16: None,
                replay: b.replay,
            },
        )?,
        RoutingSizes::Precomputed { ids, scales } => {
            ensure(
                b.replay.is_none() && b.captured_weights.is_none(),
                "routing_replay_out",
                || "precomputed ids are the caller's own: there is no routing to replay".into(),
            )?;
            for (name, len) in [("ids", ids), ("scales", scales)] {
                ensure(covers(len, t, k), name, || {
                    format!("holds {len}, {t} tokens x top_k {k} need {}", t * k)
                })?;
            }
        }
    }
    if let Some(len) = b.captured_weights {
        ensure(covers(len, t, k), "views.weights", || {
            format!("holds {len}, {t} tokens x top_k {k} need {}", t * k)
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
