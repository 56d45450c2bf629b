//! [`CutlassMoe`]: a CUTLASS fused MoE layer, checked once, then called per batch.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cudarc::driver::{
    CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, DeviceSlice,
};
use flashinfer_sys as sys;
use half::bf16;

use super::plan::{
    CutlassBatchSizes, CutlassFp8Scales, CutlassMoeConfig, CutlassPlan, CutlassRoutingSizes,
};
use crate::capture::LayerViews;
use crate::context::same_context;
use crate::error::{ensure, Error, Result};
use crate::ffi::check;
use crate::fused::E4m3;
use crate::launch::Launch;
use crate::replay::ReplayView;
use crate::routing::{Bias, Logits, RouteInput, TopKOutputs, TopKRouter};

/// Device memory a layer reads its weights from, for as long as the layer holds it: a
/// [`CudaSlice`] (the layer owns its weights: a model struct can hold its layers), an
/// `Arc<CudaSlice>` (shared, e.g. with a checkpoint loader) or a [`CudaView`] (the layer
/// borrows them). `Send + Sync`, so a layer that holds them can be shared across threads.
///
/// Sealed: the layer checks the weights' sizes once, at construction, and every call reads
/// the same memory; only these three kinds of storage guarantee that.
pub trait WeightBuffer: Send + Sync + sealed::Sealed {
    /// The weights' element type: `bf16`, or [`E4m3`] for fp8 weights.
    type Element;
    /// The weights, for one call.
    fn view(&self) -> CudaView<'_, Self::Element>;
}

/// An element type the layer's weights come in: `bf16` ([`CutlassMoe::new`]) or [`E4m3`]
/// (fp8 per-tensor, [`CutlassMoe::new_fp8`], or with block scales,
/// [`CutlassMoe::new_fp8_blocks`]). Sealed.
pub trait CutlassElement: DeviceRepr + Send + Sync + sealed::Sealed {}

impl CutlassElement for bf16 {}

impl CutlassElement for E4m3 {}

mod sealed {
    use std::sync::Arc;

    use cudarc::driver::{CudaSlice, CudaView};

    pub trait Sealed {}
    impl<T> Sealed for CudaSlice<T> {}
    impl<T> Sealed for Arc<CudaSlice<T>> {}
    impl<T> Sealed for CudaView<'_, T> {}
    impl Sealed for half::bf16 {}
    impl Sealed for crate::fused::E4m3 {}
}

impl<T: Send + Sync> WeightBuffer for CudaSlice<T> {
    type Element = T;
    fn view(&self) -> CudaView<'_, T> {
        self.as_view()
    }
}

impl<T: Send + Sync> WeightBuffer for Arc<CudaSlice<T>> {
    type Element = T;
    fn view(&self) -> CudaView<'_, T> {
        self.as_view()
    }
}

impl<T: Send + Sync> WeightBuffer for CudaView<'_, T> {
    type Element = T;
    fn view(&self) -> CudaView<'_, T> {
        self.slice(..)
    }
}

/// The layer's expert weights, bf16 or [`E4m3`], in whatever `W` holds them
/// ([`WeightBuffer`]: owned bf16 by default).
#[derive(Debug)]
pub struct CutlassWeights<W = CudaSlice<bf16>> {
    /// GEMM 1 (up and gate) `[local_experts, 2 * intermediate, hidden]`: each expert's linear
    /// (up) rows first, then its gate rows, as [`fused::oracle`](crate::fused::oracle) has them.
    pub fc1: W,
    /// GEMM 2 (down) `[local_experts, hidden, intermediate]`.
    pub fc2: W,
}

/// The scales of an fp8 block-scale layer's weights ([`CutlassMoe::new_fp8_blocks`]) on the
/// device, f32, one per 128x128 block of each local expert's matrix, row-major per expert: a
/// weight is its e4m3 code times its block's scale (DeepSeek-V3's `weight_scale_inv`, stacked
/// per expert; [`prepare::fp8_blocks`](super::prepare::fp8_blocks) makes them from bf16
/// weights). Owned by the layer; checked at construction (lengths, context, every scale
/// finite and not negative).
#[derive(Debug)]
pub struct CutlassBlockScales {
    /// GEMM 1's `[local_experts, 2 * intermediate / 128, hidden / 128]`: the up rows' blocks
    /// first, then the gate rows', as [`CutlassWeights::fc1`] lays out the rows.
    pub fc1: CudaSlice<f32>,
    /// GEMM 2's `[local_experts, hidden / 128, intermediate / 128]`.
    pub fc2: CudaSlice<f32>,
}

/// What a constructor was given besides the weights: their quantisation's scales.
enum Scales<'a> {
    /// bf16 weights.
    None,
    PerTensor(&'a CutlassFp8Scales),
    Blocks(CutlassBlockScales),
}

/// A layer's weight scales on the device, as the C ABI reads them.
#[derive(Debug)]
enum Quant {
    None,
    PerTensor(Fp8Device),
    Blocks(CutlassBlockScales),
}

impl Quant {
    /// The C ABI's `fi_cutlass_moe_weights`.
    fn weights(&self) -> sys::fi_cutlass_moe_weights::Type {
        use sys::fi_cutlass_moe_weights::*;
        match self {
            Quant::None => FI_CUTLASS_MOE_WEIGHTS_BF16,
            Quant::PerTensor(_) => FI_CUTLASS_MOE_WEIGHTS_FP8,
            Quant::Blocks(_) => FI_CUTLASS_MOE_WEIGHTS_FP8_BLOCK,
        }
    }
}

/// Where a call's routing comes from.
#[derive(Debug)]
pub enum CutlassRouting<'a> {
    /// Route inside the call with the layer's [`TopKRouter`] from logits
    /// `[num_tokens, num_experts]` (and the method's bias).
    Logits {
        /// Router logits, f32 or bf16.
        logits: Logits<'a>,
        /// Per-expert bias: required by DeepSeekV3 and MiniMax2, refused by the others.
        bias: Option<Bias<'a>>,
    },
    /// Routing done elsewhere: global expert ids and their weights, each `[num_tokens,
    /// top_k]` (no replay: the ids are yours). Ids outside this rank's experts contribute
    /// nothing, which is how expert parallelism drops the other ranks' experts; so does any id
    /// outside `[0, num_experts)`, which the kernels cannot tell from a remote one.
    Precomputed {
        /// Expert ids.
        ids: CudaView<'a, i32>,
        /// Their weights.
        scales: CudaView<'a, f32>,
    },
}

