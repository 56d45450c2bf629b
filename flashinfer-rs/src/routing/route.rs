//! The routing call: logits in, expert weights, permutation data and (optionally) the
//! routed expert ids written straight into a caller's replay buffer.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceSlice};
use flashinfer_sys as sys;
use half::bf16;

use super::method::{check_bias, RoutingConfig};
use crate::capture::LayerViews;
use crate::error::{covers, ensure, Error, Result, MAX_TOKENS};
use crate::ffi::check;
use crate::launch::Launch;
use crate::replay::{check_replay, ReplayView};

/// Router logits `[num_tokens, num_experts]`, row-major, in either dtype the kernels take.
#[derive(Debug)]
pub enum Logits<'a> {
    /// fp32 logits (DeepSeek-V3 style routers).
    F32(CudaView<'a, f32>),
    /// bf16 logits (most others).
    Bf16(CudaView<'a, bf16>),
}

impl<'a> From<&'a CudaSlice<f32>> for Logits<'a> {
    fn from(s: &'a CudaSlice<f32>) -> Self {
        Logits::F32(s.as_view())
    }
}
impl<'a> From<&'a CudaSlice<bf16>> for Logits<'a> {
    fn from(s: &'a CudaSlice<bf16>) -> Self {
        Logits::Bf16(s.as_view())
    }
}
impl<'a> From<CudaView<'a, f32>> for Logits<'a> {
    fn from(s: CudaView<'a, f32>) -> Self {
        Logits::F32(s)
    }
}
impl<'a> From<CudaView<'a, bf16>> for Logits<'a> {
    fn from(s: CudaView<'a, bf16>) -> Self {
        Logits::Bf16(s)
    }
}

/// The element type of [`Logits`] (and of a [`Bias`]), as the size rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogitsDtype {
    /// fp32.
    F32,
    /// bf16.
    Bf16,
}

impl Logits<'_> {
    /// Which element type these logits hold.
    pub fn logits_dtype(&self) -> LogitsDtype {
        match self {
            Logits::F32(_) => LogitsDtype::F32,
            Logits::Bf16(_) => LogitsDtype::Bf16,
        }
    }
    pub(crate) fn len(&self) -> usize {
        match self {
            Logits::F32(v) => v.len(),
            Logits::Bf16(v) => v.len(),
        }
    }
    pub(crate) fn dtype(&self) -> sys::fi_dtype::Type {
        match self {
            Logits::F32(_) => sys::fi_dtype::FI_DTYPE_F32,
            Logits::Bf16(_) => sys::fi_dtype::FI_DTYPE_BF16,
        }
    }
    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        match self {
            Logits::F32(v) => v.stream(),
            Logits::Bf16(v) => v.stream(),
        }
    }
}

/// Per-expert selection bias `[num_experts]` (DeepSeekV3, MiniMax2), fp32 or bf16. The same
/// type as [`Logits`]; the name says what it holds.
pub type Bias<'a> = Logits<'a>;

/// Device buffers the routing kernels write, allocated once for up to `max_tokens` and reused
/// call after call: fixed addresses, so a routing call recorded into a CUDA graph stays valid.
///
/// Besides the weights they hold the permutation a grouped GEMM consumes (token → padded
/// slot, slot → token, per-expert counts, CTA → expert tables).
pub struct RoutingBuffers {
    max_tokens: usize,
    top_k: usize,
    num_experts: usize,
    tile_tokens_dim: usize,
    topk_weights: CudaSlice<bf16>,
    /// Expert ids of calls made without a replay buffer (the kernels write ids only into a
    /// replay-shaped buffer; with the caller's replay buffer they go there instead).
    topk_ids: CudaSlice<i16>,
    /// `{bf16 score, i16 expert}` pairs, 4 bytes each; opaque to Rust.
    topk_packed: CudaSlice<u32>,
    expert_counts: CudaSlice<i32>,
    permuted_idx_size: CudaSlice<i32>,
    expanded_idx_to_permuted_idx: CudaSlice<i32>,
    permuted_idx_to_token_idx: CudaSlice<i32>,
    cta_idx_xy_to_batch_idx: CudaSlice<i32>,
    cta_idx_xy_to_mn_limit: CudaSlice<i32>,
    num_non_exiting_ctas: CudaSlice<i32>,
}

impl std::fmt::Debug for RoutingBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingBuffers")
            .field("max_tokens", &self.max_tokens)
            .field("top_k", &self.top_k)
            .field("num_experts", &self.num_experts)
            .field("tile_tokens_dim", &self.tile_tokens_dim)
            .finish_non_exhaustive()
    }
}

