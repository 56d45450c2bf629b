//! The device side of capture: one layer-major int16 buffer `[layers, max_tokens, top_k]`,
//! allocated once, whose per-layer views the routing (or fused MoE) calls write directly, and
//! an asynchronous per-step readback to pinned host memory.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use cudarc::driver::{
    sys, CudaContext, CudaEvent, CudaSlice, CudaStream, CudaViewMut, DevicePtr, DevicePtrMut,
    DeviceRepr, PinnedHostSlice, ValidAsZeroBits,
};

use super::assemble::{LayerMajorRows, StepRows};
use crate::alloc::product;
use crate::error::{ensure, ensure_nonzero, Error, Result, MAX_TOKENS};
use crate::replay::ReplayView;

/// Which rows of the MoE batch a step routes, and which of them are this rank's real tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StepLayout {
    /// Rows the kernels route (and write) this step, padding included.
    pub routed_rows: usize,
    /// The rows kept for this rank's requests; the rest never leaves the device.
    pub keep: Range<usize>,
}

impl StepLayout {
    /// One rank, `tokens` real rows, no padding.
    pub fn single(tokens: usize) -> StepLayout {
        StepLayout {
            routed_rows: tokens,
            keep: 0..tokens,
        }
    }

    /// `tokens` real rows in a batch padded to `padded_rows` (CUDA-graph batch sizes): the
    /// padding is routed but dropped here, before anything reaches a request.
    pub fn padded(tokens: usize, padded_rows: usize) -> Result<StepLayout> {
        ensure(tokens <= padded_rows, "padded_rows", || {
            format!("{padded_rows} < {tokens} real tokens")
        })?;
        Ok(StepLayout {
            routed_rows: padded_rows,
            keep: 0..tokens,
        })
    }

    /// Naive data-parallel dispatch: the MoE sees every DP rank's tokens concatenated
    /// (`tokens_per_rank[r]` rows each, in rank order) and this rank keeps its own slice.
    pub fn data_parallel(rank: usize, tokens_per_rank: &[usize]) -> Result<StepLayout> {
        ensure(rank < tokens_per_rank.len(), "rank", || {
            format!(
                "rank {rank} of {} data-parallel ranks",
                tokens_per_rank.len()
            )
        })?;
        let sum = |rows: &[usize]| rows.iter().try_fold(0usize, |a, &r| a.checked_add(r));
        let (start, total) = match (sum(&tokens_per_rank[..rank]), sum(tokens_per_rank)) {
            (Some(s), Some(t)) => (s, t),
            _ => {
                return Err(Error::invalid(
                    "tokens_per_rank",
                    "the ranks' rows add up past usize::MAX",
                ))
            }
        };
        Ok(StepLayout {
            routed_rows: total,
            keep: start..start + tokens_per_rank[rank],
        })
    }

    /// Data parallelism with the combine inside the MoE op (modular kernels): the MoE sees
    /// only this rank's `tokens` rows. The same rows as [`StepLayout::single`].
    pub fn per_rank(tokens: usize) -> StepLayout {
        StepLayout::single(tokens)
    }

    /// Sequence parallelism: each TP rank routes only its shard of the rows, so no rank holds
    /// a whole step. The shards' routed rows are gathered into this store first
    /// (`ShardGather::gather_into` with the `nccl` feature: one all-gather per step), then
    /// captured as one rank would. This describes the gathered step of `gathered_tokens`
    /// rows in sequence order.
    pub fn sequence_parallel_gathered(gathered_tokens: usize) -> StepLayout {
        StepLayout::single(gathered_tokens)
    }

    /// What [`CaptureStore`] checks of a step laid out so, on a store of `max_tokens` rows:
    /// the routed rows fit, and the kept ones are an ordered range of them (an
    /// [`Error::InvalidArgument`] on `layout` otherwise).
    pub fn check(&self, max_tokens: usize) -> Result<()> {
        ensure(self.routed_rows <= max_tokens, "layout", || {
            format!(
                "routes {} rows, the store holds {max_tokens}",
                self.routed_rows
            )
        })?;
        ensure(
            self.keep.start <= self.keep.end && self.keep.end <= self.routed_rows,
            "layout",
            || format!("keeps rows {:?} of {} routed", self.keep, self.routed_rows),
        )
    }
}