/// One forward call's inputs.
#[derive(Debug)]
pub struct CutlassBatch<'a> {
    /// Tokens in this call, `0..=max_tokens` (rows of the hidden states; longer buffers are
    /// not read past).
    pub num_tokens: usize,
    /// Logits or precomputed ids.
    pub routing: CutlassRouting<'a>,
    /// Activations `[num_tokens, hidden]`.
    pub hidden_states: CudaView<'a, bf16>,
}

/// A call's routing, once taken apart.
enum Source<'a> {
    Route(RouteInput<'a>),
    Given(CudaView<'a, i32>, CudaView<'a, f32>),
}

/// The device memory one layer's calls work in, made by [`CutlassMoe::workspace`] for its
/// `max_tokens`: the routed ids and scales, and the runner's own scratch. Reused call after
/// call at fixed addresses, so the calls can be recorded into a CUDA graph; one call at a time
/// (forward takes it `&mut`).
#[derive(Debug)]
pub struct CutlassWorkspace {
    ids: CudaSlice<i32>,
    scales: CudaSlice<f32>,
    scratch: CudaSlice<u8>,
}

/// A layer of FlashInfer's CUTLASS fused MoE on Hopper: the top-k router (or precomputed
/// ids), GEMM 1, SwiGLU, GEMM 2 and the weighted sum, bf16 activations and output, bf16
/// weights ([`new`](Self::new)), fp8 per-tensor ones ([`new_fp8`](Self::new_fp8)) or fp8
/// with 128x128 block scales ([`new_fp8_blocks`](Self::new_fp8_blocks)), held as `W` holds
/// them (owned by default; see [`WeightBuffer`]).
///
/// A model owns its layers and their weights, and can be shared across a server's tasks:
///
/// ```no_run
/// use std::sync::Arc;
/// use flashinfer_rs::cudarc::driver::CudaStream;
/// use flashinfer_rs::cutlass::{CutlassMoe, CutlassMoeConfig, CutlassWeights};
/// use flashinfer_rs::half::bf16;
/// use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
///
/// struct Model {
///     moe: Vec<CutlassMoe>, // each layer owns its fc1 and fc2
/// }
///
/// fn load(stream: &Arc<CudaStream>, layers: usize) -> flashinfer_rs::Result<Arc<Model>> {
///     let (experts, h, i) = (128, 2048, 768);
///     let config = CutlassMoeConfig {
///         routing: RoutingConfig::new(RoutingMethod::Renormalize, experts as u32, 8),
///         hidden_size: h,
///         intermediate_size: i,
///         max_tokens: 4096,
///     };
///     let moe = (0..layers)
///         .map(|_| {
///             let weights = CutlassWeights {
///                 fc1: stream.alloc_zeros::<bf16>(experts * 2 * i * h)?, // from a checkpoint
///                 fc2: stream.alloc_zeros::<bf16>(experts * h * i)?,
///             };
///             CutlassMoe::new(config, weights)
///         })
///         .collect::<flashinfer_rs::Result<_>>()?;
///     Ok(Arc::new(Model { moe })) // Send + Sync: shared by every request's task
/// }
/// ```
///
/// [`CutlassMoe::new`] checks every rule that does not depend on the batch (routing config,
/// sizes, expert range, the weights' sizes and context, the device) once and builds the
/// runner; [`CutlassMoe::forward`] checks only the batch's buffers and enqueues the kernels.
/// The routed ids land in `routing_replay_out` in the same stream order, so the ids captured
/// are the ids the GEMMs consumed.
pub struct CutlassMoe<W = CudaSlice<bf16>> {
    /// First, so that it is destroyed while the context and the weights still live.
    runner: Runner,
    plan: CutlassPlan,
    router: TopKRouter,
    weights: CutlassWeights<W>,
    ctx: Arc<CudaContext>,
    /// The runner's scratch, from `fi_cutlass_moe_workspace_size`.
    scratch_bytes: usize,
    schedule: CutlassSchedule,
    /// Calls of up to this many tokens take the decode kernels.
    decode_max_tokens: usize,
    /// fp8 weights' scales on the device.
    quant: Quant,
    /// Whether a call has launched (the first launch is logged).
    launched: AtomicBool,
}

/// [`CutlassFp8Scales`] as the kernels read them (fi_cutlass_moe_buffers' `fp8_*`), with
/// `a1`, `a2` the activations' scales and `w13`, `w2` the weights'.
#[derive(Debug)]
struct Fp8Device {
    /// `[1 / a1]`: quantises the hidden states.
    input_quant: CudaSlice<f32>,
    /// `[a1 * w13[e]]` per local expert: GEMM 1's output scale.
    fc1_dequant: CudaSlice<f32>,
    /// `[1 / a2]`: quantises the SwiGLU output.
    fc2_quant: CudaSlice<f32>,
    /// `[a2 * w2[e]]` per local expert: GEMM 2's output scale.
    fc2_dequant: CudaSlice<f32>,
}

impl Fp8Device {
    /// Copies checked scales to the device, on the weights' stream.
    fn new(stream: &Arc<CudaStream>, s: &CutlassFp8Scales) -> Result<Fp8Device> {
        let times = |a: f32, w: &[f32]| w.iter().map(|w| a * w).collect::<Vec<f32>>();
        Ok(Fp8Device {
            input_quant: stream.clone_htod(&[1.0 / s.fc1_input])?,
            fc1_dequant: stream.clone_htod(&times(s.fc1_input, &s.fc1_weights))?,
            fc2_quant: stream.clone_htod(&[1.0 / s.fc2_input])?,
            fc2_dequant: stream.clone_htod(&times(s.fc2_input, &s.fc2_weights))?,
        })
    }
}

/// One C-ABI layer (`fi_cutlass_moe`): upstream's runner, its tactics and per-call state.
struct Runner(NonNull<sys::fi_cutlass_moe>);

