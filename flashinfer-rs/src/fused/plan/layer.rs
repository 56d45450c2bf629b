//! The rules a layer can be checked by once: routing config, sizes, options, weights.

use flashinfer_sys as sys;
use sys::fi_dtype::{self, Type as Dtype};
use sys::MoeTensor as M;

use super::{
    cmul, plan_batch, round_up, Fp4Act, Fp4W, FusedBatchSizes, Op, Planner, TensorSize, TensorSpec,
};
use crate::error::{ensure, Error, Result, MAX_TOKENS};
use crate::fused::config::MoeOptions;
use crate::fused::types::{Activation, WeightLayout};
use crate::routing::{RoutingConfig, RoutingMethod};

const F32: Dtype = fi_dtype::FI_DTYPE_F32;
const BF16: Dtype = fi_dtype::FI_DTYPE_BF16;
const E4M3: Dtype = fi_dtype::FI_DTYPE_E4M3;
const U8: Dtype = fi_dtype::FI_DTYPE_U8;

/// SwiGLU's optional per-expert alpha, beta and clamp limit, `[local_num_experts]` f32.
pub(super) const SWIGLU_PARAMS: [M; 3] = [M::Gemm1Alpha, M::Gemm1Beta, M::Gemm1ClampLimit];

/// The three per-expert output scales of the fp8 per-tensor and fp4 layers.
const OUTPUT_SCALES: [M; 3] = [
    M::Output1ScalesScalar,
    M::Output1ScalesGateScalar,
    M::Output2ScalesScalar,
];

/// A fused layer, described by sizes: what [`FusedPlan::new`] checks.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedLayerSizes {
    /// The upstream entry point and its variant.
    pub op: Op,
    /// Hidden size (columns of the activations).
    pub hidden_size: usize,
    /// Intermediate size of each expert.
    pub intermediate_size: usize,
    /// The routing method and shape.
    pub routing: RoutingConfig,
    /// Layout, activation, tactic and the other options.
    pub opts: MoeOptions,
    /// Its tensors: the weights, their scales and per-expert parameters
    /// ([`Op::in_layer`]).
    pub weights: Vec<TensorSize>,
}

/// The size rules of [`FusedMoe`](crate::fused::FusedMoe): a layer checked once by
/// [`new`](Self::new) (routing config, sizes, options, each weight's dtype and size), then
/// [`check_batch`](Self::check_batch) per call, on sizes alone (no device, no buffers: a
/// server can check a batch before it has them). [`FusedMoe::new`](crate::fused::FusedMoe::new)
/// builds one and [`FusedMoe::forward`](crate::fused::FusedMoe::forward) checks every call
/// with it.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedPlan {
    pub(crate) desc: FusedLayerSizes,
    pub(crate) specs: Vec<TensorSpec>,
}

impl FusedPlan {
    /// Checks everything about a layer that does not depend on the batch.
    pub fn new(layer: FusedLayerSizes) -> Result<FusedPlan> {
        plan_layer(layer)
    }

    /// The checked layer.
    pub fn layer(&self) -> &FusedLayerSizes {
        &self.desc
    }

    /// The layer's tensors as every call hands them to upstream.
    pub fn layer_tensors(&self) -> &[TensorSpec] {
        &self.specs
    }

    /// Every per-call rule of [`FusedMoe::forward`](crate::fused::FusedMoe::forward), on
    /// sizes: the token count, the routing input, the replay buffer, the activations and the
    /// output.
    pub fn check_batch(&self, batch: &FusedBatchSizes) -> Result<()> {
        self.batch_tensors(batch).map(drop)
    }

    /// [`check_batch`](Self::check_batch), returning the batch's tensors as the call hands
    /// them to upstream (the layer's are [`layer_tensors`](Self::layer_tensors)).
    pub fn batch_tensors(&self, batch: &FusedBatchSizes) -> Result<Vec<TensorSpec>> {
        plan_batch(self, batch)
    }
}