/// Element counts of each routing buffer (upstream's own sizing rules).
fn buffer_sizes(tokens: usize, cfg: &RoutingConfig) -> Result<sys::fi_routing_buffer_sizes> {
    let tokens =
        i32::try_from(tokens).map_err(|_| Error::invalid("max_tokens", "must fit in i32"))?;
    let mut sizes = sys::fi_routing_buffer_sizes::default();
    // SAFETY: host arithmetic only; `sizes` is a valid out-pointer.
    check(unsafe {
        sys::fi_routing_buffer_sizes_for(
            tokens,
            cfg.top_k as i32,
            cfg.num_experts as i32,
            cfg.tile_tokens_dim as i32,
            &mut sizes,
        )
    })?;
    Ok(sizes)
}

impl RoutingBuffers {
    /// Allocates buffers for up to `max_tokens` tokens of `cfg` on `stream` (stream-ordered,
    /// zero-filled; the one place routing allocates).
    pub fn new(
        stream: &Arc<CudaStream>,
        cfg: &RoutingConfig,
        max_tokens: usize,
    ) -> Result<RoutingBuffers> {
        cfg.validate()?;
        ensure(max_tokens > 0, "max_tokens", || "must be > 0".into())?;
        ensure(
            max_tokens
                .checked_mul(cfg.num_experts as usize)
                .is_some_and(|n| n <= i32::MAX as usize),
            "max_tokens",
            || {
                format!(
                    "max_tokens x num_experts must fit in i32, got {max_tokens} x {}",
                    cfg.num_experts
                )
            },
        )?;
        let s = buffer_sizes(max_tokens, cfg)?;
        let n = |x: i64| x.max(1) as usize;
        Ok(RoutingBuffers {
            max_tokens,
            top_k: cfg.top_k as usize,
            num_experts: cfg.num_experts as usize,
            tile_tokens_dim: cfg.tile_tokens_dim as usize,
            topk_weights: stream.alloc_zeros(n(s.topk))?,
            topk_ids: stream.alloc_zeros(n(s.topk))?,
            topk_packed: stream.alloc_zeros(n(s.topk))?,
            expert_counts: stream.alloc_zeros(n(s.expert_counts))?,
            permuted_idx_size: stream.alloc_zeros(1)?,
            expanded_idx_to_permuted_idx: stream.alloc_zeros(n(s.topk))?,
            permuted_idx_to_token_idx: stream.alloc_zeros(n(s.max_padded))?,
            cta_idx_xy_to_batch_idx: stream.alloc_zeros(n(s.max_ctas))?,
            cta_idx_xy_to_mn_limit: stream.alloc_zeros(n(s.max_ctas))?,
            num_non_exiting_ctas: stream.alloc_zeros(1)?,
        })
    }

    /// Most tokens one call may route with these buffers.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Weights of the chosen experts, bf16 `[max_tokens, top_k]`; rows `[0, num_tokens)` of
    /// the last call are valid.
    pub fn topk_weights(&self) -> &CudaSlice<bf16> {
        &self.topk_weights
    }

    /// Chosen expert ids, int16 `[max_tokens, top_k]` (global ids, best first), of the last
    /// call made **without** a replay buffer; a call with one writes its ids there instead,
    /// so the ids are written once either way and never copied.
    pub fn topk_ids(&self) -> &CudaSlice<i16> {
        &self.topk_ids
    }

    /// `expanded_idx_to_permuted_idx[t * top_k + k]`: the padded slot of token `t`'s k-th
    /// expert in the permuted (grouped-GEMM) order, or -1 when that expert is not local.
    pub fn expanded_idx_to_permuted_idx(&self) -> &CudaSlice<i32> {
        &self.expanded_idx_to_permuted_idx
    }

    /// `permuted_idx_to_token_idx[slot]`: the token in a padded slot (valid below
    /// `permuted_idx_size`).
    pub fn permuted_idx_to_token_idx(&self) -> &CudaSlice<i32> {
        &self.permuted_idx_to_token_idx
    }

    /// One element: the padded token count after permutation.
    pub fn permuted_idx_size(&self) -> &CudaSlice<i32> {
        &self.permuted_idx_size
    }

    /// Per-expert histogram scratch (the first `num_experts` hold the counts after a call on
    /// the multi-kernel tiers).
    pub fn expert_counts(&self) -> &CudaSlice<i32> {
        &self.expert_counts
    }

    /// CTA → local expert table of the grouped GEMM.
    pub fn cta_idx_xy_to_batch_idx(&self) -> &CudaSlice<i32> {
        &self.cta_idx_xy_to_batch_idx
    }

