//! Every rule of the CUTLASS MoE on sizes, checked before anything is launched (tested on
//! CPU): the layer's (routing, sizes, expert range, weights) once by [`CutlassPlan::new`],
//! each batch's by [`CutlassPlan::check_batch`].

use crate::error::{covers, ensure, Result, MAX_TOKENS};
use crate::routing::{RoutingConfig, TopKBatchSizes, TopKPlan};

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

/// The dequantisation scales of an fp8 per-tensor layer ([`CutlassMoe::new_fp8`](super::CutlassMoe::new_fp8)), as fp8
/// checkpoints with static activation scales ship them (ModelOpt, compressed-tensors
/// "tensor" strategy; vLLM's `w13_weight_scale`, `w13_input_scale`, ...): a real value is its
/// e4m3 code times its scale. Checked at construction: every scale finite and positive.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CutlassFp8Scales {
    /// GEMM 1's weight scale per local expert, `[local_experts]`: the expert's up and gate
    /// rows share it (a checkpoint with one per projection is requantised to their maximum,
    /// as vLLM does: [`prepare::fp8_shared_scale`](super::prepare::fp8_shared_scale)).
    pub fc1_weights: Vec<f32>,
    /// GEMM 2's (down) weight scale per local expert, `[local_experts]`.
    pub fc2_weights: Vec<f32>,
    /// The hidden states' scale (static): each token is quantised as `e4m3(x / fc1_input)`,
    /// saturating at ±448.
    pub fc1_input: f32,
    /// The SwiGLU output's scale (static), quantised likewise before GEMM 2.
    pub fc2_input: f32,
}

/// The size rules of [`CutlassMoe`](super::CutlassMoe): a layer checked once by
/// [`new`](Self::new) (its config, expert range and weights' lengths, and the rules of its
/// top-k router), then [`check_batch`](Self::check_batch) per call, on sizes alone (no
/// device, no buffers: a server can check a batch before it has them).
/// [`CutlassMoe::new`](super::CutlassMoe::new) builds one and
/// [`CutlassMoe::forward`](super::CutlassMoe::forward) checks every call with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CutlassPlan {
    config: CutlassMoeConfig,
    /// The rules of the layer's top-k router.
    router: TopKPlan,
    /// Expert-parallel ranks and this one's index: the local range is
    /// `[rank * E / size, (rank + 1) * E / size)`.
    ep_size: usize,
    ep_rank: usize,
}

const MAX_DIM: usize = 1 << 16;

impl CutlassPlan {
    /// Checks a layer's config and its weights' lengths in elements (`fc1`: GEMM 1's
    /// `[local_experts, 2 * intermediate_size, hidden_size]`, `fc2`: GEMM 2's
    /// `[local_experts, hidden_size, intermediate_size]`), then its top-k router's config
    /// ([`TopKPlan::new`]).
    pub fn new(config: CutlassMoeConfig, fc1: usize, fc2: usize) -> Result<CutlassPlan> {
        let (ep_size, ep_rank) = check_layer(config, fc1, fc2)?;
        Ok(CutlassPlan {
            config,
            router: TopKPlan::new(config.routing)?,
            ep_size,
            ep_rank,
        })
    }

    /// The checked config.
    pub fn config(&self) -> &CutlassMoeConfig {
        &self.config
    }

    /// The rules of the layer's top-k router.
    pub fn router(&self) -> &TopKPlan {
        &self.router
    }

    /// Expert-parallel ranks (`num_experts / local_num_experts`).
    pub fn ep_size(&self) -> usize {
        self.ep_size
    }

    /// This rank's index among them (`local_expert_offset / local_num_experts`).
    pub fn ep_rank(&self) -> usize {
        self.ep_rank
    }

    pub(crate) fn experts(&self) -> usize {
        self.config.routing.num_experts as usize
    }
    pub(crate) fn top_k(&self) -> usize {
        self.config.routing.top_k as usize
    }
    /// Elements of GEMM 1's weights: `[local, 2 * intermediate, hidden]`.
    pub fn fc1_len(&self) -> usize {
        weight_lens(&self.config).0
    }
    /// Elements of GEMM 2's weights: `[local, hidden, intermediate]`.
    pub fn fc2_len(&self) -> usize {
        weight_lens(&self.config).1
    }
    /// Elements of the routed ids (and of the scales) at `max_tokens`.
    pub(crate) fn routed_len(&self) -> usize {
        self.config.max_tokens * self.top_k()
    }