impl FusedLayerSizes {
    pub(super) fn experts(&self) -> (usize, usize, usize) {
        let c = &self.routing;
        (
            c.num_experts as usize,
            c.top_k as usize,
            c.local_num_experts as usize,
        )
    }

    /// Rows of GEMM1: both projections for gated activations.
    pub(super) fn m1(&self) -> usize {
        if self.opts.activation.is_gated() {
            2 * self.intermediate_size
        } else {
            self.intermediate_size
        }
    }
}

/// Checks everything about a layer that does not depend on the batch.
fn plan_layer(d: FusedLayerSizes) -> Result<FusedPlan> {
    check_routing(&d)?;
    check_sizes(&d)?;
    check_options(&d)?;
    let mut p = Planner::new(d.op, &d.weights)?;
    check_swiglu_params(&d, &p)?;
    match d.op {
        Op::Bf16 => bf16_weights(&d, &mut p)?,
        Op::Fp8PerTensor => fp8_per_tensor_weights(&d, &mut p)?,
        Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => fp8_block_weights(&d, &mut p)?,
        Op::Fp4 { act, weights } => fp4_weights(&d, &mut p, act, weights)?,
    }
    let specs = p.finish()?;
    Ok(FusedPlan { desc: d, specs })
}

/// The method's own limits, then what the fused launchers add.
fn check_routing(d: &FusedLayerSizes) -> Result<()> {
    let cfg = &d.routing;
    let (e, k, el) = d.experts();
    cfg.validate()?;
    ensure(el > 0, "local_num_experts", || "must be > 0".into())?;
    ensure(e.is_multiple_of(4), "num_experts", || {
        format!("the fused MoE needs a multiple of 4, got {e}")
    })?;
    ensure(e > k, "top_k", || {
        format!("the fused MoE needs top_k ({k}) < num_experts ({e})")
    })?;
    if let RoutingMethod::DeepSeekV3 { n_group, .. } = cfg.method {
        // The fused launcher's DeepSeek limit (LAUNCH_ROUTING_DEEPSEEK): 8 up to 384 experts.
        let max_k = if e <= 384 { 8 } else { 22 };
        ensure(n_group <= 1 || k <= max_k, "top_k", || {
            format!("grouped DeepSeekV3 in the fused MoE supports top_k <= {max_k} for {e} experts, got {k}")
        })?;
    }
    Ok(())
}

fn check_sizes(d: &FusedLayerSizes) -> Result<()> {
    let (h, i) = (d.hidden_size, d.intermediate_size);
    ensure(h > 0 && i > 0, "shape", || {
        "hidden_size and intermediate_size must be > 0".into()
    })?;
    // Upstream holds these in int32; bounding them also keeps every size below in range.
    ensure(h <= MAX_TOKENS && i <= MAX_TOKENS, "shape", || {
        format!("sizes ({h}, {i}) exceed the kernels' int32 range")
    })?;
    if matches!(d.op, Op::Bf16 | Op::Fp8BlockDeepSeek | Op::Fp8PerTensor) {
        ensure(i.is_multiple_of(128), "intermediate_size", || {
            format!("must be a multiple of 128, got {i}")
        })?;
    }
    match d.op {
        Op::Bf16 => ensure(h.is_multiple_of(64), "hidden_size", || {
            format!("BlockMajorK bf16 weights need a multiple of 64, got {h}")
        }),
        Op::Fp8BlockDeepSeek => ensure(h.is_multiple_of(128), "hidden_size", || {
            format!("DeepSeek fp8 block scales need a multiple of 128, got {h}")
        }),
        Op::Fp8BlockMx => ensure(
            h.is_multiple_of(32) && i.is_multiple_of(32),
            "shape",
            || "MxFp8 needs hidden_size and intermediate_size multiples of 32".into(),
        ),
        Op::Fp4 { weights, .. } => {
            let vec = fp4_block(weights);
            ensure(
                h.is_multiple_of(vec) && i.is_multiple_of(vec),
                "shape",
                || format!("fp4 weights need hidden_size and intermediate_size multiples of {vec}"),
            )
        }
        Op::Fp8PerTensor => Ok(()),
    }
}