    /// CTA → row limit table of the grouped GEMM.
    pub fn cta_idx_xy_to_mn_limit(&self) -> &CudaSlice<i32> {
        &self.cta_idx_xy_to_mn_limit
    }

    /// One element: CTAs of the grouped GEMM that do work.
    pub fn num_non_exiting_ctas(&self) -> &CudaSlice<i32> {
        &self.num_non_exiting_ctas
    }

    /// What these buffers were allocated for: the `buffers` of a [`RouteBatchSizes`].
    pub fn shape(&self) -> RoutingBuffersShape {
        RoutingBuffersShape {
            max_tokens: self.max_tokens,
            num_experts: self.num_experts,
            top_k: self.top_k,
            tile_tokens_dim: self.tile_tokens_dim,
        }
    }
}

/// What a set of [`RoutingBuffers`] was allocated for ([`RoutingBuffers::shape`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RoutingBuffersShape {
    /// Most tokens one call may route with them.
    pub max_tokens: usize,
    /// The config's `num_experts`.
    pub num_experts: usize,
    /// The config's `top_k`.
    pub top_k: usize,
    /// The config's `tile_tokens_dim`.
    pub tile_tokens_dim: usize,
}

/// The sizes of one [`Router::route`] call: what [`RoutePlan::check_batch`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RouteBatchSizes {
    /// Rows to route.
    pub num_tokens: usize,
    /// Elements of the logits.
    pub logits: usize,
    /// Elements of the bias, if one is given.
    pub bias: Option<usize>,
    /// `(rows, cols)` of the replay buffer, if one is given.
    pub replay: Option<(usize, usize)>,
    /// The routing buffers the call writes.
    pub buffers: RoutingBuffersShape,
}

/// The size rules of [`Router`]: built from a config [`RoutingConfig::validate`] accepts,
/// then [`check_batch`](Self::check_batch) per call, on sizes alone (no device, no buffers:
/// a server can check a batch before it has them). [`Router::new`] builds one and
/// [`Router::route`] checks every call with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutePlan {
    cfg: RoutingConfig,
}

impl RoutePlan {
    /// Validates `cfg` ([`RoutingConfig::validate`]).
    pub fn new(cfg: RoutingConfig) -> Result<RoutePlan> {
        cfg.validate()?;
        Ok(RoutePlan { cfg })
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// Every per-call rule of [`Router::route`], on sizes: the buffers' shape, the token
    /// count, the logits, the bias and the replay buffer ([`Error::InvalidArgument`] naming
    /// the argument).
    pub fn check_batch(&self, b: &RouteBatchSizes) -> Result<()> {
        let (cfg, buffers) = (&self.cfg, &b.buffers);
        let (t, e, k) = (b.num_tokens, cfg.num_experts as usize, cfg.top_k as usize);
        ensure(
            buffers.top_k == k
                && buffers.num_experts == e
                && buffers.tile_tokens_dim == cfg.tile_tokens_dim as usize,
            "buffers",
            || {
                format!(
                    "allocated for (num_experts {}, top_k {}, tile {}), the router has ({e}, {k}, {})",
                    buffers.num_experts, buffers.top_k, buffers.tile_tokens_dim, cfg.tile_tokens_dim
                )
            },
        )?;
        ensure(t <= buffers.max_tokens, "num_tokens", || {
            format!(
                "{t} tokens exceed the buffers' max_tokens ({})",
                buffers.max_tokens
            )
        })?;
        ensure(t <= MAX_TOKENS, "num_tokens", || {
            format!("{t} exceeds the kernels' int32 token count")
        })?;
        ensure(covers(b.logits, t, e), "logits", || {
            format!(
                "holds {} elements, {t} tokens x {e} experts need {}",
                b.logits,
                t as u128 * e as u128
            )
        })?;
        check_bias(cfg, b.bias)?;
        match b.replay {
            Some((rows, cols)) => check_replay(rows, cols, t, k),
            None => Ok(()),
        }
    }
}

/// A validated [`RoutingConfig`], ready to route.
#[derive(Debug, Clone, Copy)]
pub struct Router {
    plan: RoutePlan,
}

/// One routing call's inputs.
#[derive(Debug)]
pub struct RouteInput<'a> {
    /// `[>= num_tokens, num_experts]` logits; rows past `num_tokens` are not read.
    pub logits: Logits<'a>,
    /// `[num_experts]` bias: required by DeepSeekV3 and MiniMax2, refused by the others.
    pub bias: Option<Bias<'a>>,
    /// Rows to route.
    pub num_tokens: usize,
}

impl Router {
    /// Validates `cfg` once; later calls only check their buffers.
    pub fn new(cfg: RoutingConfig) -> Result<Router> {
        let plan = RoutePlan::new(cfg)?;
        tracing::debug!(target: "flashinfer_rs", config = ?cfg, "routing: Router built");
        Ok(Router { plan })
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        self.plan.config()
    }