    /// The rules on an fp8 layer's scales: one weight scale per local expert and GEMM, and
    /// every scale (and its reciprocal, and each product the kernels use) finite and positive.
    pub fn check_fp8_scales(&self, s: &CutlassFp8Scales) -> Result<()> {
        let local = self.config.routing.local_num_experts as usize;
        for (name, w) in [
            ("fc1_weights", &s.fc1_weights),
            ("fc2_weights", &s.fc2_weights),
        ] {
            ensure(w.len() == local, name, || {
                format!(
                    "holds {} scales, the layer has {local} local experts",
                    w.len()
                )
            })?;
        }
        let finite = |v: f32| v.is_finite() && v > 0.0 && (1.0 / v).is_finite();
        for (name, input, weights) in [
            ("fc1", s.fc1_input, &s.fc1_weights),
            ("fc2", s.fc2_input, &s.fc2_weights),
        ] {
            ensure(finite(input), name, || {
                format!("input scale {input} is not a finite positive number")
            })?;
            if let Some((e, w)) = weights
                .iter()
                .enumerate()
                .find(|&(_, &w)| !finite(w) || !finite(input * w))
            {
                return Err(crate::error::Error::invalid(
                    name,
                    format!(
                        "weight scale {w} of local expert {e} (times the input scale {input}) is \
                         not a finite positive number"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl CutlassPlan {
    /// The rules of an fp8 block-scale layer ([`CutlassMoe::new_fp8_blocks`](super::CutlassMoe::new_fp8_blocks)):
    /// hidden and intermediate sizes multiples of 128 (the weight blocks and activation groups
    /// tile them, each half of GEMM 1's rows too) and at most 20480 (the block-scale GEMM keeps
    /// a row of `K / 128` weight scales in shared memory); and the lengths of the block scales,
    /// GEMM 1's `[local_experts, 2 * intermediate / 128, hidden / 128]` and GEMM 2's
    /// `[local_experts, hidden / 128, intermediate / 128]`.
    pub fn check_fp8_blocks(&self, fc1_scales: usize, fc2_scales: usize) -> Result<()> {
        let (h, i) = (self.config.hidden_size, self.config.intermediate_size);
        for (name, v) in [("hidden_size", h), ("intermediate_size", i)] {
            ensure(
                v.is_multiple_of(FP8_BLOCK) && v <= FP8_BLOCK_MAX_DIM,
                name,
                || {
                    format!(
                        "{v}: fp8 block-scale layers need a multiple of {FP8_BLOCK} up to \
                         {FP8_BLOCK_MAX_DIM}"
                    )
                },
            )?;
        }
        let local = self.config.routing.local_num_experts as usize;
        let (hb, ib) = (h / FP8_BLOCK, i / FP8_BLOCK);
        for (name, len, need, shape) in [
            (
                "fc1 scales",
                fc1_scales,
                local * 2 * ib * hb,
                "[local_experts, 2 * intermediate / 128, hidden / 128]",
            ),
            (
                "fc2 scales",
                fc2_scales,
                local * hb * ib,
                "[local_experts, hidden / 128, intermediate / 128]",
            ),
        ] {
            ensure(len == need, name, || {
                format!("holds {len} scales, {shape} is {need}")
            })?;
        }
        Ok(())
    }
}

/// The side of an fp8 block-scale layer's weight blocks and activation groups.
const FP8_BLOCK: usize = 128;
/// The largest K the block-scale GEMM takes (upstream's `Fp8Gemm::MAX_SHAPE_K`).
const FP8_BLOCK_MAX_DIM: usize = 20480;

/// Elements of GEMM 1's and GEMM 2's weights of a config whose sizes are checked.
fn weight_lens(config: &CutlassMoeConfig) -> (usize, usize) {
    let local = config.routing.local_num_experts as usize;
    let (h, i) = (config.hidden_size, config.intermediate_size);
    (local * 2 * i * h, local * h * i)
}

/// The layer's own rules (its router's come after them); its expert-parallel size and rank.
fn check_layer(config: CutlassMoeConfig, fc1: usize, fc2: usize) -> Result<(usize, usize)> {
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
    let (fc1_len, fc2_len) = weight_lens(&config);
    for (name, len, need) in [("fc1", fc1, fc1_len), ("fc2", fc2, fc2_len)] {
        ensure(len == need, name, || {
            let shape = if name == "fc1" {
                "[local_experts, 2 * intermediate_size, hidden_size]"
            } else {
                "[local_experts, hidden_size, intermediate_size]"
            };
            format!("holds {len} elements, {shape} is {need}")
        })?;
    }
    Ok((e / local, offset / local))
}

/// Where one call's routing comes from, by sizes (a [`CutlassRouting`](super::CutlassRouting)'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutlassRoutingSizes {
    /// Logits (and bias) routed by the layer's top-k router.
    Logits {
        /// Elements of the logits.
        logits: usize,
        /// Elements of the bias, if one is given.
        bias: Option<usize>,
    },
    /// The caller's ids and scales.
    Precomputed {
        /// Elements of the int32 ids.
        ids: usize,
        /// Elements of the fp32 scales.
        scales: usize,
    },
}

/// The sizes of one [`CutlassMoe::forward`](super::CutlassMoe::forward) call: what
/// [`CutlassPlan::check_batch`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutlassBatchSizes {
    /// Tokens in the call.
    pub num_tokens: usize,
    /// Its routing.
    pub routing: CutlassRoutingSizes,
    /// Elements of the activations.
    pub hidden_states: usize,
    /// Elements of the output.
    pub output: usize,
    /// `(rows, cols)` of the replay buffer, if given.
    pub replay: Option<(usize, usize)>,
    /// Elements of the captured weights view, when the router writes the scales into one.
    pub captured_weights: Option<usize>,
}

impl CutlassPlan {
    /// Every per-call rule of [`CutlassMoe::forward`](super::CutlassMoe::forward), on sizes:
    /// the token count, the activations and output, the routing (the top-k router's own
    /// rules, or the precomputed ids' and scales'), the replay buffer and captured weights.
    pub fn check_batch(&self, b: &CutlassBatchSizes) -> Result<()> {
        check_batch(self, b)
    }
}

fn check_batch(plan: &CutlassPlan, b: &CutlassBatchSizes) -> Result<()> {
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
        CutlassRoutingSizes::Logits { logits, bias } => {
            plan.router.check_batch(&TopKBatchSizes {
                num_tokens: t,
                logits,
                bias,
                ids: Some(t * k),
                weights_f32: Some(t * k),
                weights_bf16: None,
                replay: b.replay,
            })?
        }
        CutlassRoutingSizes::Precomputed { ids, scales } => {
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