/// Elements per fp4 block scale.
pub(super) fn fp4_block(weights: Fp4W) -> usize {
    match weights {
        Fp4W::Nvfp4 => 16,
        Fp4W::Mxfp4 => 32,
    }
}

fn check_options(d: &FusedLayerSizes) -> Result<()> {
    let (op, opts) = (d.op, &d.opts);
    match op {
        Op::Bf16 => ensure(
            opts.weight_layout == WeightLayout::BlockMajorK,
            "weight_layout",
            || "trtllm_bf16_moe needs BlockMajorK".into(),
        )?,
        Op::Fp8PerTensor | Op::Fp8BlockMx | Op::Fp4 { .. } => {
            ensure(
                opts.weight_layout == WeightLayout::MajorK,
                "weight_layout",
                || format!("{} needs MajorK", op.name()),
            )?;
            ensure(opts.use_shuffled_weight, "use_shuffled_weight", || {
                format!("{} needs shuffled weights", op.name())
            })?;
        }
        Op::Fp8BlockDeepSeek => {
            ensure(
                opts.weight_layout != WeightLayout::MajorMn,
                "weight_layout",
                || "DeepSeek fp8 takes MajorK or BlockMajorK".into(),
            )?;
            ensure(opts.activation == Activation::Swiglu, "activation", || {
                "DeepSeek fp8 supports SwiGLU only".into()
            })?;
        }
    }
    if let Op::Fp4 { act, weights } = op {
        match (act, weights) {
            (Fp4Act::Nvfp4, Fp4W::Mxfp4) => {
                return Err(Error::invalid(
                    "hidden_states",
                    "nvfp4 activations need nvfp4 weights",
                ))
            }
            (Fp4Act::Bf16 | Fp4Act::E4m3 | Fp4Act::MxE4m3, Fp4W::Nvfp4) => {
                return Err(Error::invalid(
                    "hidden_states",
                    "bf16, e4m3 and mxe4m3 activations need mxfp4 weights",
                ))
            }
            _ => {}
        }
    }
    if let Some(tac) = opts.tactic {
        ensure(op.tiles().contains(&tac.tile_n), "tactic", || {
            format!(
                "tile_n {} is not one of {:?} for this op",
                tac.tile_n,
                op.tiles()
            )
        })?;
        ensure(tac.config >= 0, "tactic", || {
            format!("config must be >= 0, got {}", tac.config)
        })?;
    }
    Ok(())
}

/// gemm1_alpha/beta/clamp_limit: SwiGLU only, and only where the op takes them.
fn check_swiglu_params(d: &FusedLayerSizes, p: &Planner<'_>) -> Result<()> {
    if !SWIGLU_PARAMS.iter().any(|&t| p.given(t).is_some()) {
        return Ok(());
    }
    ensure(
        matches!(
            d.opts.activation,
            Activation::Swiglu | Activation::SwigluBias
        ),
        "activation",
        || "gemm1_alpha/beta/clamp_limit need a SwiGLU activation".into(),
    )?;
    match d.op {
        Op::Fp8PerTensor => Err(Error::invalid(
            "gemm1_alpha",
            "not an argument of trtllm_fp8_per_tensor_scale_moe",
        )),
        Op::Fp8BlockDeepSeek => Err(Error::invalid(
            "gemm1_alpha",
            "gemm1_alpha/beta/clamp_limit are MxFp8 only",
        )),
        _ => Ok(()),
    }
}

fn take_swiglu_params(d: &FusedLayerSizes, p: &mut Planner<'_>) -> Result<()> {
    let (_, _, el) = d.experts();
    for t in SWIGLU_PARAMS {
        p.maybe(t, F32, &[el])?;
    }
    Ok(())
}