// SAFETY: the C layer serialises calls on one runner (its mutex) and holds no thread-bound
// state.
unsafe impl Send for Runner {}
// SAFETY: as above: `forward(&self)` from several threads takes the runner's lock in turn.
unsafe impl Sync for Runner {}

impl Runner {
    /// Creates the layer `params` describe on the current context's device.
    fn create(params: &sys::fi_cutlass_moe_params) -> Result<Runner> {
        let mut raw = std::ptr::null_mut();
        // SAFETY: `params` is a valid struct and `raw` a valid out-pointer.
        check(unsafe { sys::fi_cutlass_moe_create(params, &mut raw) })?;
        NonNull::new(raw)
            .map(Runner)
            .ok_or_else(|| Error::Internal("fi_cutlass_moe_create gave no layer".into()))
    }

    /// GEMM 1's and GEMM 2's tactics, by index.
    fn tactics(&self) -> Result<(Vec<CutlassTactic>, Vec<CutlassTactic>)> {
        let (mut a, mut b) = (0i32, 0i32);
        // SAFETY: `self.0` is a live layer; both are valid out-pointers.
        check(unsafe { sys::fi_cutlass_moe_tactic_count(self.0.as_ptr(), &mut a, &mut b) })?;
        let describe = |gemm: i32, count: i32| -> Result<Vec<CutlassTactic>> {
            (0..count)
                .map(|index| {
                    let mut t = sys::fi_cutlass_moe_tactic::default();
                    // SAFETY: `self.0` is a live layer, `index` below the count it gave, `t` a
                    // valid out-pointer.
                    check(unsafe {
                        sys::fi_cutlass_moe_tactic_info(self.0.as_ptr(), gemm, index, &mut t)
                    })?;
                    Ok(CutlassTactic {
                        tile: (t.tile_m.max(0) as u32, t.tile_n.max(0) as u32),
                        swap_ab: t.swap_ab != 0,
                        finalize: t.finalize != 0,
                    })
                })
                .collect()
        };
        Ok((describe(1, a)?, describe(2, b)?))
    }

    /// What a call of `num_tokens` tokens (at most the layer's max_tokens) launches.
    fn kernels_for(&self, num_tokens: usize) -> Result<CutlassKernels> {
        let tokens = i32::try_from(num_tokens)
            .map_err(|_| Error::Internal("a checked token count above i32".into()))?;
        let mut k = sys::fi_cutlass_moe_kernels::default();
        // SAFETY: `self.0` is a live layer, `k` a valid out-pointer.
        check(unsafe { sys::fi_cutlass_moe_kernels_for(self.0.as_ptr(), tokens, &mut k) })?;
        let index = |t: i32| {
            u32::try_from(t).map_err(|_| {
                Error::Internal(format!(
                    "fi_cutlass_moe_kernels_for: the GEMMs' path, tactic {t}"
                ))
            })
        };
        use sys::fi_cutlass_moe_path as path;
        match path::Type::try_from(k.path) {
            Ok(path::FI_CUTLASS_MOE_PATH_NONE) => Ok(CutlassKernels::Nothing),
            Ok(path::FI_CUTLASS_MOE_PATH_DECODE) => Ok(CutlassKernels::Decode),
            Ok(path::FI_CUTLASS_MOE_PATH_GEMMS) => Ok(CutlassKernels::Gemms(
                index(k.tactic_gemm1)?,
                index(k.tactic_gemm2)?,
            )),
            _ => Err(Error::Internal(format!(
                "fi_cutlass_moe_kernels_for: path {}",
                k.path
            ))),
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        // SAFETY: the pointer came from fi_cutlass_moe_create and is freed once; no call runs
        // (they borrow the layer that holds it).
        unsafe { sys::fi_cutlass_moe_destroy(self.0.as_ptr()) }
    }
}

impl<W> std::fmt::Debug for CutlassMoe<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CutlassMoe")
            .field("config", self.plan.config())
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// One tactic of a grouped GEMM ([`CutlassMoe::tactics`]): a TMA warp-specialised config of
/// the runner, or a tile of the block-scale GEMM (never `swap_ab` nor `finalize`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CutlassTactic {
    /// CTA tile (rows, columns) of the GEMM's output: rows over the tokens and columns over
    /// the weights' rows, or the other way round when `swap_ab`.
    pub tile: (u32, u32),
    /// The weights are the GEMM's A operand: the tile's 128 rows run over the weights, its
    /// columns over the few tokens an expert has at decode.
    pub swap_ab: bool,
    /// GEMM 2 only: the weighted sum over each token's experts is fused in its epilogue.
    /// Never in this build: that epilogue's atomic scatter makes the output's bits differ
    /// from call to call (the separate finalize kernel is deterministic).
    pub finalize: bool,
}

impl std::fmt::Display for CutlassTactic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.tile.0, self.tile.1)?;
        if self.swap_ab {
            f.write_str(" swap")?;
        }
        if self.finalize {
            f.write_str(" fin")?;
        }
        Ok(())
    }
}

/// What a call of a layer launches after its routing ([`CutlassMoe::kernels_for`]): the rule
/// of its [`CutlassSchedule`], as the call itself applies it. Non-exhaustive: a later kernel
/// path adds a variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CutlassKernels {
    /// Zero tokens: nothing.
    Nothing,
    /// The decode kernels (GEMM 1 with SwiGLU, then GEMM 2 with the weighted sum).
    Decode,
    /// The grouped GEMMs with these tactics of GEMM 1 and GEMM 2: indices into
    /// [`CutlassMoe::tactics`], as [`CutlassSchedule::Tactics`] takes them.
    Gemms(u32, u32),
}

/// Up to how many tokens the [`Fastest`](CutlassSchedule::Fastest) schedule takes the decode
/// kernels (two bandwidth-bound kernels of this crate that read each routed expert's weights
/// once: GEMM 1 with SwiGLU, then GEMM 2 with the weighted sum, where the grouped GEMMs'
/// 128-row tiles are mostly empty and their chain of kernels costs more than the bytes), for
/// experts of up to [`DECODE_MAX_EXPERT_SIZE`] (`small`) and for larger ones (`large`); one
/// limit per weight format: [`DECODE_MAX_TOKENS`], [`FP8_DECODE_MAX_TOKENS`],
/// [`BLOCK_DECODE_MAX_TOKENS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodeLimit {
    /// For experts of up to [`DECODE_MAX_EXPERT_SIZE`] (`hidden_size * intermediate_size`).
    pub small: usize,
    /// For larger experts.
    pub large: usize,
}