/// Shape of a capture store. Made with [`CaptureConfig::new`] and its `with_*` methods
/// (non-exhaustive: a field added later breaks no caller).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CaptureConfig {
    /// MoE layers (the layer-major buffer's first dimension).
    pub moe_layers: usize,
    /// Most rows one step may route.
    pub max_tokens: usize,
    /// Experts per token.
    pub top_k: usize,
    /// Readback buffers: steps that may be in flight (copied but not collected); 2 to
    /// [`MAX_READBACK_BUFFERS`]. Each holds a device and a pinned host copy of the whole
    /// `[moe_layers, max_tokens, top_k]` buffer.
    pub readback_buffers: usize,
    /// Model layer id -> MoE layer index, for models whose dense layers have no router
    /// (`None` for a dense layer). `None`: every model layer is an MoE layer, index = layer id.
    pub layer_map: Option<Vec<Option<usize>>>,
    /// Also capture each chosen expert's fp32 routing weight (what the MoE combines with),
    /// written by the router into [`CaptureStore::layer_views`]'s `weights` (zero-copy, like
    /// the ids) and read back in the same step copy. Doubles the store's memory and copies
    /// (4 bytes per id beside 2).
    pub capture_weights: bool,
}

/// The most readback buffers a store takes: steps in flight beyond a few only cost memory
/// (each buffer is a full device and pinned host copy of the store).
pub const MAX_READBACK_BUFFERS: usize = 64;

/// Fills `n` elements of 2 or 4 bytes at `dst` with `bits` on `stream` (stream-ordered).
fn fill_device<T: DeviceRepr>(
    stream: &Arc<CudaStream>,
    dst: &mut CudaSlice<T>,
    bits: u32,
) -> Result<()> {
    let n = dst.len();
    let (ptr, _guard) = dst.device_ptr_mut(stream);
    // SAFETY: `ptr` is `n` elements of device memory owned by `dst`, kept alive by the guard
    // with its stream ordering; the width matches T's size (asserted by the match).
    unsafe {
        match std::mem::size_of::<T>() {
            2 => sys::cuMemsetD16Async(ptr, bits as u16, n, stream.cu_stream()),
            4 => sys::cuMemsetD32Async(ptr, bits, n, stream.cu_stream()),
            w => return Err(Error::Internal(format!("fill of {w}-byte elements"))),
        }
    }
    .result()?;
    Ok(())
}

impl CaptureConfig {
    /// `moe_layers` layers of `max_tokens` rows of `top_k` ids; 2 readback buffers, every
    /// model layer an MoE layer, ids only.
    pub fn new(moe_layers: usize, max_tokens: usize, top_k: usize) -> Self {
        CaptureConfig {
            moe_layers,
            max_tokens,
            top_k,
            readback_buffers: 2,
            layer_map: None,
            capture_weights: false,
        }
    }

    /// With `n` readback buffers (steps in flight).
    pub fn with_readback_buffers(mut self, n: usize) -> Self {
        self.readback_buffers = n;
        self
    }

    /// With a model layer -> MoE layer map (`None` for a dense layer).
    pub fn with_layer_map(mut self, map: Vec<Option<usize>>) -> Self {
        self.layer_map = Some(map);
        self
    }

    /// Capturing the routing weights beside the ids, or not.
    pub fn with_weights(mut self, capture_weights: bool) -> Self {
        self.capture_weights = capture_weights;
        self
    }

    /// Checks the config, with no GPU: every size > 0, `readback_buffers` in
    /// `2..=`[`MAX_READBACK_BUFFERS`], `max_tokens` within the kernels' int32 token counts, a
    /// layer map that names MoE layers of the store. Returns the elements of the
    /// `[moe_layers, max_tokens, top_k]` buffer (refused when the product overflows).
    /// [`CaptureStore::new`] runs this first; a server can run it on a config it loads.
    pub fn check(&self) -> Result<usize> {
        ensure_nonzero(&[
            ("moe_layers", self.moe_layers),
            ("max_tokens", self.max_tokens),
            ("top_k", self.top_k),
        ])?;
        ensure(
            (2..=MAX_READBACK_BUFFERS).contains(&self.readback_buffers),
            "readback_buffers",
            || {
                format!(
                    "must be 2 (two steps in flight) to {MAX_READBACK_BUFFERS}, got {}",
                    self.readback_buffers
                )
            },
        )?;
        ensure(self.max_tokens <= MAX_TOKENS, "max_tokens", || {
            format!("{} exceeds the kernels' int32 token count", self.max_tokens)
        })?;
        if let Some(map) = &self.layer_map {
            ensure(
                map.iter().flatten().all(|&s| s < self.moe_layers),
                "layer_map",
                || {
                    format!(
                        "maps a layer to an MoE layer index >= moe_layers ({})",
                        self.moe_layers
                    )
                },
            )?;
        }
        product(
            "max_tokens",
            &[self.max_tokens, self.top_k, self.moe_layers],
        )
    }
}

