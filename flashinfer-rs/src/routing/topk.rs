//! flashinfer-rs's own "top-k only" router (flashinfer-sys/csrc/topk_router.cu): each token's experts and
//! weights in one pass over its logits, without the grouped-GEMM permutation upstream's
//! routing kernels also build. For callers with their own expert GEMMs, FlashInfer's CUTLASS
//! MoE (which takes ids and scales), and capture alone.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut, DeviceSlice};
use flashinfer_sys as sys;
use half::bf16;

use super::method::{check_bias, RoutingConfig, RoutingMethod};
use super::route::{Logits, RouteInput};
use crate::capture::LayerViews;
use crate::error::{covers, ensure, Result, MAX_TOKENS};
use crate::launch::Launch;
use crate::replay::{check_replay, ReplayView};

/// A validated [`RoutingConfig`] for the top-k router: every method and every (experts,
/// top-k) that [`RoutingConfig::validate_topk`] accepts (what [`RoutingConfig::validate`]
/// accepts, plus the methods upstream has no kernel for, e.g.
/// [`DeepSeekV2`](super::RoutingMethod::DeepSeekV2)), the same order and tie rule as the
/// oracle ([`oracle::route_topk`](super::oracle::route_topk)). The expert-parallel range and
/// `tile_tokens_dim` do not apply (ids are global; no permutation is built); `use_pdl` (on
/// in [`RoutingConfig::new`]) launches the kernel with programmatic dependent launch, so that
/// its start overlaps the end of the kernel before it (which it waits for before it reads).
#[derive(Debug, Clone, Copy)]
pub struct TopKRouter {
    plan: TopKPlan,
}

/// Where a top-k call writes, each `[>= num_tokens, top_k]` (rows past `num_tokens`
/// untouched): any of them, at least one (counting the replay buffer of
/// [`TopKRouter::route`]).
#[derive(Debug, Default)]
pub struct TopKOutputs<'a> {
    /// The chosen experts (global ids, best first).
    pub ids: Option<CudaViewMut<'a, i32>>,
    /// Their weights in fp32.
    pub weights_f32: Option<CudaViewMut<'a, f32>>,
    /// Their weights rounded to bf16.
    pub weights_bf16: Option<CudaViewMut<'a, bf16>>,
}

impl TopKRouter {
    /// Validates `cfg` once ([`TopKPlan::new`]); later calls only check their buffers.
    pub fn new(cfg: RoutingConfig) -> Result<TopKRouter> {
        Ok(TopKRouter::from_plan(TopKPlan::new(cfg)?))
    }

    /// The router of a checked plan.
    pub fn from_plan(plan: TopKPlan) -> TopKRouter {
        let cfg = plan.config();
        tracing::debug!(target: "flashinfer_rs", config = ?cfg, "routing: TopKRouter built");
        TopKRouter { plan }
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        self.plan.config()
    }

    /// Its size rules ([`TopKPlan::check_batch`] checks a call before it has buffers).
    pub fn plan(&self) -> &TopKPlan {
        &self.plan
    }

    /// [`route`](Self::route) into one layer's capture-store views
    /// ([`CaptureStore::layer_views`](crate::capture::CaptureStore::layer_views)): the ids into
    /// its replay view and, when the store captures weights, the fp32 weights into its weights
    /// view (zero-copy: the views are the store's memory). The captured form of every router
    /// and layer takes the same views.
    pub fn route_captured(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        views: LayerViews<'_>,
    ) -> Result<()> {
        let LayerViews { mut ids, weights } = views;
        let mut outputs = TopKOutputs {
            ids: None,
            weights_f32: weights,
            weights_bf16: None,
        };
        self.route(stream, input, &mut outputs, Some(&mut ids))
    }

    /// Routes `input.num_tokens` tokens on `stream`: one kernel reads each row of logits
    /// once and writes the chosen experts into `outputs.ids` and `routing_replay_out` (int16,
    /// the capture store's layer views), their weights into `outputs.weights_*`. Nothing is
    /// allocated and nothing synchronises, so the call can be recorded into a CUDA graph. The
    /// bias is added as given, in fp32 (widened exactly from bf16).
    pub fn route(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        outputs: &mut TopKOutputs<'_>,
        routing_replay_out: Option<&mut ReplayView<'_>>,
    ) -> Result<()> {
        let t = input.num_tokens;
        self.plan.check_batch(&TopKBatchSizes {
            num_tokens: t,
            logits: input.logits.len(),
            bias: input.bias.as_ref().map(Logits::len),
            ids: outputs.ids.as_ref().map(DeviceSlice::len),
            weights_f32: outputs.weights_f32.as_ref().map(DeviceSlice::len),
            weights_bf16: outputs.weights_bf16.as_ref().map(DeviceSlice::len),
            replay: routing_replay_out.as_deref().map(|r| (r.rows(), r.cols())),
        })?;
        let mut l = Launch::new(stream);
        let logits = l.input("logits", &input.logits);
        let bias = l.input_opt("bias", input.bias.as_ref());
        let ids = l.output_opt("ids", outputs.ids.as_mut());
        let weights_f32 = l.output_opt("weights_f32", outputs.weights_f32.as_mut());
        let weights_bf16 = l.output_opt("weights_bf16", outputs.weights_bf16.as_mut());
        let replay = l.output_opt("replay", routing_replay_out);
        l.check()?;
        if t == 0 {
            return Ok(());
        }

        let params = self.params(t, input);
        l.call(|p| {
            let buffers = sys::fi_topk_buffers {
                logits: p.ro(logits),
                bias: p.ro(bias),
                ids_i16: p.rw(replay),
                ids_i32: p.rw(ids),
                weights_f32: p.rw(weights_f32),
                weights_bf16: p.rw(weights_bf16),
            };
            // SAFETY: the launch's guarantees (an absent buffer is null), and every buffer
            // sized for this call (`check_batch`).
            unsafe { sys::fi_topk_route(&params, &buffers, p.stream()) }
        })
    }