impl DecodeLimit {
    /// The limit for experts of `hidden_size x intermediate_size`.
    pub const fn for_expert(self, hidden_size: usize, intermediate_size: usize) -> usize {
        if hidden_size.saturating_mul(intermediate_size) <= DECODE_MAX_EXPERT_SIZE {
            self.small
        } else {
            self.large
        }
    }
}

// The limits below are the largest of the bench's sizes (1, 2, 4, 8, 16 tokens) at which the
// decode kernels, forced, were at least as fast as the grouped GEMMs, forced with their fastest
// fixed tactics, in one run of `benches/moe_layer.rs` on an H100 (session 25, BENCHMARKS.md 7l;
// us, decode kernels against GEMMs) and in an earlier run where one measured the same size
// (session 21, 7i). With these limits (session 26, BENCHMARKS.md 7m, the layer A B A B against
// the single limits before them, H100): Qwen3 bf16 at 8 tokens 163.1-163.6 us against 181.8,
// DeepSeek-V3-sized at one token 260.1 against 271.0 (bf16) and 147.6 against 157.0 (fp8).

/// bf16 weights ([`CutlassMoe::new`]). A Qwen3-30B-A3B layer (small experts) at 1 / 2 / 4 / 8 /
/// 16 tokens: 34.7 / 57.8 / 104.9 / 167.1 / 280.0 against 52.9 / 78.6 / 124.8 / 187.7 / 278.0
/// (session 21: 165.5 against 183.8 at 8); a DeepSeek-V3-sized one (7168 x 2048 experts) at 1 /
/// 2 / 4 / 8: 268.3 / 503.4 / 943.4 / 1782.7 against 281.9 / 519.6 / 966.1 / 1770.9.
pub const DECODE_MAX_TOKENS: DecodeLimit = DecodeLimit { small: 8, large: 4 };

/// fp8 per-tensor weights ([`CutlassMoe::new_fp8`]). Qwen3-30B-A3B at 1 / 2 / 4 / 8 / 16 tokens:
/// 18.9 / 37.1 / 63.8 / 109.6 / 208.8 against 38.1 / 54.9 / 79.4 / 113.4 / 159.1; DeepSeek-V3-sized
/// at 1 / 2 / 4: 149.4 / 282.0 / 542.7 against 160.4 / 280.8 / 504.1.
pub const FP8_DECODE_MAX_TOKENS: DecodeLimit = DecodeLimit { small: 8, large: 1 };

/// fp8 block-scale weights ([`CutlassMoe::new_fp8_blocks`]), against the block-scale GEMM with
/// its fastest tiles. Qwen3-30B-A3B at 1 / 2 / 4 / 8 tokens: 23.9 / 44.0 / 73.3 / 119.1 against
/// 48.3 / 63.2 / 86.1 / 119.5 (session 21: 73.2 against 86.3 at 4, 122.6 against 118.7 at 8:
/// level at 8, so 4); DeepSeek-V3-sized at 1 / 2 / 4: 161.7 / 307.2 / 589.9 against 200.0 /
/// 311.6 / 522.8 (3 since session 19, 7f: level at 4 there).
pub const BLOCK_DECODE_MAX_TOKENS: DecodeLimit = DecodeLimit { small: 4, large: 3 };

/// The largest expert (`hidden_size * intermediate_size`) a [`DecodeLimit`] counts as small: a
/// Qwen3-30B-A3B expert is 1.5 Mi (2048 x 768), a DeepSeek-V3-sized one 14 Mi (7168 x 2048).
pub const DECODE_MAX_EXPERT_SIZE: usize = 4 << 20;

/// Which kernels a layer's calls take ([`CutlassMoe::with_schedule`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CutlassSchedule {
    /// The fastest this crate knows ([`CutlassMoe::new`]): the decode kernels for calls of up to
    /// the weight format's [`DecodeLimit`] ([`DECODE_MAX_TOKENS`] for bf16: 8 tokens for experts of
    /// up to [`DECODE_MAX_EXPERT_SIZE`], 4 for larger ones); the others the grouped GEMMs, their
    /// tactics chosen per call from the call's mean rows per expert (`num_tokens * top_k /
    /// num_experts`, host-side, no launch): below 16, the 128x16 tile with swapped operands in both
    /// GEMMs; from 16, the 128x64 tile with swapped operands (0.97x the 128x256's time at 32
    /// Qwen3 rows an expert on an H100, and the fastest pair at 16 and 32 DeepSeek-V3-sized rows,
    /// BENCHMARKS.md 7n); from 64 on, the 128x256 tile (on an H200 within 2.5% of the fastest of
    /// three tiles in both operand orders, BENCHMARKS.md section 7). Block-scale weights: the
    /// block-scale GEMM's 64x64 tile in GEMM 2, and in GEMM 1 below 64 (its 128x64 from 64 on;
    /// BENCHMARKS.md 7g).
    #[default]
    Fastest,
    /// As [`Fastest`](Self::Fastest), with the decode kernels taking calls of up to this many
    /// tokens (0: never; `usize::MAX`: always), whatever the experts' size. The workspace
    /// holds their activations for `min(n, max_tokens)` tokens.
    DecodeUpTo(usize),
    /// The grouped GEMMs for every call (no decode kernels), GEMM 1's and GEMM 2's tactics
    /// fixed by index into [`CutlassMoe::tactics`] (benchmarks search them per shape). Batch
    /// invariant, as [`BatchInvariant`](Self::BatchInvariant).
    Tactics(u32, u32),
    /// Every call the same kernels, so that a token's output (its bits) does not depend on the
    /// other tokens of its call, nor on how many there are: the grouped GEMMs with the
    /// decode tactic (128x16, operands swapped) in both GEMMs at every size, no decode kernels.
    /// Routing is per token whatever the schedule; the GEMMs' reduction over the hidden and
    /// intermediate dimensions then runs in one order for every row, and the weighted sum
    /// over a token's experts in its top-k order. What a server needs for a request's tokens
    /// and routed experts to equal the same request run alone (e.g. RL rollouts replayed by a
    /// trainer). It costs speed where `Fastest` takes other kernels: the decode kernels at up
    /// to 8 tokens (a Qwen3-30B-A3B layer at one token, H100: 53.2 us instead of 38.0,
    /// BENCHMARKS.md 7c) and the 128x64 and 128x256 tiles from 16 rows per expert. A
    /// block-scale layer takes its GEMM with the 64x64 tile at every size (not the decode
    /// kernels `Fastest` takes up to [`BLOCK_DECODE_MAX_TOKENS`], nor the 128x64 tile in GEMM 1
    /// from 64 rows per expert, the faster there at 4096 tokens).
    BatchInvariant,
}