/// Pinned host memory for one step's kept rows, layer-major `[layers][rows][top_k]`.
struct HostRows {
    ids: PinnedHostSlice<i16>,
    /// With weights capture.
    weights: Option<PinnedHostSlice<f32>>,
}

/// One readback buffer: what one step in flight needs.
struct Slot {
    /// Device copies of the step's kept rows, packed: taken right after the step (fast,
    /// device to device), so the next step may overwrite the layer views while the slow
    /// device-to-host copy reads these instead.
    staging_ids: CudaSlice<i16>,
    staging_weights: Option<CudaSlice<f32>>,
    /// The host memory; `None` while lent out as a [`StepBuffer`].
    host: Option<HostRows>,
    /// Recorded on the side stream once the step's kernels are done, before its copies.
    started: Arc<CudaEvent>,
    /// Recorded after its copies: `started` to `done` is the readback's GPU time.
    done: Arc<CudaEvent>,
}

/// Plain pinned memory (not write-combined: the host reads it) of `n` elements.
fn pinned<T: DeviceRepr + ValidAsZeroBits>(
    ctx: &Arc<CudaContext>,
    n: usize,
) -> Result<PinnedHostSlice<T>> {
    // SAFETY: the memory is only read after a copy into it completed (StepBuffer::rows and
    // collect wait for it).
    Ok(unsafe { ctx.alloc_pinned_with_flags::<T>(n, 0) }?)
}

/// Readback buffers' host memory handed back by dropped [`StepBuffer`]s, by slot, for their
/// store to take back at its next `end_step` (shared, so a buffer dropped on another thread
/// needs no access to the store).
type Returned = Mutex<Vec<(usize, HostRows)>>;

/// A step's read-back rows, handed out by [`CaptureStore::take_oldest`] so that the wait and
/// the reading happen where the server wants (its own thread: the buffer is `Send`). Dropping
/// it (or [`CaptureStore::recycle`]) gives its readback buffer back to its store, never
/// blocking: a later step's copies into it are ordered after this step's on the GPU. Until
/// then that readback buffer is not reused (a later `end_step` answers
/// [`Error::Backpressure`] when none is free). [`StepBuffer::is_ready`] asks without waiting
/// whether the copy has landed (an async server polls it instead of blocking a thread in
/// [`StepBuffer::rows`]).
pub struct StepBuffer {
    step: u64,
    rows: usize,
    layers: usize,
    top_k: usize,
    slot: usize,
    store: u64,
    /// `Some` until the buffer is dropped.
    host: Option<HostRows>,
    home: Weak<Returned>,
    started: Arc<CudaEvent>,
    done: Arc<CudaEvent>,
}

impl Drop for StepBuffer {
    fn drop(&mut self) {
        if let (Some(host), Some(home)) = (self.host.take(), self.home.upgrade()) {
            // A poisoned lock only means another thread panicked while pushing: the list
            // itself is whole.
            home.lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push((self.slot, host));
        }
    }
}

impl std::fmt::Debug for StepBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepBuffer")
            .field("step", &self.step)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl StepBuffer {
    /// 0-based step number (order of `end_step` calls).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Blocks until the step's copy has landed.
    pub fn wait(&self) -> Result<()> {
        Ok(self.done.synchronize()?)
    }

    /// Whether the step's copy has landed, without waiting: when `true`,
    /// [`rows`](Self::rows) returns at once.
    pub fn is_ready(&self) -> Result<bool> {
        Ok(self.done.try_is_complete()?)
    }

    /// Waits for the copy, then returns its GPU time in microseconds (as
    /// [`CaptureStore::oldest_copy_gpu_us`]).
    pub fn copy_gpu_us(&self) -> Result<f64> {
        self.wait()?;
        Ok(self.started.elapsed_ms(&self.done)? as f64 * 1e3)
    }

    /// Waits for the copy, then views the kept rows where they landed, layer-major (no
    /// transpose, no copy): hand them to [`Assembler::push_layer_major`](super::Assembler::push_layer_major).
    pub fn rows(&self) -> Result<LayerMajorRows<'_>> {
        self.wait()?;
        let n = self.rows * self.layers * self.top_k;
        let host = self
            .host
            .as_ref()
            .ok_or_else(|| Error::Internal("a step buffer without its memory".into()))?;
        Ok(LayerMajorRows {
            tokens: self.rows,
            layers: self.layers,
            top_k: self.top_k,
            ids: &host.ids.as_slice()?[..n],
            weights: match &host.weights {
                Some(w) => Some(&w.as_slice()?[..n]),
                None => None,
            },
        })
    }
}

