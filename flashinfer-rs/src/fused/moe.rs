//! [`FusedMoe`]: a fused MoE layer, checked once, then called per batch.

use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaStream, CudaView, CudaViewMut};
use flashinfer_sys as sys;
use half::bf16;
use sys::fi_dtype;
use sys::MoeTensor as M;

use super::abi::{fill, scalar_args, ArgList, Key};
use super::config::MoeConfig;
use super::cubin;
use super::plan::{FusedBatchSizes, FusedLayerSizes, FusedPlan, RoutingSrc, TensorSize};
use super::precision::sealed::{BatchArgs, LayerArgs};
use super::precision::Precision;
use super::unfinalized::Unfinalized;
use crate::capture::LayerViews;
use crate::context::same_context;
use crate::error::{Error, Result};
use crate::ffi::device_info;
use crate::launch::Launch;
use crate::replay::ReplayView;
use crate::routing::{Bias, Logits};

/// Where a fused call's routing comes from.
#[derive(Debug)]
pub enum MoeRoutingInput<'a> {
    /// Route inside the call from logits `[num_tokens, num_experts]` (and the method's bias).
    Logits {
        /// Router logits, f32 or bf16.
        logits: Logits<'a>,
        /// Per-expert bias: required by DeepSeekV3 and MiniMax2, refused by the others.
        bias: Option<Bias<'a>>,
    },
    /// Routing done elsewhere: `[num_tokens, top_k]` int32, each `(expert_id << 16) |
    /// bf16_weight_bits` (bf16 and fp8 block-scale layers only; no replay: the ids are yours).
    Packed(CudaView<'a, i32>),
}

/// One forward call's inputs.
#[derive(Debug)]
pub struct MoeBatch<'a, P: Precision> {
    /// Tokens in this call (rows of the hidden states; longer buffers are not read past).
    pub num_tokens: usize,
    /// Logits or precomputed ids.
    pub routing: MoeRoutingInput<'a>,
    /// Activations (and, for fp4, the routing result the call writes).
    pub inputs: P::Inputs<'a>,
}

/// A fused MoE layer of precision `P` ([`Bf16`](super::Bf16), [`Fp8PerTensor`](super::Fp8PerTensor),
/// [`Fp8BlockScale`](super::Fp8BlockScale), [`Fp4BlockScale`](super::Fp4BlockScale)) over
/// borrowed weights: routing, both grouped GEMMs with the activation between them and the
/// weighted sum in one call.
///
/// [`FusedMoe::new`] checks every rule that does not depend on the batch (routing config,
/// sizes, options, each weight's dtype and size, their CUDA context) once;
/// [`FusedMoe::forward`] checks only the batch's (token count, routing input, activations,
/// output, replay buffer) and calls the kernels. Like [`Router`](crate::routing::Router).
pub struct FusedMoe<'w, P: Precision> {
    plan: FusedPlan,
    weights: P::Weights<'w>,
    ctx: Arc<CudaContext>,
    scalars: Scalars,
}

/// `fi_moe_args` of a layer with every tensor empty: its scalars, copied into every call.
#[derive(Clone, Copy)]
struct Scalars(sys::fi_moe_args);

// SAFETY: every pointer in it is null (only scalars are set): plain data.
unsafe impl Send for Scalars {}
// SAFETY: as above; it is only ever copied.
unsafe impl Sync for Scalars {}

impl<P: Precision> fmt::Debug for FusedMoe<'_, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FusedMoe")
            .field("layer", &self.plan.desc)
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

impl<'w, P: Precision> FusedMoe<'w, P> {
    /// Checks `config` and `weights` for precision `P` and builds the layer. Installs the
    /// default cubin store ([`cubin`](super::cubin)) on first use where the fused kernels can
    /// run; on other GPUs the layer is built and [`forward`](Self::forward) answers
    /// [`Error::UnsupportedArch`].
    pub fn new(config: MoeConfig, weights: P::Weights<'w>) -> Result<Self> {
        let op = weights.op();
        let mut list = ArgList::default();
        weights.describe(&mut list);
        let plan = FusedPlan::new(FusedLayerSizes {
            op,
            hidden_size: config.hidden_size,
            intermediate_size: config.intermediate_size,
            routing: config.routing,
            opts: config.options,
            weights: list.given(),
        })?;
        let mut streams = list.streams(op);
        let (_, first) = streams
            .next()
            .ok_or_else(|| Error::Internal("a layer without weights".into()))?;
        // All weights in one context; each call's stream must be in it too.
        same_context(first, streams)?;
        let ctx = first.context().clone();
        drop(list);
        let scalars = Scalars(scalar_args(
            &plan.desc,
            ctx.ordinal() as i32,
            weights.use_routing_scales_on_input(),
        ));
        // The architecture gate is the shim's (it answers UnsupportedArch or KernelsNotBuilt
        // without touching upstream), so the cubin store, which needs the cache, is installed
        // only where the fused kernels can run.
        if !cubin::is_installed() && device_info(&ctx)?.fused_supported {
            cubin::ensure_installed()?;
        }
        tracing::info!(target: "flashinfer_rs", config = ?config, op = ?op, "fused: MoE layer built");
        Ok(FusedMoe {
            plan,
            weights,
            ctx,
            scalars,
        })
    }