fn bf16_weights(d: &FusedLayerSizes, p: &mut Planner<'_>) -> Result<()> {
    let (h, i, m1) = (d.hidden_size, d.intermediate_size, d.m1());
    let (_, _, el) = d.experts();
    // BlockMajorK: 128-byte K blocks, 64 bf16.
    let bk = 64;
    p.need(M::Gemm1Weights, BF16, &[el, h / bk, m1, bk])?;
    p.need(M::Gemm2Weights, BF16, &[el, i / bk, h, bk])?;
    take_swiglu_params(d, p)
}

fn fp8_per_tensor_weights(d: &FusedLayerSizes, p: &mut Planner<'_>) -> Result<()> {
    let (h, i, m1) = (d.hidden_size, d.intermediate_size, d.m1());
    let (_, _, el) = d.experts();
    p.need(M::Gemm1Weights, E4M3, &[el, m1, h])?;
    p.need(M::Gemm2Weights, E4M3, &[el, h, i])?;
    for t in OUTPUT_SCALES {
        p.need(t, F32, &[el])?;
    }
    Ok(())
}

fn fp8_block_weights(d: &FusedLayerSizes, p: &mut Planner<'_>) -> Result<()> {
    let (h, i, m1) = (d.hidden_size, d.intermediate_size, d.m1());
    let (_, _, el) = d.experts();
    if d.opts.weight_layout == WeightLayout::BlockMajorK {
        p.need(M::Gemm1Weights, E4M3, &[el, h / 128, m1, 128])?;
        p.need(M::Gemm2Weights, E4M3, &[el, i / 128, h, 128])?;
    } else {
        p.need(M::Gemm1Weights, E4M3, &[el, m1, h])?;
        p.need(M::Gemm2Weights, E4M3, &[el, h, i])?;
    }
    if d.op == Op::Fp8BlockDeepSeek {
        p.need(M::Gemm1WeightsScale, F32, &[el, m1 / 128, h / 128])?;
        p.need(M::Gemm2WeightsScale, F32, &[el, h / 128, i / 128])?;
        return Ok(());
    }
    // Swizzled (128 x 4) ue8m0 scales, as upstream's mxfp8_quantize makes them.
    let w1 = cmul(&[el, round_up(m1, 128), round_up(h / 32, 4)])?;
    let w2 = cmul(&[el, round_up(h, 128), round_up(i / 32, 4)])?;
    p.need(M::Gemm1WeightsScale, U8, &[w1])?;
    p.need(M::Gemm2WeightsScale, U8, &[w2])?;
    take_swiglu_params(d, p)
}

fn fp4_weights(d: &FusedLayerSizes, p: &mut Planner<'_>, act: Fp4Act, weights: Fp4W) -> Result<()> {
    let (h, i, m1) = (d.hidden_size, d.intermediate_size, d.m1());
    let (_, _, el) = d.experts();
    let vec = fp4_block(weights);
    // Weight scales, read as e4m3 bytes for both formats (the count tells them apart):
    // 128 x 4 interleaved, rows padded to 128 and columns to 4.
    let w1 = cmul(&[el, round_up(m1, 128), round_up(h / vec, 4)])?;
    let w2 = cmul(&[el, round_up(h, 128), round_up(i / vec, 4)])?;
    p.need(M::Gemm1Weights, U8, &[el, m1, h / 2])?;
    p.need(M::Gemm1WeightsScale, E4M3, &[w1])?;
    p.need(M::Gemm2Weights, U8, &[el, h, i / 2])?;
    p.need(M::Gemm2WeightsScale, E4M3, &[w2])?;
    p.maybe(M::Gemm1Bias, F32, &[el, m1])?;
    p.maybe(M::Gemm2Bias, F32, &[el, h])?;
    for t in OUTPUT_SCALES {
        if matches!(act, Fp4Act::Nvfp4 | Fp4Act::E4m3) {
            p.need(t, F32, &[el])?;
        } else {
            p.maybe(t, F32, &[el])?;
        }
    }
    take_swiglu_params(d, p)
}