impl<W: WeightBuffer<Element = bf16>> CutlassMoe<W> {
    /// Checks `config` and `weights` and creates the runner on the weights' device, with the
    /// [`Fastest`](CutlassSchedule::Fastest) schedule. Answers [`Error::UnsupportedArch`] off
    /// Hopper (sm_90) and [`Error::KernelsNotBuilt`] in a build without the `sm90-moe` feature.
    pub fn new(config: CutlassMoeConfig, weights: CutlassWeights<W>) -> Result<Self> {
        Self::create(config, weights, CutlassSchedule::Fastest, Scales::None)
    }

    /// [`new`](Self::new) with the kernels `schedule` says.
    pub fn with_schedule(
        config: CutlassMoeConfig,
        weights: CutlassWeights<W>,
        schedule: CutlassSchedule,
    ) -> Result<Self> {
        Self::create(config, weights, schedule, Scales::None)
    }
}

impl<W: WeightBuffer<Element = E4m3>> CutlassMoe<W> {
    /// An fp8 per-tensor layer (feature `sm90-moe-fp8`): e4m3 weights with one scale per
    /// expert and GEMM, e4m3 activations with one static scale per GEMM input, bf16 hidden
    /// states in and bf16 output out, as FlashInfer's `CutlassMoeFCRunner<fp8, fp8, bf16>` (and
    /// vLLM's FlashInfer CUTLASS fp8 MoE) computes it: each call quantises its hidden states
    /// (`e4m3(x / fc1_input)`, saturating), GEMM 1 accumulates in f32 and scales by
    /// `fc1_input * fc1_weights[e]`, SwiGLU runs in f32 on GEMM 1's bf16 output and is
    /// quantised with `fc2_input`, GEMM 2 scales by `fc2_input * fc2_weights[e]`, and the
    /// weighted sum is in f32. Weights as [`CutlassWeights`] lays them out (up rows first);
    /// [`prepare`](super::prepare) quantises bf16 weights. The
    /// [`Fastest`](CutlassSchedule::Fastest) schedule, as for bf16 (the decode kernels do the
    /// same arithmetic on e4m3 weights). Answers [`Error::KernelsNotBuilt`] in a build without
    /// `sm90-moe-fp8`.
    pub fn new_fp8(
        config: CutlassMoeConfig,
        weights: CutlassWeights<W>,
        scales: &CutlassFp8Scales,
    ) -> Result<Self> {
        Self::create(
            config,
            weights,
            CutlassSchedule::Fastest,
            Scales::PerTensor(scales),
        )
    }

    /// [`new_fp8`](Self::new_fp8) with the kernels `schedule` says.
    pub fn fp8_with_schedule(
        config: CutlassMoeConfig,
        weights: CutlassWeights<W>,
        scales: &CutlassFp8Scales,
        schedule: CutlassSchedule,
    ) -> Result<Self> {
        Self::create(config, weights, schedule, Scales::PerTensor(scales))
    }

    /// An fp8 block-scale layer (feature `sm90-moe-fp8`), as DeepSeek-V3/R1, Kimi-K2 and
    /// Qwen3's fp8 checkpoints ship their experts: e4m3 weights with one scale per 128x128
    /// block ([`CutlassBlockScales`]), bf16 hidden states in and bf16 output out, as
    /// FlashInfer's `CutlassMoeFCRunner<bf16, fp8>` with `use_deepseek_fp8_block_scale`
    /// computes it: each GEMM quantises its input per token and 128 columns (`e4m3(x * 448 /
    /// amax)`, the group's `amax / 448` kept as its scale), multiplies in fp8 and accumulates
    /// each 128-wide slice of K in f32 times the product of its two scales; GEMM 1's output is
    /// bf16, SwiGLU runs in f32 on it and is rounded to bf16 before GEMM 2 quantises it; the
    /// weighted sum is in f32. hidden and intermediate sizes must be multiples of 128 of at
    /// most 20480. The GEMMs are one kernel, upstream's block-scale GEMM, whose two tiles are
    /// the layer's [`tactics`](CutlassMoe::tactics): 128x64 (upstream's, one CTA per SM) and
    /// 64x64 (two CTAs per SM), bit for bit the same output; `Fastest` takes 64x64 in GEMM 2
    /// and in GEMM 1 below 64 mean rows per expert (128x64 from there on),
    /// [`Tactics`](CutlassSchedule::Tactics) fixes each GEMM's; calls of up to
    /// [`BLOCK_DECODE_MAX_TOKENS`] (4 tokens for experts of up to [`DECODE_MAX_EXPERT_SIZE`], 3
    /// for larger ones) take the decode kernels instead, with the same
    /// quantisation and arithmetic. [`BatchInvariant`](CutlassSchedule::BatchInvariant) takes
    /// the GEMM with the 64x64 tile at every size; [`DecodeUpTo`](CutlassSchedule::DecodeUpTo)
    /// moves the decode kernels' limit. Answers [`Error::KernelsNotBuilt`] in a build without
    /// `sm90-moe-fp8`.
    pub fn new_fp8_blocks(
        config: CutlassMoeConfig,
        weights: CutlassWeights<W>,
        scales: CutlassBlockScales,
    ) -> Result<Self> {
        Self::create(
            config,
            weights,
            CutlassSchedule::Fastest,
            Scales::Blocks(scales),
        )
    }

