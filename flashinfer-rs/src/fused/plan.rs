//! Every rule of a fused MoE call, on sizes alone: what each op takes, in which shape, and
//! which combinations upstream accepts. Host arithmetic only, so each rule is tested in CI.
//!
//! The typed calls ([`super::call`]) describe their arguments as a [`Desc`]; [`plan`] checks
//! it against FlashInfer 0.6.13's own checks (`check_routing`/`check_moe` of each launcher in
//! csrc/trtllm_fused_moe_kernel_launcher.cu) plus the ones upstream forgets (undersized
//! buffers, replay rows), and returns the exact tensor shapes to hand to the C ABI.

use flashinfer_sys as sys;
use sys::fi_dtype::{self, Type as Dtype};

use super::tactic::Tactic;
use super::types::{Activation, WeightLayout};
use crate::error::{covers, ensure, Error, Result, MAX_TOKENS};
use crate::replay::check_replay;
use crate::routing::check_bias;
use crate::routing::{RoutingConfig, RoutingMethod};

/// Sizes of a fused MoE problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeShape {
    /// Tokens in this call (rows of the hidden states).
    pub num_tokens: usize,
    /// Model hidden size.
    pub hidden_size: usize,
    /// Expert intermediate size (per projection; gated activations use twice as many rows).
    pub intermediate_size: usize,
}

/// Options shared by the four calls, with upstream's defaults from [`MoeOptions::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeOptions {
    /// Expert activation (default SwiGLU).
    pub activation: Activation,
    /// Weight layout (bf16 requires `BlockMajorK`; the fp8 per-tensor and fp4 calls `MajorK`).
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

/// Which upstream entry point, with the variant its arguments select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Bf16,
    Fp8PerTensor,
    Fp8BlockDeepSeek,
    Fp8BlockMx,
    Fp4 { act: Fp4Act, weights: Fp4W },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fp4Act {
    Bf16,
    E4m3,
    MxE4m3,
    Nvfp4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fp4W {
    Nvfp4,
    Mxfp4,
}

impl Op {
    pub(crate) fn raw(self) -> i32 {
        use sys::fi_moe_op as o;
        (match self {
            Op::Bf16 => o::FI_MOE_BF16,
            Op::Fp8PerTensor => o::FI_MOE_FP8_PER_TENSOR,
            Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => o::FI_MOE_FP8_BLOCK_SCALE,
            Op::Fp4 { .. } => o::FI_MOE_FP4_BLOCK_SCALE,
        }) as i32
    }

    fn name(self) -> &'static str {
        match self {
            Op::Bf16 => "trtllm_bf16_moe",
            Op::Fp8PerTensor => "trtllm_fp8_per_tensor_scale_moe",
            Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => "trtllm_fp8_block_scale_moe",
            Op::Fp4 { .. } => "trtllm_fp4_block_scale_moe",
        }
    }

    /// Token tiles upstream builds launchers for (`mSupportedTileNums` and friends).
    pub(crate) fn tiles(self) -> &'static [i64] {
        match self {
            Op::Bf16 | Op::Fp8PerTensor | Op::Fp8BlockDeepSeek => &[8, 16, 32, 64, 128],
            Op::Fp8BlockMx => &[8, 16, 32, 64, 128, 256],
            Op::Fp4 {
                act: Fp4Act::Bf16, ..
            } => &[8, 16, 32, 64],
            Op::Fp4 { .. } => &[8, 16, 32, 64, 128, 256],
        }
    }
}

/// Where routing comes from, by size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoutingSrc {
    /// Logits `[T, E]` (len elements of dtype) and an optional bias.
    Logits {
        dtype: Dtype,
        len: usize,
        bias: Option<(Dtype, usize)>,
    },
    /// Packed `(id << 16) | bf16 weight` ids, `[T, K]` int32.
    Packed { len: usize },
}

/// A tensor the caller passed: its ABI name, element type and length in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Given {
    pub name: &'static str,
    pub dtype: Dtype,
    pub len: usize,
}