/// A buffer [`CaptureStore::recycle`] did not take back, and why.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: Error,
    /// The buffer, to give to the store that lent it.
    pub buffer: StepBuffer,
}

impl From<Box<Refused>> for Error {
    fn from(refused: Box<Refused>) -> Error {
        refused.error
    }
}

/// Distinguishes stores, so that a buffer goes back to the store that lent it.
static NEXT_STORE: AtomicU64 = AtomicU64::new(0);

struct InFlight {
    /// Index of its readback buffer.
    buffer: usize,
    step: u64,
    rows: usize,
}

/// Layer-major routed-expert capture for one model on one device.
///
/// Zero-copy on the device: layer `l`'s replay view *is* `buffer[l]`; there is no per-layer
/// scratch buffer and no per-layer copy kernel. Fixed addresses: the views never move, so a
/// CUDA graph recorded over the layers' routing calls stays valid step after step.
///
/// The step protocol ([`CaptureStore::end_step`], [`CaptureStore::collect`]):
/// 1. `begin_step(&compute, layout)` checks the step's layout; nothing waits: the previous
///    step's rows already left the layer views on `compute` itself (step 2).
/// 2. `end_step(&compute)` enqueues on the compute stream the copy of the step's kept rows of
///    every layer into a readback buffer's device staging memory (one device-to-device copy,
///    microseconds), so the next step's writes into the views are stream-ordered after it and
///    no step ever waits on another stream; then a side stream, ordered after that copy by
///    an event, copies the staging memory into the buffer's pinned host memory (one
///    contiguous copy) and records a completion event. The host never waits here.
/// 3. `collect()` waits for the oldest step's copy only, transposes it to token-major
///    `(tokens, layers, top_k)` and frees its buffer. With `readback_buffers >= 2`, step n+1 computes
///    while step n drains. Or, to keep the wait and the reading off the launch thread,
///    `take_oldest()` hands the step's buffer out at once ([`StepBuffer`]: another thread
///    polls `is_ready()` or waits, reads the layer-major rows, and the buffer comes back
///    when it is dropped or given to `recycle()`).
///
/// Weights capture (opt-in, [`CaptureConfig::capture_weights`]): a second layer-major buffer,
/// fp32 `[layers, max_tokens, top_k]`, whose per-layer views the router writes as its
/// `weights_f32` output ([`CaptureStore::layer_views`]); it is staged and read back in the same
/// step copy and collected beside the ids.
pub struct CaptureStore {
    cfg: CaptureConfig,
    ctx: Arc<CudaContext>,
    device: CudaSlice<i16>,
    /// With weights capture: `[layers, max_tokens, top_k]` fp32 weights.
    weights: Option<CudaSlice<f32>>,
    side: Arc<CudaStream>,
    /// Recorded on the compute stream after a step's staging copy; the side stream's
    /// device-to-host copy waits for it.
    staged_on_compute: CudaEvent,
    readbacks: Vec<Slot>,
    free: Vec<usize>,
    /// What dropped step buffers handed back (see [`StepBuffer`]'s `Drop`).
    returned: Arc<Returned>,
    /// This store's number (`NEXT_STORE`).
    id: u64,
    in_flight: VecDeque<InFlight>,
    /// The step begun and not ended: its layout, and the compute stream it was begun on (the
    /// `CUstream`'s address, only compared: a raw pointer would make the store neither `Send`
    /// nor `Sync`).
    current: Option<(StepLayout, usize)>,
    steps: u64,
}

impl std::fmt::Debug for CaptureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureStore")
            .field("cfg", &self.cfg)
            .field("in_flight", &self.in_flight.len())
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

/// A finished step's rows (and weights, with weights capture), token-major, with the step
/// number it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedStep {
    /// 0-based step number (order of `end_step` calls).
    pub step: u64,
    /// The kept rows, `(tokens, layers, top_k)`.
    pub rows: StepRows,
}