    /// [`new_fp8_blocks`](Self::new_fp8_blocks) with the kernels `schedule` says (see there).
    pub fn fp8_blocks_with_schedule(
        config: CutlassMoeConfig,
        weights: CutlassWeights<W>,
        scales: CutlassBlockScales,
        schedule: CutlassSchedule,
    ) -> Result<Self> {
        Self::create(config, weights, schedule, Scales::Blocks(scales))
    }
}

/// Every block scale finite and not negative (a NaN or infinite one would make its block's
/// outputs NaN; a negative one is no checkpoint's): read back once, at construction.
fn check_block_scale_values(s: &CutlassBlockScales) -> Result<()> {
    for (name, scales) in [("fc1 scales", &s.fc1), ("fc2 scales", &s.fc2)] {
        let host = scales.stream().clone_dtoh(scales)?;
        if let Some((n, v)) = host
            .iter()
            .enumerate()
            .find(|&(_, v)| !(v.is_finite() && *v >= 0.0))
        {
            return Err(Error::invalid(
                name,
                format!("scale {n} is {v}: block scales must be finite and not negative"),
            ));
        }
    }
    Ok(())
}

/// Up to how many tokens the [`Fastest`](CutlassSchedule::Fastest) schedule takes the decode
/// kernels for this layer's weights (its weight format's [`DecodeLimit`]).
fn default_decode_max_tokens(config: &CutlassMoeConfig, quant: &Quant) -> usize {
    let limit = match quant {
        Quant::None => DECODE_MAX_TOKENS,
        Quant::PerTensor(_) => FP8_DECODE_MAX_TOKENS,
        Quant::Blocks(_) => BLOCK_DECODE_MAX_TOKENS,
    };
    limit.for_expert(config.hidden_size, config.intermediate_size)
}

/// Tactics by index, as the C ABI takes them.
fn tactic_indices(tactics: (u32, u32)) -> Result<(i32, i32)> {
    let as_i32 = |v: u32| i32::try_from(v).map_err(|_| Error::invalid("tactics", "too large"));
    Ok((as_i32(tactics.0)?, as_i32(tactics.1)?))
}

/// The index of the 128x16 tactic with swapped operands in `tactics` (the decode tactic the
/// per-call choice takes below 16 rows per expert).
fn decode_tactic(tactics: &[CutlassTactic], gemm: &str) -> Result<u32> {
    let decode = |t: &CutlassTactic| t.tile == (128, 16) && t.swap_ab && !t.finalize;
    tactics
        .iter()
        .position(decode)
        .map(|i| i as u32)
        .ok_or_else(|| Error::Internal(format!("{gemm}: this build has no 128x16 swap tactic")))
}