/// One call, described by sizes.
#[derive(Debug, Clone)]
pub(crate) struct Desc {
    pub op: Op,
    pub shape: MoeShape,
    pub routing: RoutingConfig,
    pub src: RoutingSrc,
    pub opts: MoeOptions,
    /// `(rows, cols)` of the replay buffer.
    pub replay: Option<(usize, usize)>,
    /// Every tensor except logits, bias, packed ids and replay (covered above).
    pub given: Vec<Given>,
}

/// A tensor as it will be handed to the C ABI: which argument, which dtype, which shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spec {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<i64>,
}

impl Spec {
    /// Elements of the shape; `None` if the count does not fit u128 (no buffer holds it).
    fn numel(&self) -> Option<u128> {
        self.shape
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(u128::try_from(d).ok()?))
    }
}

fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// The product of `dims` as a 1-D size, or a typed error when it overflows.
fn cmul(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::invalid("shape", format!("{dims:?} overflows a tensor size")))
}

/// Builds the list of tensors a call hands over, checking every rule on the way.
struct Planner<'d> {
    d: &'d Desc,
    specs: Vec<Spec>,
}

impl<'d> Planner<'d> {
    fn given(&self, name: &str) -> Option<&'d Given> {
        self.d.given.iter().find(|g| g.name == name)
    }

    /// A tensor the op requires in `shape` (the passed slice may be longer).
    fn need(&mut self, name: &'static str, dtype: Dtype, shape: &[usize]) -> Result<()> {
        let Some(g) = self.given(name) else {
            return Err(Error::invalid(
                name,
                format!("{} needs it here", self.d.op.name()),
            ));
        };
        self.check_and_push(g, dtype, shape)
    }

    /// A tensor the op requires, declared to upstream as `shape` but read by the kernels over
    /// `min_len` elements (at least the shape's count).
    fn need_padded(
        &mut self,
        name: &'static str,
        dtype: Dtype,
        shape: &[usize],
        min_len: usize,
    ) -> Result<()> {
        self.need(name, dtype, shape)?;
        let len = self.given(name).map_or(0, |g| g.len);
        ensure(len >= min_len, name, || {
            format!("holds {len} elements, needs {min_len} (128x4-interleaved scales)")
        })
    }

    /// A tensor the op may take.
    fn maybe(&mut self, name: &'static str, dtype: Dtype, shape: &[usize]) -> Result<()> {
        match self.given(name) {
            Some(g) => self.check_and_push(g, dtype, shape),
            None => Ok(()),
        }
    }

    fn check_and_push(&mut self, g: &Given, dtype: Dtype, shape: &[usize]) -> Result<()> {
        let spec = Spec {
            name: g.name,
            dtype,
            shape: shape.iter().map(|&s| s as i64).collect(),
        };
        let need = spec.numel();
        ensure(need.is_some_and(|n| g.len as u128 >= n), g.name, || {
            format!("holds {} elements, needs {need:?} ({shape:?})", g.len)
        })?;
        self.specs.push(spec);
        Ok(())
    }

    /// Refuses every given tensor the op has not claimed (nothing is silently ignored).
    fn finish(self) -> Result<Vec<Spec>> {
        for g in &self.d.given {
            if !self.specs.iter().any(|s| s.name == g.name) {
                return Err(Error::invalid(
                    g.name,
                    format!("is not taken by {} with these options", self.d.op.name()),
                ));
            }
        }
        Ok(self.specs)
    }
}

/// SwiGLU's optional per-expert alpha, beta and clamp limit, `[local_num_experts]` f32.
const SWIGLU_PARAMS: [&str; 3] = ["gemm1_alpha", "gemm1_beta", "gemm1_clamp_limit"];

fn take_swiglu_params(p: &mut Planner<'_>, el: usize) -> Result<()> {
    for n in SWIGLU_PARAMS {
        p.maybe(n, fi_dtype::FI_DTYPE_F32, &[el])?;
    }
    Ok(())
}