    /// The checked configuration.
    pub fn config(&self) -> MoeConfig {
        let d = &self.plan.desc;
        MoeConfig {
            routing: d.routing,
            hidden_size: d.hidden_size,
            intermediate_size: d.intermediate_size,
            options: d.opts,
        }
    }

    /// Runs the layer on `batch.num_tokens` tokens: routes (from logits or precomputed
    /// ids), runs the two grouped GEMMs with the activation between them, then (with
    /// `do_finalize`) the weighted sum into `output` `[num_tokens, hidden]`. The routed ids
    /// land in `routing_replay_out` when given (`[t][k]` = token `t`'s k-th expert, global
    /// id; rows at or past `num_tokens` untouched).
    ///
    /// Everything is enqueued on `stream`, which must be in the weights' CUDA context;
    /// scratch is taken stream-ordered and nothing synchronises (see the crate docs on
    /// graphs). Returns the per-expert outputs when `do_finalize` is off, else `None`. With
    /// zero tokens nothing is launched.
    pub fn forward(
        &self,
        stream: &Arc<CudaStream>,
        batch: MoeBatch<'_, P>,
        output: &mut CudaViewMut<'_, bf16>,
        routing_replay_out: Option<&mut ReplayView<'_>>,
    ) -> Result<Option<Unfinalized>> {
        let op = self.plan.desc.op;
        let MoeBatch {
            num_tokens,
            routing,
            mut inputs,
        } = batch;
        inputs.check_layer(op)?;
        let mut list = ArgList::default();
        inputs.describe(&mut list);
        let mut given = list.given();
        given.push(TensorSize {
            tensor: M::Output,
            dtype: fi_dtype::FI_DTYPE_BF16,
            len: output.len(),
        });
        let specs = self.plan.batch_tensors(&FusedBatchSizes {
            num_tokens,
            src: routing_src(&routing),
            replay: routing_replay_out.as_deref().map(|r| (r.rows(), r.cols())),
            inputs: given,
        })?;
        // The weights are listed after the zero-token return (describing them allocates).
        let mut weights = ArgList::default();
        let mut l = Launch::for_layer(stream, &self.ctx);
        list.launch(&mut l, op, &specs);
        list_routing(&routing, &mut l, &specs);
        l.keyed_output("output", (M::Output, &specs), output);
        if let Some(r) = routing_replay_out {
            l.keyed_output("replay", (M::RoutingReplayOut, &specs), r);
        }
        l.check()?;
        if num_tokens == 0 {
            return Ok(None);
        }

        self.weights.describe(&mut weights);
        weights.launch(&mut l, op, &self.plan.specs);
        let mut out: *mut sys::fi_moe_outputs = std::ptr::null_mut();
        l.try_call(|p| {
            let mut a = self.scalars.0;
            for ((tensor, specs), ptr) in p.keyed() {
                fill(&mut a, specs, tensor, ptr)?;
            }
            // SAFETY: the launch's guarantees, and every tensor at least as large as its spec
            // (the plans); `out` is a valid out-pointer.
            Ok(unsafe { sys::fi_moe_run(&a, p.stream(), &mut out) })
        })?;
        if out.is_null() {
            return Ok(None);
        }
        Unfinalized::from_raw(out, stream).map(Some)
    }

    /// [`forward`](Self::forward) writing the routed ids into a capture store's views of one
    /// layer (`store.layer_views(l)`). The fused kernel computes its routing weights inside
    /// and exposes none, so views of a store that captures weights are refused (a typed
    /// error, before anything is launched) rather than left NaN: to capture weights with a
    /// fused layer, route with [`TopKRouter`](crate::routing::TopKRouter) into the store's
    /// views and hand the layer the precomputed ids.
    pub fn forward_captured(
        &self,
        stream: &Arc<CudaStream>,
        batch: MoeBatch<'_, P>,
        output: &mut CudaViewMut<'_, bf16>,
        views: LayerViews<'_>,
    ) -> Result<Option<Unfinalized>> {
        let LayerViews { mut ids, weights } = views;
        if weights.is_some() {
            return Err(Error::invalid(
                "views",
                "the store captures weights, which the fused MoE does not expose: route with \
                 TopKRouter into the store's views and pass precomputed ids, or capture ids only",
            ));
        }
        self.forward(stream, batch, output, Some(&mut ids))
    }
}

fn routing_src(r: &MoeRoutingInput<'_>) -> RoutingSrc {
    match r {
        MoeRoutingInput::Logits { logits, bias } => RoutingSrc::Logits {
            dtype: logits.dtype(),
            len: logits.len(),
            bias: bias.as_ref().map(|b| (b.dtype(), b.len())),
        },
        MoeRoutingInput::Packed(v) => RoutingSrc::Packed { len: v.len() },
    }
}

/// The routing input's tensors, named as the API names them.
fn list_routing<'a>(
    r: &'a MoeRoutingInput<'_>,
    l: &mut Launch<'a, Key<'a>>,
    specs: &'a [super::plan::TensorSpec],
) {
    match r {
        MoeRoutingInput::Logits { logits, bias } => {
            l.keyed_input("logits", (M::RoutingLogits, specs), logits);
            if let Some(b) = bias {
                l.keyed_input("bias", (M::RoutingBias, specs), b);
            }
        }
        MoeRoutingInput::Packed(v) => {
            l.keyed_input("packed_ids", (M::ExpertIndices, specs), v);
        }
    }
}