impl<W: WeightBuffer> CutlassMoe<W>
where
    W::Element: CutlassElement,
{
    /// Every constructor's body: checks `config` and `weights` (and `scales`, given exactly
    /// when the element is [`E4m3`]) and creates the runner `schedule` asks for.
    fn create(
        config: CutlassMoeConfig,
        weights: CutlassWeights<W>,
        schedule: CutlassSchedule,
        scales: Scales<'_>,
    ) -> Result<Self> {
        let (fc1, fc2) = (weights.fc1.view(), weights.fc2.view());
        let plan = CutlassPlan::new(config, fc1.len(), fc2.len())?;
        let quant = match scales {
            Scales::None => Quant::None,
            Scales::PerTensor(s) => {
                plan.check_fp8_scales(s)?;
                Quant::PerTensor(Fp8Device::new(fc1.stream(), s)?)
            }
            Scales::Blocks(s) => {
                plan.check_fp8_blocks(s.fc1.len(), s.fc2.len())?;
                same_context(
                    fc1.stream(),
                    [
                        ("fc1 scales", s.fc1.stream()),
                        ("fc2 scales", s.fc2.stream()),
                    ],
                )?;
                check_block_scale_values(&s)?;
                Quant::Blocks(s)
            }
        };
        // Tactics as the C ABI takes them: indices, or -1 for both: chosen per call.
        let (tactics, decode_max_tokens) = match (schedule, &quant) {
            (CutlassSchedule::Fastest, q) => ((-1, -1), default_decode_max_tokens(&config, q)),
            (CutlassSchedule::DecodeUpTo(n), _) => ((-1, -1), n),
            // One kernel for every call: the block-scale GEMM with its 64x64 tile (tactic 1,
            // the faster at every size to 512 tokens: docs/fp8-on-hopper.md section 10).
            (CutlassSchedule::BatchInvariant, Quant::Blocks(_)) => ((1, 1), 0),
            (CutlassSchedule::Tactics(a, b), _) => (tactic_indices((a, b))?, 0),
            // Resolved below, from the runner's own list.
            (CutlassSchedule::BatchInvariant, _) => ((-1, -1), 0),
        };
        // More than max_tokens never matters, and max_tokens fits in i32 (the plan checked it).
        let decode_max_tokens = decode_max_tokens.min(config.max_tokens);
        let router = TopKRouter::from_plan(*plan.router());
        same_context(fc1.stream(), [("fc2", fc2.stream())])?;
        let ctx = fc1.stream().context().clone();
        let mut params = sys::fi_cutlass_moe_params {
            num_experts: plan.experts() as i32,
            top_k: plan.top_k() as i32,
            hidden_size: config.hidden_size as i32,
            intermediate_size: config.intermediate_size as i32,
            ep_size: plan.ep_size() as i32,
            ep_rank: plan.ep_rank() as i32,
            max_tokens: config.max_tokens as i32,
            tactic_gemm1: tactics.0,
            tactic_gemm2: tactics.1,
            decode_max_tokens: decode_max_tokens as i32,
            weights: quant.weights() as i32,
        };
        ctx.bind_to_thread()?;
        if schedule == CutlassSchedule::BatchInvariant && !matches!(quant, Quant::Blocks(_)) {
            // The tactics' indices are the runner's: ask a runner made for these params.
            let probe = Runner::create(&params)?;
            let (gemm1, gemm2) = probe.tactics()?;
            let fixed = (
                decode_tactic(&gemm1, "GEMM 1")?,
                decode_tactic(&gemm2, "GEMM 2")?,
            );
            (params.tactic_gemm1, params.tactic_gemm2) = tactic_indices(fixed)?;
        }
        let runner = Runner::create(&params)?;
        let mut scratch_bytes = 0usize;
        // SAFETY: `runner` is a live layer; `scratch_bytes` a valid out-pointer.
        check(unsafe {
            sys::fi_cutlass_moe_workspace_size(runner.0.as_ptr(), &mut scratch_bytes)
        })?;
        let layer = CutlassMoe {
            runner,
            plan,
            router,
            weights,
            ctx,
            scratch_bytes,
            schedule,
            decode_max_tokens,
            quant,
            launched: AtomicBool::new(false),
        };
        tracing::info!(
            target: "flashinfer_rs",
            config = ?config,
            schedule = ?schedule,
            tactics = ?(params.tactic_gemm1, params.tactic_gemm2),
            decode_max_tokens,
            workspace_bytes = layer.workspace_bytes(),
            "cutlass: Hopper MoE layer built"
        );
        Ok(layer)
    }

    /// The checked configuration.
    pub fn config(&self) -> CutlassMoeConfig {
        *self.plan.config()
    }

    /// Calls of up to this many tokens take the decode kernels (0: none do).
    pub fn decode_max_tokens(&self) -> usize {
        self.decode_max_tokens
    }

    /// The schedule the layer was made with.
    pub fn schedule(&self) -> CutlassSchedule {
        self.schedule
    }

    /// GEMM 1's and GEMM 2's tactics on this device, in the order [`CutlassSchedule::Tactics`]
    /// indexes them: the runner's TMA warp-specialised configs, or for a block-scale layer the
    /// block-scale GEMM's two tiles (128x64, 64x64).
    pub fn tactics(&self) -> Result<(Vec<CutlassTactic>, Vec<CutlassTactic>)> {
        self.runner.tactics()
    }

    /// What a call of `num_tokens` tokens launches after its routing: the decode kernels, the
    /// grouped GEMMs with which tactics, or nothing. Host-side, no launch: the same rule
    /// [`forward`](Self::forward) applies, so a server can log it and a benchmark can name it.
    /// `num_tokens` above the layer's `max_tokens` is refused ([`Error::InvalidArgument`]).
    pub fn kernels_for(&self, num_tokens: usize) -> Result<CutlassKernels> {
        let max = self.plan.config().max_tokens;
        ensure(num_tokens <= max, "num_tokens", || {
            format!("{num_tokens} exceeds the layer's max_tokens ({max})")
        })?;
        self.runner.kernels_for(num_tokens)
    }

    /// Bytes of device memory [`workspace`](Self::workspace) allocates.
    pub fn workspace_bytes(&self) -> usize {
        let ids = self.plan.routed_len() * 4;
        2 * ids + self.scratch_bytes
    }

    /// Allocates the device memory this layer's calls need (for `max_tokens`) on `stream`.
    pub fn workspace(&self, stream: &Arc<CudaStream>) -> Result<CutlassWorkspace> {
        let n = self.plan.routed_len();
        Ok(CutlassWorkspace {
            ids: stream.alloc_zeros::<i32>(n)?,
            scales: stream.alloc_zeros::<f32>(n)?,
            scratch: stream.alloc_zeros::<u8>(self.scratch_bytes)?,
        })
    }

    /// Runs the layer on `batch.num_tokens` tokens into `output` `[num_tokens, hidden]`:
    /// routes (from logits with the layer's top-k router, or precomputed ids), then GEMM 1,
    /// SwiGLU, GEMM 2 and the weighted sum over this rank's experts. The routed ids land in
    /// `routing_replay_out` when given (`[t][k]` = token `t`'s k-th expert, global id; rows at
    /// or past `num_tokens` untouched), in the same stream order as the GEMMs that use them.
    ///
    /// Everything is enqueued on `stream`, which must be in the weights' CUDA context, into
    /// `workspace`; nothing is allocated and nothing synchronises, so the call can be captured
    /// in a CUDA graph. With zero tokens nothing is launched.
    pub fn forward(
        &self,
        stream: &Arc<CudaStream>,
        batch: CutlassBatch<'_>,
        output: &mut CudaViewMut<'_, bf16>,
        workspace: &mut CutlassWorkspace,
        routing_replay_out: Option<&mut ReplayView<'_>>,
    ) -> Result<()> {
        self.run(stream, batch, output, workspace, routing_replay_out, None)
    }

    /// [`forward`](Self::forward) routing into a capture store's views of one layer
    /// (`store.layer_views(l)`): the ids into its replay view and, when the store captures
    /// weights, the routing weights into its weights view, which the GEMMs then read as
    /// their scales (no copy).
    pub fn forward_captured(
        &self,
        stream: &Arc<CudaStream>,
        batch: CutlassBatch<'_>,
        output: &mut CudaViewMut<'_, bf16>,
        workspace: &mut CutlassWorkspace,
        views: LayerViews<'_>,
    ) -> Result<()> {
        let LayerViews { mut ids, weights } = views;
        self.run(stream, batch, output, workspace, Some(&mut ids), weights)
    }

    fn run(
        &self,
        stream: &Arc<CudaStream>,
        batch: CutlassBatch<'_>,
        output: &mut CudaViewMut<'_, bf16>,
        workspace: &mut CutlassWorkspace,
        replay: Option<&mut ReplayView<'_>>,
        mut captured_weights: Option<CudaViewMut<'_, f32>>,
    ) -> Result<()> {
        let CutlassBatch {
            num_tokens: t,
            routing,
            hidden_states,
        } = batch;
        self.plan.check_batch(&CutlassBatchSizes {
            num_tokens: t,
            routing: routing_sizes(&routing),
            hidden_states: hidden_states.len(),
            output: output.len(),
            replay: replay.as_deref().map(|r| (r.rows(), r.cols())),
            captured_weights: captured_weights.as_ref().map(DeviceSlice::len),
        })?;
        self.check_workspace(workspace)?;
        // The routing and the weights' views are held here: the launch borrows them.
        let source = match routing {
            CutlassRouting::Logits { logits, bias } => Source::Route(RouteInput {
                logits,
                bias,
                num_tokens: t,
            }),
            CutlassRouting::Precomputed { ids, scales } => Source::Given(ids, scales),
        };
        let (fc1_view, fc2_view) = (self.weights.fc1.view(), self.weights.fc2.view());
        let (fp8, blocks) = match &self.quant {
            Quant::None => (None, None),
            Quant::PerTensor(f) => (Some(f), None),
            Quant::Blocks(b) => (None, Some(b)),
        };
        let mut l = Launch::for_layer(stream, &self.ctx);
        let x = l.input("hidden_states", &hidden_states);
        let out = l.output("output", output);
        let scratch = l.output("workspace", &mut workspace.scratch);
        l.contexts(source.streams());
        l.contexts(replay.as_deref().map(|r| ("replay", r.stream())));
        l.contexts(
            captured_weights
                .as_ref()
                .map(|w| ("views.weights", w.stream())),
        );
        l.check()?;
        if t == 0 {
            return Ok(());
        }
        if !self.launched.swap(true, Ordering::Relaxed) {
            tracing::debug!(target: "flashinfer_rs", num_tokens = t, "cutlass: first launch");
        }
        // In the weights' context, which the launch checked the stream against.
        let fc1 = l.input("weights", &fc1_view);
        let fc2 = l.input("weights", &fc2_view);
        let input_quant = l.input_opt("fp8 scales", fp8.map(|f| &f.input_quant));
        let fc1_dequant = l.input_opt("fp8 scales", fp8.map(|f| &f.fc1_dequant));
        let fc2_quant = l.input_opt("fp8 scales", fp8.map(|f| &f.fc2_quant));
        let fc2_dequant = l.input_opt("fp8 scales", fp8.map(|f| &f.fc2_dequant));
        let fc1_blocks = l.input_opt("block scales", blocks.map(|b| &b.fc1));
        let fc2_blocks = l.input_opt("block scales", blocks.map(|b| &b.fc2));
        let (ids, scales) = match &source {
            Source::Route(input) => {
                let weights = captured_weights.as_mut();
                let (ids, scales) = (&mut workspace.ids, &mut workspace.scales);
                self.route(stream, input, ids, scales, weights, replay)?;
                let scales = match &captured_weights {
                    Some(w) => l.input("views.weights", w),
                    None => l.input("workspace", &workspace.scales),
                };
                (l.input("workspace", &workspace.ids), scales)
            }
            Source::Given(ids, scales) => (l.input("ids", ids), l.input("scales", scales)),
        };
        l.call(|p| {
            let buffers = sys::fi_cutlass_moe_buffers {
                num_tokens: t as i32,
                hidden_states: p.ro(x),
                expert_ids: p.ro(ids),
                expert_scales: p.ro(scales),
                fc1_weights: p.ro(fc1),
                fc2_weights: p.ro(fc2),
                output: p.rw(out),
                workspace: p.rw(scratch),
                workspace_bytes: self.scratch_bytes,
                // Null but for fp8 per-tensor weights.
                fp8_input_quant: p.ro(input_quant),
                fp8_fc1_dequant: p.ro(fc1_dequant),
                fp8_fc2_quant: p.ro(fc2_quant),
                fp8_fc2_dequant: p.ro(fc2_dequant),
                // Null but for fp8 block-scale weights.
                fc1_block_scales: p.ro(fc1_blocks),
                fc2_block_scales: p.ro(fc2_blocks),
            };
            // SAFETY: the launch's guarantees, and every buffer sized for `t` tokens
            // (check_batch) or for the layer (the weights, the workspace: check_workspace).
            unsafe { sys::fi_cutlass_moe_run(self.runner.0.as_ptr(), &buffers, p.stream()) }
        })
    }

    /// Routes `input` with the layer's router: the ids into the workspace (and `replay`), the
    /// scales into the captured weights view when there is one, else into the workspace. The
    /// outputs' views end here, before the caller takes the pointers the GEMMs read.
    fn route(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        ids: &mut CudaSlice<i32>,
        scales: &mut CudaSlice<f32>,
        captured_weights: Option<&mut CudaViewMut<'_, f32>>,
        replay: Option<&mut ReplayView<'_>>,
    ) -> Result<()> {
        let n = input.num_tokens * self.plan.top_k();
        let mut outputs = TopKOutputs {
            ids: Some(ids.slice_mut(..n)),
            weights_f32: match captured_weights {
                Some(w) => Some(w.slice_mut(..n)),
                None => Some(scales.slice_mut(..n)),
            },
            weights_bf16: None,
        };
        self.router.route(stream, input, &mut outputs, replay)
    }

    /// A workspace of this layer's sizes (one made by [`workspace`](Self::workspace) for a
    /// layer of the same `max_tokens`, top-k and scratch size).
    fn check_workspace(&self, w: &CutlassWorkspace) -> Result<()> {
        let n = self.plan.routed_len();
        if w.ids.len() < n || w.scales.len() < n || w.scratch.len() < self.scratch_bytes {
            return Err(Error::invalid(
                "workspace",
                format!(
                    "holds {} ids, {} scales and {} scratch bytes; this layer needs {n}, {n} \
                     and {} (make it with this layer's workspace())",
                    w.ids.len(),
                    w.scales.len(),
                    w.scratch.len(),
                    self.scratch_bytes
                ),
            ));
        }
        Ok(())
    }
}

fn routing_sizes(routing: &CutlassRouting<'_>) -> CutlassRoutingSizes {
    match routing {
        CutlassRouting::Logits { logits, bias } => CutlassRoutingSizes::Logits {
            logits: logits.len(),
            bias: bias.as_ref().map(Logits::len),
        },
        CutlassRouting::Precomputed { ids, scales } => CutlassRoutingSizes::Precomputed {
            ids: ids.len(),
            scales: scales.len(),
        },
    }
}

impl Source<'_> {
    /// The streams of a call's routing inputs, named as the API names them.
    fn streams(&self) -> impl Iterator<Item = (&'static str, &Arc<CudaStream>)> {
        let (first, second) = match self {
            Source::Route(input) => (
                ("logits", input.logits.stream()),
                input.bias.as_ref().map(|b| ("bias", b.stream())),
            ),
            Source::Given(ids, scales) => {
                (("ids", ids.stream()), Some(("scales", scales.stream())))
            }
        };
        std::iter::once(first).chain(second)
    }
}