    fn params(&self, t: usize, input: &RouteInput<'_>) -> sys::fi_topk_params {
        let c = self.plan.config();
        let (n_group, topk_group, scale) = c.method.groups_and_scale();
        sys::fi_topk_params {
            method: c.method.abi_value() as i32,
            num_tokens: t as i32,
            num_experts: c.num_experts as i32,
            top_k: c.top_k as i32,
            n_group: n_group as i32,
            topk_group: topk_group as i32,
            routed_scaling_factor: scale,
            norm_topk_prob: c.method.norm_topk_prob() as i32,
            logits_dtype: input.logits.dtype(),
            bias_dtype: input
                .bias
                .as_ref()
                .map_or(sys::fi_dtype::FI_DTYPE_F32, Logits::dtype),
            use_pdl: c.use_pdl as i32,
        }
    }
}

/// The sizes of one [`TopKRouter::route`] call: what [`TopKPlan::check_batch`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopKBatchSizes {
    /// Rows to route.
    pub num_tokens: usize,
    /// Elements of the logits.
    pub logits: usize,
    /// Elements of the bias, if one is given.
    pub bias: Option<usize>,
    /// Elements of the int32 ids output, if given.
    pub ids: Option<usize>,
    /// Elements of the fp32 weights output, if given.
    pub weights_f32: Option<usize>,
    /// Elements of the bf16 weights output, if given.
    pub weights_bf16: Option<usize>,
    /// `(rows, cols)` of the replay buffer, if given.
    pub replay: Option<(usize, usize)>,
}

/// The size rules of [`TopKRouter`]: built from a config the top-k router takes, then
/// [`check_batch`](Self::check_batch) per call, on sizes alone (no device, no buffers).
/// [`TopKRouter::new`] builds one and [`TopKRouter::route`] checks every call with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TopKPlan {
    cfg: RoutingConfig,
}

impl TopKPlan {
    /// Validates `cfg` ([`RoutingConfig::validate_topk`]). Grouped DeepSeekV3 needs at least
    /// 2 experts per group here (each group is scored by its two best experts, as the model's
    /// reference router does), which [`RoutingConfig::validate`] alone admits.
    pub fn new(cfg: RoutingConfig) -> Result<TopKPlan> {
        cfg.validate_topk()?;
        if let RoutingMethod::DeepSeekV3 { n_group, .. } = cfg.method {
            let per = cfg.num_experts / n_group.max(1);
            ensure(n_group <= 1 || per >= 2, "n_group", || {
                format!(
                    "the top-k router scores each group by its two best experts: {} experts in \
                     {n_group} groups leave {per} per group",
                    cfg.num_experts
                )
            })?;
        }
        Ok(TopKPlan { cfg })
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// Every per-call rule of [`TopKRouter::route`], on sizes: the token count, the logits,
    /// the bias, each output given and the replay buffer, and at least one output.
    pub fn check_batch(&self, c: &TopKBatchSizes) -> Result<()> {
        let cfg = &self.cfg;
        let (t, e, k) = (c.num_tokens, cfg.num_experts as usize, cfg.top_k as usize);
        ensure(t <= MAX_TOKENS, "num_tokens", || {
            format!("{t} exceeds the kernels' int32 token count")
        })?;
        ensure(covers(c.logits, t, e), "logits", || {
            format!(
                "holds {}, {t} tokens x {e} experts need {}",
                c.logits,
                t as u128 * e as u128
            )
        })?;
        check_bias(cfg, c.bias)?;
        for (name, len) in [
            ("ids", c.ids),
            ("weights_f32", c.weights_f32),
            ("weights_bf16", c.weights_bf16),
        ] {
            ensure(len.is_none_or(|n| covers(n, t, k)), name, || {
                format!(
                    "holds {}, {t} tokens x top_k {k} need {}",
                    len.unwrap_or(0),
                    t as u128 * k as u128
                )
            })?;
        }
        if let Some((rows, cols)) = c.replay {
            check_replay(rows, cols, t, k)?;
        }
        let writes_any = c.ids.is_some()
            || c.weights_f32.is_some()
            || c.weights_bf16.is_some()
            || c.replay.is_some();
        ensure(writes_any, "outputs", || {
            "a call must write ids, weights or a replay buffer".into()
        })
    }
}

#[cfg(test)]
mod tests;