impl CaptureStore {
    /// Allocates the device buffer (filled with -1) and `cfg.readback_buffers` readback buffers, once.
    pub fn new(stream: &Arc<CudaStream>, cfg: CaptureConfig) -> Result<CaptureStore> {
        let total = cfg.check()?;
        let ctx = stream.context().clone();
        // Filled on the device: a store too large for the device is the driver's
        // out-of-memory error, with no host copy of it ever made.
        // SAFETY (both allocations): filled right after, stream-ordered, before any read.
        let mut device = unsafe { stream.alloc::<i16>(total) }?;
        fill_device(stream, &mut device, u16::MAX as u32)?; // -1
        let weights = match cfg.capture_weights {
            true => {
                let mut w = unsafe { stream.alloc::<f32>(total) }?;
                fill_device(stream, &mut w, f32::NAN.to_bits())?;
                Some(w)
            }
            false => None,
        };
        let side = ctx.new_stream()?;
        let mut readbacks = Vec::with_capacity(cfg.readback_buffers);
        for _ in 0..cfg.readback_buffers {
            let weights = cfg.capture_weights;
            readbacks.push(Slot {
                staging_ids: stream.alloc_zeros(total)?,
                staging_weights: weights.then(|| stream.alloc_zeros(total)).transpose()?,
                host: Some(HostRows {
                    ids: pinned(&ctx, total)?,
                    weights: weights.then(|| pinned(&ctx, total)).transpose()?,
                }),
                // Timing events (the default flags): the readback's GPU time is measurable.
                started: Arc::new(ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?),
                done: Arc::new(ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))?),
            });
        }
        let free = (0..cfg.readback_buffers).rev().collect();
        // Sizes for the log only: saturating, never a panic.
        let per_copy = total.saturating_mul(if cfg.capture_weights { 6 } else { 2 });
        tracing::info!(
            target: "flashinfer_rs",
            moe_layers = cfg.moe_layers,
            max_tokens = cfg.max_tokens,
            top_k = cfg.top_k,
            readback_buffers = cfg.readback_buffers,
            capture_weights = cfg.capture_weights,
            device_bytes = per_copy.saturating_mul(1 + cfg.readback_buffers),
            pinned_host_bytes = per_copy.saturating_mul(cfg.readback_buffers),
            "capture: store built"
        );
        Ok(CaptureStore {
            staged_on_compute: ctx.new_event(None)?,
            cfg,
            ctx,
            device,
            weights,
            side,
            readbacks,
            free,
            returned: Arc::new(Mutex::new(Vec::new())),
            id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
            in_flight: VecDeque::new(),
            current: None,
            steps: 0,
        })
    }

    /// The store's shape.
    pub fn config(&self) -> &CaptureConfig {
        &self.cfg
    }

    /// The MoE layer index of model layer `layer` (`None` for a dense layer).
    pub fn moe_layer_of(&self, layer: usize) -> Result<Option<usize>> {
        match &self.cfg.layer_map {
            None => {
                ensure(layer < self.cfg.moe_layers, "layer", || {
                    format!("{layer} >= moe_layers ({})", self.cfg.moe_layers)
                })?;
                Ok(Some(layer))
            }
            Some(map) => map
                .get(layer)
                .copied()
                .ok_or_else(|| Error::invalid("layer", format!("{layer} is not in the layer map"))),
        }
    }

    /// The replay view alone (the ids) of MoE layer `moe_layer`: `[max_tokens, top_k]`, always
    /// the same device memory, for a call that writes ids only (a routing or fused call's
    /// `routing_replay_out`). A store that captures weights refuses it (the call would leave
    /// the weights unwritten): take [`layer_views`](Self::layer_views), the form every
    /// `route_captured` / `forward_captured` takes.
    pub fn replay_view(&mut self, moe_layer: usize) -> Result<ReplayView<'_>> {
        ensure(!self.cfg.capture_weights, "moe_layer", || {
            "this store captures weights: take layer_views(), whose weights view the call must \
             write too (an ids-only view would leave them unwritten)"
                .into()
        })?;
        Ok(self.layer_views(moe_layer)?.ids)
    }

    /// The whole `[layers, max_tokens, top_k]` id buffer, for a call that fills the step's
    /// rows of every layer at once (the sequence-parallel gather); a step must be begun.
    #[cfg(feature = "nccl")]
    pub(crate) fn gather_target(&mut self) -> Result<&mut CudaSlice<i16>> {
        if self.current.is_none() {
            return Err(Error::CaptureProtocol {
                call: "gather_into",
                rule: "was called without a step begun (begin_step first)".into(),
            });
        }
        Ok(&mut self.device)
    }

    /// The replay view and (with weights capture) the fp32 weights view of MoE layer
    /// `moe_layer`, both `[max_tokens, top_k]` and always the same device memory: hand them to
    /// that layer's router as `routing_replay_out` and as its `weights_f32` output
    /// ([`TopKOutputs`](crate::routing::TopKOutputs)).
    pub fn layer_views(&mut self, moe_layer: usize) -> Result<LayerViews<'_>> {
        ensure(moe_layer < self.cfg.moe_layers, "moe_layer", || {
            format!("{moe_layer} >= moe_layers ({})", self.cfg.moe_layers)
        })?;
        let per_layer = self.cfg.max_tokens * self.cfg.top_k;
        let range = moe_layer * per_layer..(moe_layer + 1) * per_layer;
        let ids = ReplayView::new(
            self.device.slice_mut(range.clone()),
            self.cfg.max_tokens,
            self.cfg.top_k,
        )?;
        Ok(LayerViews {
            ids,
            weights: self.weights.as_mut().map(|w| w.slice_mut(range)),
        })
    }

    /// Starts a step whose layers `compute` is about to run (`layout.routed_rows` rows).
    ///
    /// Enqueues nothing and waits for nothing: the previous step's rows were staged out of
    /// the layer views on the compute stream by its `end_step`, so this step's writes come
    /// after them in stream order. That order is why a step must begin and end on the same
    /// stream (`end_step` refuses another one); route the step's layers on it, or order
    /// your other streams after it. Call it before the step's kernels, or before launching a
    /// graph of them.
    pub fn begin_step(&mut self, compute: &CudaStream, layout: StepLayout) -> Result<()> {
        layout.check(self.cfg.max_tokens)?;
        if self.current.is_some() {
            return Err(Error::CaptureProtocol {
                call: "begin_step",
                rule: "was called again before the previous step was ended".into(),
            });
        }
        self.current = Some((layout, compute.cu_stream() as usize));
        Ok(())
    }

    /// Ends the step whose layers were enqueued on `compute`: enqueues on `compute` the
    /// staging copy of the kept rows (after everything `compute` has enqueued so far), then
    /// on the side stream their copy to pinned host memory. Never waits on the host.
    ///
    /// Fails with [`Error::Backpressure`] when every readback buffer is in flight (collect
    /// first), and with [`Error::CaptureProtocol`] on a stream other than `begin_step`'s;
    /// either way the step stays begun.
    pub fn end_step(&mut self, compute: &Arc<CudaStream>) -> Result<u64> {
        // Every refusal leaves the step begun: a refused call puts `current` back.
        let Some((layout, begun_on)) = self.current.take() else {
            return Err(Error::CaptureProtocol {
                call: "end_step",
                rule: "was called without a step begun (begin_step first)".into(),
            });
        };
        if begun_on != compute.cu_stream() as usize {
            self.current = Some((layout, begun_on));
            return Err(Error::CaptureProtocol {
                call: "end_step",
                rule: "was given another stream than begin_step: the staging copy must follow \
                       the step's kernels on their stream"
                    .into(),
            });
        }
        self.take_back_returned();
        let Some(buffer) = self.free.pop() else {
            self.current = Some((layout, begun_on));
            return Err(Error::Backpressure {
                in_flight: self.cfg.readback_buffers,
            });
        };
        let rows = layout.keep.len();
        let slot = &mut self.readbacks[buffer];
        let side = &self.side;
        // This buffer's last readback may still be reading its staging copy (a step buffer is
        // given back without waiting): the compute stream waits for it on the GPU, not here.
        compute.wait(&slot.done)?;
        // The readback's GPU time runs from here (after the step's kernels) to `done`.
        slot.started.record(compute)?;
        if rows > 0 {
            self.ctx.bind_to_thread()?;
            // 1. Every layer's kept rows into staging, on the compute stream (device to
            //    device, microseconds): the next step's writes are ordered after it there,
            //    with no wait across streams.
            stage(
                &self.device,
                &mut slot.staging_ids,
                compute,
                &self.cfg,
                &layout,
            )?;
            if let (Some(w), Some(st)) = (&self.weights, &mut slot.staging_weights) {
                stage(w, st, compute, &self.cfg, &layout)?;
            }
        }
        self.staged_on_compute.record(compute)?;
        side.wait(&self.staged_on_compute)?;
        if rows > 0 {
            // A free buffer has its host memory (given back before it is freed).
            let host = slot.host.as_mut().ok_or_else(|| {
                Error::Internal("a free readback buffer lacks its host memory".into())
            })?;
            // 2. Staging into pinned host memory on the side stream, one contiguous copy
            //    each, beside the next step's kernels.
            read_back(&slot.staging_ids, &mut host.ids, side, &self.cfg, rows)?;
            if let (Some(st), Some(h)) = (&slot.staging_weights, &mut host.weights) {
                read_back(st, h, side, &self.cfg, rows)?;
            }
        }
        slot.done.record(side)?;
        let step = self.steps;
        self.steps += 1;
        self.in_flight.push_back(InFlight { buffer, step, rows });
        Ok(step)
    }

    /// Steps whose readback is enqueued but not collected.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Blocks until the oldest in-flight step's copy has landed (without collecting it);
    /// `false` when no step is in flight. [`CaptureStore::collect`] waits by itself; this is
    /// for callers that want to know the copy is done, and for timing it.
    pub fn wait_for_oldest(&self) -> Result<bool> {
        match self.in_flight.front() {
            Some(f) => {
                self.readbacks[f.buffer].done.synchronize()?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Blocks until the oldest in-flight step's copy has landed (without collecting it) and
    /// returns the copy's GPU time in microseconds, from the end of the step's kernels to the
    /// last byte in host memory (staging and device-to-host copies); `None` when no step is in
    /// flight. For measuring the readback against a plain copy.
    pub fn oldest_copy_gpu_us(&self) -> Result<Option<f64>> {
        match self.in_flight.front() {
            Some(f) => {
                let slot = &self.readbacks[f.buffer];
                slot.done.synchronize()?;
                Ok(Some(slot.started.elapsed_ms(&slot.done)? as f64 * 1e3))
            }
            None => Ok(None),
        }
    }

    /// Hands out the oldest in-flight step's buffer without waiting: the caller (any thread)
    /// waits and reads it ([`StepBuffer::rows`]), then gives it back with
    /// [`recycle`](Self::recycle). `None` when no step is in flight.
    pub fn take_oldest(&mut self) -> Option<StepBuffer> {
        let f = self.in_flight.front()?;
        let slot = &mut self.readbacks[f.buffer];
        // An in-flight buffer has its host memory: it is lent only once, here.
        let host = slot.host.take()?;
        let f = self.in_flight.pop_front()?;
        Some(StepBuffer {
            step: f.step,
            rows: f.rows,
            layers: self.cfg.moe_layers,
            top_k: self.cfg.top_k,
            slot: f.buffer,
            store: self.id,
            host: Some(host),
            home: Arc::downgrade(&self.returned),
            started: slot.started.clone(),
            done: slot.done.clone(),
        })
    }

    /// Gives back a buffer [`take_oldest`](Self::take_oldest) handed out, without waiting
    /// (dropping it does the same): its readback buffer is free for a later step, whose copies
    /// into it the GPU orders after this one's. A buffer of another store is refused and
    /// handed back in the error (dropping it then gives it back to its own store).
    pub fn recycle(&mut self, buffer: StepBuffer) -> std::result::Result<(), Box<Refused>> {
        if buffer.store != self.id {
            return Err(Box::new(Refused {
                error: Error::invalid("buffer", "was handed out by another capture store"),
                buffer,
            }));
        }
        drop(buffer);
        self.take_back_returned();
        Ok(())
    }

    /// Takes back the readback buffers that dropped step buffers handed back.
    fn take_back_returned(&mut self) {
        let returned = std::mem::take(
            &mut *self
                .returned
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for (slot, host) in returned {
            self.readbacks[slot].host = Some(host);
            self.free.push(slot);
        }
    }

    /// Readback buffers free for the next step (not in flight, not lent out).
    pub fn free_readback_buffers(&mut self) -> usize {
        self.take_back_returned();
        self.free.len()
    }

    /// Waits for the oldest in-flight step's copy (only that), and returns its kept rows
    /// token-major (a copy and a transpose on this thread; [`take_oldest`](Self::take_oldest)
    /// avoids both). `None` when no step is in flight.
    pub fn collect(&mut self) -> Result<Option<CollectedStep>> {
        let Some(buffer) = self.take_oldest() else {
            return Ok(None);
        };
        let (l, k) = (self.cfg.moe_layers, self.cfg.top_k);
        let collected = buffer.rows().map(|view| {
            let (n, rows) = (view.ids.len(), view.tokens);
            let mut ids = vec![0i16; n];
            to_token_major(view.ids, &mut ids, rows, l, k);
            let weights = view.weights.map(|w| {
                let mut out = vec![0f32; n];
                to_token_major(w, &mut out, rows, l, k);
                out
            });
            CollectedStep {
                step: buffer.step,
                rows: StepRows {
                    tokens: rows,
                    layers: l,
                    top_k: k,
                    ids,
                    weights,
                },
            }
        });
        self.recycle(buffer)?;
        collected.map(Some)
    }
}

/// One MoE layer's views into a [`CaptureStore`].
pub struct LayerViews<'a> {
    /// The ids: the layer's `routing_replay_out`.
    pub ids: ReplayView<'a>,
    /// The fp32 weights (with weights capture): the router's `weights_f32` output.
    pub weights: Option<CudaViewMut<'a, f32>>,
}

/// Enqueues on `compute` the copy of every layer's kept rows (`layout.keep`) of one
/// layer-major buffer into `staging`: one device-to-device copy (2D unless every row is
/// kept). The context is bound.
fn stage<T: DeviceRepr>(
    device: &CudaSlice<T>,
    staging: &mut CudaSlice<T>,
    compute: &Arc<CudaStream>,
    cfg: &CaptureConfig,
    layout: &StepLayout,
) -> Result<()> {
    let (k, max, rows) = (cfg.top_k, cfg.max_tokens, layout.keep.len());
    let elem = std::mem::size_of::<T>();
    let (src, _g1) = device.device_ptr(compute);
    let (staging, _g2) = staging.device_ptr_mut(compute);
    if rows == max {
        // Every row kept: the layers are contiguous, one linear copy (a 2D copy of one row
        // per layer runs slower).
        let bytes = cfg.moe_layers * rows * k * elem;
        // SAFETY: `bytes` is the whole buffer, which both allocations hold; ordered on the
        // compute stream after the step's kernels.
        unsafe { sys::cuMemcpyDtoDAsync_v2(staging, src, bytes, compute.cu_stream()) }.result()?;
        return Ok(());
    }
    let stage = sys::CUDA_MEMCPY2D {
        srcXInBytes: layout.keep.start * k * elem,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: src,
        srcArray: std::ptr::null_mut(),
        srcPitch: max * k * elem,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: staging,
        dstArray: std::ptr::null_mut(),
        dstPitch: rows * k * elem,
        WidthInBytes: rows * k * elem,
        Height: cfg.moe_layers,
    };
    // SAFETY: both regions lie inside their allocations (checked layout, pitches as
    // allocated); ordered on the compute stream after the step's kernels.
    unsafe { sys::cuMemcpy2DAsync_v2(&stage, compute.cu_stream()) }.result()?;
    Ok(())
}

/// Enqueues on `side` the copy of `rows` staged rows of every layer into `host`: one
/// contiguous device-to-host copy. The buffer's previous copy completed before it was freed
/// (recycle waits).
fn read_back<T: DeviceRepr + ValidAsZeroBits>(
    staging: &CudaSlice<T>,
    host: &mut PinnedHostSlice<T>,
    side: &Arc<CudaStream>,
    cfg: &CaptureConfig,
    rows: usize,
) -> Result<()> {
    let bytes = cfg.moe_layers * rows * cfg.top_k * std::mem::size_of::<T>();
    let (staging, _g) = staging.device_ptr(side);
    let dst = host.as_mut_ptr()?;
    // SAFETY: `bytes` fits both the staging buffer and the pinned memory (each holds every
    // layer's max_tokens rows); ordered after the staging copy on the side stream.
    unsafe { sys::cuMemcpyDtoHAsync_v2(dst as *mut _, staging, bytes, side.cu_stream()) }
        .result()?;
    Ok(())
}

/// Layer-major `[layers][rows][k]` to token-major `[rows][layers][k]`. A large step (8 MB for
/// 61 layers x 8192 rows x top-8) takes about a millisecond on one core, on the thread that
/// launches the next step; above a million ids it is split over up to 8 scoped threads, each
/// writing its own contiguous range of rows.
fn to_token_major<T: Copy + Send + Sync>(
    layer_major: &[T],
    out: &mut [T],
    rows: usize,
    layers: usize,
    k: usize,
) {
    let row_len = layers * k;
    let fill = |chunk: &mut [T], first_row: usize| {
        for (i, out_row) in chunk.chunks_exact_mut(row_len).enumerate() {
            let r = first_row + i;
            for (layer, dst) in out_row.chunks_exact_mut(k).enumerate() {
                dst.copy_from_slice(&layer_major[(layer * rows + r) * k..][..k]);
            }
        }
    };
    let threads = if out.len() >= 1 << 20 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(8))
    } else {
        1
    };
    if threads <= 1 || rows == 0 {
        fill(out, 0);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(per * row_len).enumerate() {
            s.spawn(move || fill(chunk, i * per));
        }
    });
}

#[cfg(test)]
mod tests;