/// Checks `d` and returns the tensors to hand over (logits, bias, packed ids and replay
/// included, by their ABI names).
pub(crate) fn plan(d: &Desc) -> Result<Vec<Spec>> {
    let MoeShape {
        num_tokens: t,
        hidden_size: h,
        intermediate_size: i,
    } = d.shape;
    let cfg = &d.routing;
    let (e, k) = (cfg.num_experts as usize, cfg.top_k as usize);
    let el = cfg.local_num_experts as usize;
    let op = d.op;
    let opts = &d.opts;

    // Routing: the method's own limits, then what the fused launchers add.
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

    // Sizes and options.
    ensure(h > 0 && i > 0, "shape", || {
        "hidden_size and intermediate_size must be > 0".into()
    })?;
    // Upstream holds these in int32; bounding them also keeps every size below in range.
    ensure(
        t <= MAX_TOKENS && h <= MAX_TOKENS && i <= MAX_TOKENS,
        "shape",
        || format!("sizes ({t}, {h}, {i}) exceed the kernels' int32 range"),
    )?;
    let gated = opts.activation.is_gated();
    let m1 = if gated { 2 * i } else { i };
    match op {
        Op::Bf16 => {
            ensure(
                opts.weight_layout == WeightLayout::BlockMajorK,
                "weight_layout",
                || "trtllm_bf16_moe needs BlockMajorK".into(),
            )?;
        }
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
    let block_k_bytes = 128;
    if matches!(op, Op::Bf16 | Op::Fp8BlockDeepSeek | Op::Fp8PerTensor) {
        ensure(i.is_multiple_of(128), "intermediate_size", || {
            format!("must be a multiple of 128, got {i}")
        })?;
    }
    if op == Op::Fp8BlockDeepSeek {
        ensure(h.is_multiple_of(128), "hidden_size", || {
            format!("DeepSeek fp8 block scales need a multiple of 128, got {h}")
        })?;
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

    // One entry per argument (the typed calls pass each once; anything else is our bug).
    for (n, g) in d.given.iter().enumerate() {
        if d.given[..n].iter().any(|x| x.name == g.name) {
            return Err(Error::Internal(format!("`{}` passed twice", g.name)));
        }
    }
    let mut p = Planner {
        d,
        specs: Vec::new(),
    };

    // Routing tensors and the replay buffer.
    match d.src {
        RoutingSrc::Logits { dtype, len, bias } => {
            ensure(
                dtype == fi_dtype::FI_DTYPE_F32 || dtype == fi_dtype::FI_DTYPE_BF16,
                "logits",
                || "must be f32 or bf16".into(),
            )?;
            ensure(len >= t * e, "logits", || {
                format!(
                    "holds {len} elements, {t} tokens x {e} experts need {}",
                    t * e
                )
            })?;
            p.specs.push(Spec {
                name: "routing_logits",
                dtype,
                shape: vec![t as i64, e as i64],
            });
            check_bias(cfg, bias.map(|(_, n)| n))?;
            if let Some((bdt, _)) = bias {
                p.specs.push(Spec {
                    name: "routing_bias",
                    dtype: bdt,
                    shape: vec![e as i64],
                });
            }
        }
        RoutingSrc::Packed { len } => {
            ensure(
                matches!(op, Op::Bf16 | Op::Fp8BlockDeepSeek | Op::Fp8BlockMx),
                "routing",
                || {
                    format!(
                        "{} takes routing from logits only in flashinfer-rs",
                        op.name()
                    )
                },
            )?;
            ensure(d.replay.is_none(), "replay", || {
                "precomputed routing is already the caller's: there is nothing to replay".into()
            })?;
            ensure(covers(len, t, k), "packed_ids", || {
                format!(
                    "holds {len} elements, {t} tokens x top_k {k} need {}",
                    t * k
                )
            })?;
            p.specs.push(Spec {
                name: "expert_indices",
                dtype: fi_dtype::FI_DTYPE_I32,
                shape: vec![t as i64, k as i64],
            });
        }
    }
    if let Some((rows, cols)) = d.replay {
        check_replay(rows, cols, t, k)?;
        ensure(
            i64::try_from(rows).is_ok_and(|r| r.checked_mul(k as i64).is_some()),
            "replay",
            || format!("{rows} rows overflow a tensor size"),
        )?;
        p.specs.push(Spec {
            name: "routing_replay_out",
            dtype: fi_dtype::FI_DTYPE_I16,
            shape: vec![rows as i64, k as i64],
        });
    }
    p.need("output", fi_dtype::FI_DTYPE_BF16, &[t, h])?;

    // Activations, weights and scales, per op.
    let f32_ = fi_dtype::FI_DTYPE_F32;
    let bf16_ = fi_dtype::FI_DTYPE_BF16;
    let e4m3 = fi_dtype::FI_DTYPE_E4M3;
    let u8_ = fi_dtype::FI_DTYPE_U8;
    let has_swiglu_params = SWIGLU_PARAMS.iter().any(|n| p.given(n).is_some());
    if has_swiglu_params {
        ensure(
            matches!(opts.activation, Activation::Swiglu | Activation::SwigluBias),
            "activation",
            || "gemm1_alpha/beta/clamp_limit need a SwiGLU activation".into(),
        )?;
    }
    match op {
        Op::Bf16 => {
            let bk = block_k_bytes / 2;
            ensure(h.is_multiple_of(bk), "hidden_size", || {
                format!("BlockMajorK bf16 weights need a multiple of {bk}, got {h}")
            })?;
            p.need("hidden_states", bf16_, &[t, h])?;
            p.need("gemm1_weights", bf16_, &[el, h / bk, m1, bk])?;
            p.need("gemm2_weights", bf16_, &[el, i / bk, h, bk])?;
            p.maybe("gemm1_bias", bf16_, &[t, k, 2 * i])?;
            take_swiglu_params(&mut p, el)?;
        }
        Op::Fp8PerTensor => {
            let g = p.given("hidden_states").map(|g| g.dtype).unwrap_or(e4m3);
            ensure(
                [e4m3, bf16_, fi_dtype::FI_DTYPE_F16].contains(&g),
                "hidden_states",
                || "must be e4m3, f16 or bf16".into(),
            )?;
            ensure(!has_swiglu_params, "gemm1_alpha", || {
                "not an argument of trtllm_fp8_per_tensor_scale_moe".into()
            })?;
            p.need("hidden_states", g, &[t, h])?;
            p.need("gemm1_weights", e4m3, &[el, m1, h])?;
            p.need("gemm2_weights", e4m3, &[el, h, i])?;
            for n in [
                "output1_scales_scalar",
                "output1_scales_gate_scalar",
                "output2_scales_scalar",
            ] {
                p.need(n, f32_, &[el])?;
            }
        }
        Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => {
            p.need("hidden_states", e4m3, &[t, h])?;
            let (w1, w2) = if opts.weight_layout == WeightLayout::BlockMajorK {
                (vec![el, h / 128, m1, 128], vec![el, i / 128, h, 128])
            } else {
                (vec![el, m1, h], vec![el, h, i])
            };
            p.need("gemm1_weights", e4m3, &w1)?;
            p.need("gemm2_weights", e4m3, &w2)?;
            if op == Op::Fp8BlockDeepSeek {
                ensure(!has_swiglu_params, "gemm1_alpha", || {
                    "gemm1_alpha/beta/clamp_limit are MxFp8 only".into()
                })?;
                ensure(p.given("gemm1_bias").is_none(), "gemm1_bias", || {
                    "the LoRA delta is MxFp8 only".into()
                })?;
                p.need("hidden_states_scale", f32_, &[h / 128, t])?;
                p.need("gemm1_weights_scale", f32_, &[el, m1 / 128, h / 128])?;
                p.need("gemm2_weights_scale", f32_, &[el, h / 128, i / 128])?;
            } else {
                ensure(
                    h.is_multiple_of(32) && i.is_multiple_of(32),
                    "shape",
                    || "MxFp8 needs hidden_size and intermediate_size multiples of 32".into(),
                )?;
                // Swizzled (128 x 4) ue8m0 scales, as upstream's mxfp8_quantize makes them.
                p.need(
                    "hidden_states_scale",
                    u8_,
                    &[round_up(t, 128) * round_up(h / 32, 4)],
                )?;
                p.need(
                    "gemm1_weights_scale",
                    u8_,
                    &[cmul(&[el, round_up(m1, 128), round_up(h / 32, 4)])?],
                )?;
                p.need(
                    "gemm2_weights_scale",
                    u8_,
                    &[cmul(&[el, round_up(h, 128), round_up(i / 32, 4)])?],
                )?;
                p.maybe("gemm1_bias", bf16_, &[t, k, 2 * i])?;
                take_swiglu_params(&mut p, el)?;
            }
        }
        Op::Fp4 { act, weights } => {
            let vec = if weights == Fp4W::Nvfp4 { 16 } else { 32 };
            ensure(
                h.is_multiple_of(vec) && i.is_multiple_of(vec),
                "shape",
                || format!("fp4 weights need hidden_size and intermediate_size multiples of {vec}"),
            )?;
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
            match act {
                Fp4Act::Bf16 => p.need("hidden_states", bf16_, &[t, h])?,
                Fp4Act::E4m3 => p.need("hidden_states", e4m3, &[t, h])?,
                // Upstream reads activation scales as e4m3 bytes and infers the block size from
                // their declared count, exactly T * H / block; its tests pass them
                // 128x4-interleaved, which the kernels may read up to the padded size: the
                // buffer must hold that much.
                Fp4Act::MxE4m3 => {
                    p.need("hidden_states", e4m3, &[t, h])?;
                    let padded = round_up(t, 128) * round_up(h / 32, 4);
                    p.need_padded("hidden_states_scale", e4m3, &[t * h / 32], padded)?;
                }
                Fp4Act::Nvfp4 => {
                    p.need("hidden_states", u8_, &[t, h / 2])?;
                    let padded = round_up(t, 128) * round_up(h / 16, 4);
                    p.need_padded("hidden_states_scale", e4m3, &[t * h / 16], padded)?;
                }
            }
            // Weight scales: 128 x 4 interleaved, rows padded to 128 and columns to 4.
            p.need("gemm1_weights", u8_, &[el, m1, h / 2])?;
            p.need(
                "gemm1_weights_scale",
                e4m3,
                &[cmul(&[el, round_up(m1, 128), round_up(h / vec, 4)])?],
            )?;
            p.need("gemm2_weights", u8_, &[el, h, i / 2])?;
            p.need(
                "gemm2_weights_scale",
                e4m3,
                &[cmul(&[el, round_up(h, 128), round_up(i / vec, 4)])?],
            )?;
            p.maybe("gemm1_bias", f32_, &[el, m1])?;
            p.maybe("gemm2_bias", f32_, &[el, h])?;
            p.maybe("per_token_scales", f32_, &[t])?;
            let out_scales = [
                "output1_scales_scalar",
                "output1_scales_gate_scalar",
                "output2_scales_scalar",
            ];
            for n in out_scales {
                if matches!(act, Fp4Act::Nvfp4 | Fp4Act::E4m3) {
                    p.need(n, f32_, &[el])?;
                } else {
                    p.maybe(n, f32_, &[el])?;
                }
            }
            take_swiglu_params(&mut p, el)?;
            p.need("topk_ids", fi_dtype::FI_DTYPE_I32, &[t, k])?;
            p.need("topk_weights", bf16_, &[t, k])?;
        }
    }
    p.finish()
}

#[cfg(test)]
pub(crate) mod tests;