    /// Its size rules ([`RoutePlan::check_batch`] checks a call before it has buffers).
    pub fn plan(&self) -> &RoutePlan {
        &self.plan
    }

    /// [`route`](Self::route) into one layer's capture-store views
    /// ([`CaptureStore::layer_views`](crate::capture::CaptureStore::layer_views)), the captured
    /// form every router and layer has: the ids into its replay view. Upstream's routing
    /// kernels write the weights in bf16 into `buffers` (where the fused MoE reads them), not in
    /// fp32 into a store: a store that captures weights is refused (capture them with
    /// [`TopKRouter::route_captured`](super::TopKRouter::route_captured)).
    pub fn route_captured(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        buffers: &mut RoutingBuffers,
        views: LayerViews<'_>,
    ) -> Result<()> {
        let LayerViews { mut ids, weights } = views;
        ensure(weights.is_none(), "views", || {
            "this store captures weights, which upstream's routing kernels do not write in fp32; \
             route with TopKRouter::route_captured, or capture ids only"
                .into()
        })?;
        self.route(stream, input, buffers, Some(&mut ids))
    }

    /// Routes `input.num_tokens` tokens on `stream`.
    ///
    /// Writes the weights and permutation into `buffers`, and the chosen expert ids into
    /// `routing_replay_out` when given (else into [`RoutingBuffers::topk_ids`]): row `t`,
    /// column `k` is token `t`'s k-th expert (global id, descending score). Rows at or beyond
    /// `num_tokens` are never written. Everything is enqueued on `stream`; nothing is
    /// allocated and nothing synchronises, so the call can be recorded into a CUDA graph.
    pub fn route(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        buffers: &mut RoutingBuffers,
        routing_replay_out: Option<&mut ReplayView<'_>>,
    ) -> Result<()> {
        let cfg = self.plan.config();
        let t = input.num_tokens;
        self.plan.check_batch(&RouteBatchSizes {
            num_tokens: t,
            logits: input.logits.len(),
            bias: input.bias.as_ref().map(Logits::len),
            replay: routing_replay_out.as_deref().map(|r| (r.rows(), r.cols())),
            buffers: buffers.shape(),
        })?;
        let bias_dtype = input
            .bias
            .as_ref()
            .map_or(sys::fi_dtype::FI_DTYPE_F32, |b| b.dtype());
        let params = cfg.raw_params(t, input.logits.dtype(), bias_dtype);

        let mut l = Launch::new(stream);
        let logits = l.input("logits", &input.logits);
        let bias = l.input_opt("bias", input.bias.as_ref());
        let b = &mut *buffers;
        // Without a replay buffer the ids go into the buffers' own (their context: "buffers").
        let replay = match routing_replay_out {
            Some(r) => l.output("replay", r),
            None => l.output("buffers", &mut b.topk_ids),
        };
        let w = l.output("buffers", &mut b.topk_weights);
        let packed = l.output("buffers", &mut b.topk_packed);
        let counts = l.output("buffers", &mut b.expert_counts);
        let psize = l.output("buffers", &mut b.permuted_idx_size);
        let e2p = l.output("buffers", &mut b.expanded_idx_to_permuted_idx);
        let p2t = l.output("buffers", &mut b.permuted_idx_to_token_idx);
        let c2b = l.output("buffers", &mut b.cta_idx_xy_to_batch_idx);
        let c2m = l.output("buffers", &mut b.cta_idx_xy_to_mn_limit);
        let nctas = l.output("buffers", &mut b.num_non_exiting_ctas);
        l.call(|p| {
            let raw = sys::fi_routing_buffers {
                topk_weights: p.rw(w),
                topk_packed: p.rw(packed),
                expert_counts: p.rw(counts),
                permuted_idx_size: p.rw(psize),
                expanded_idx_to_permuted_idx: p.rw(e2p),
                permuted_idx_to_token_idx: p.rw(p2t),
                cta_idx_xy_to_batch_idx: p.rw(c2b),
                cta_idx_xy_to_mn_limit: p.rw(c2m),
                num_non_exiting_ctas: p.rw(nctas),
            };
            // SAFETY: the launch's guarantees, and every buffer sized for this call
            // (`check_batch`; the routing buffers for the router's shape).
            unsafe {
                sys::fi_routing_run(
                    &params,
                    p.ro(logits),
                    p.ro(bias),
                    &raw,
                    p.rw(replay),
                    p.stream(),
                )
            }
        })
    }
}

#[cfg(test)]
mod tests;
