//! Sequence parallelism across ranks (feature `nccl`): each rank routes its shard of a step's
//! tokens into its own shard views, and one NCCL all-gather per step (not one per layer)
//! brings every shard's rows of every layer to every rank, where they land in that rank's
//! [`CaptureStore`] as the step's rows in token order, ready for its usual readback.
//!
//! Shards may differ in size (a step's tokens seldom split evenly): NCCL's all-gather moves
//! equal counts, so every shard buffer holds `shard_rows` rows and each rank's real rows
//! (`shards[r]`) are what lands in the store. Everything is enqueued on the communicator's
//! stream (the all-gather, then one 2D device copy per rank), nothing waits on the host, and
//! the shard views never move: a CUDA graph can hold the routing calls and the gather.

use std::ops::Range;

use cudarc::driver::{sys, CudaSlice, DevicePtr, DevicePtrMut};
use cudarc::nccl::Comm;

use super::store::CaptureStore;
use crate::error::{ensure, Error, Result};
use crate::replay::ReplayView;

/// Where each rank's shard lands in the gathered step: rank `r`'s `shards[r]` rows start
/// where rank `r - 1`'s end (token order is rank order, as a sequence-parallel split cuts it).
///
/// Refuses a shard list whose length is not the world size, a shard above `shard_rows`, or a
/// total above `max_tokens` (the store's rows).
pub fn shard_ranges(
    shards: &[usize],
    world: usize,
    shard_rows: usize,
    max_tokens: usize,
) -> Result<Vec<Range<usize>>> {
    ensure(shards.len() == world, "shards", || {
        format!("{} shard sizes for {world} ranks", shards.len())
    })?;
    let mut start = 0usize;
    let mut ranges = Vec::with_capacity(world);
    for (rank, &rows) in shards.iter().enumerate() {
        ensure(rows <= shard_rows, "shards", || {
            format!("rank {rank}'s shard of {rows} rows exceeds shard_rows ({shard_rows})")
        })?;
        let end = start.checked_add(rows).filter(|&end| end <= max_tokens);
        let end = end.ok_or_else(|| {
            Error::invalid(
                "shards",
                format!("the shards add up to more than the store's max_tokens ({max_tokens})"),
            )
        })?;
        ranges.push(start..end);
        start = end;
    }
    Ok(ranges)
}

/// One rank's side of the per-step shard gather: its shard views (`[layers, shard_rows,
/// top_k]`) and the all-gather's landing buffer (`[world, layers, shard_rows, top_k]`), both
/// allocated once.
pub struct ShardGather {
    comm: Comm,
    layers: usize,
    shard_rows: usize,
    top_k: usize,
    shard: CudaSlice<i16>,
    gathered: CudaSlice<i16>,
}

impl std::fmt::Debug for ShardGather {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardGather")
            .field("rank", &self.comm.rank())
            .field("world", &self.comm.world_size())
            .field("layers", &self.layers)
            .field("shard_rows", &self.shard_rows)
            .field("top_k", &self.top_k)
            .finish_non_exhaustive()
    }
}

impl ShardGather {
    /// Buffers for `layers` MoE layers of at most `shard_rows` rows per rank's shard, on the
    /// communicator's stream, filled with -1 (no expert).
    pub fn new(comm: Comm, layers: usize, shard_rows: usize, top_k: usize) -> Result<ShardGather> {
        ensure(layers > 0, "layers", || "must be > 0".into())?;
        ensure(shard_rows > 0, "shard_rows", || "must be > 0".into())?;
        ensure(top_k > 0, "top_k", || "must be > 0".into())?;
        let per_rank = layers
            .checked_mul(shard_rows)
            .and_then(|n| n.checked_mul(top_k))
            .ok_or_else(|| Error::invalid("shard_rows", "layers x shard_rows x top_k overflows"))?;
        let all = per_rank
            .checked_mul(comm.world_size())
            .ok_or_else(|| Error::invalid("shard_rows", "the gathered buffer overflows"))?;
        let stream = comm.stream();
        let shard = stream.clone_htod(&vec![-1i16; per_rank])?;
        let gathered = stream.clone_htod(&vec![-1i16; all])?;
        Ok(ShardGather {
            comm,
            layers,
            shard_rows,
            top_k,
            shard,
            gathered,
        })
    }

    /// The communicator (its stream is where the step's routing and gather belong).
    pub fn comm(&self) -> &Comm {
        &self.comm
    }

    /// This rank's shard view of MoE layer `layer`: `[shard_rows, top_k]`, always the same
    /// device memory. Hand it to the routing call of this rank's shard.
    pub fn shard_view(&mut self, layer: usize) -> Result<ReplayView<'_>> {
        ensure(layer < self.layers, "layer", || {
            format!("{layer} >= layers ({})", self.layers)
        })?;
        let per_layer = self.shard_rows * self.top_k;
        let view = self
            .shard
            .slice_mut(layer * per_layer..(layer + 1) * per_layer);
        ReplayView::new(view, self.shard_rows, self.top_k)
    }

    /// Gathers the step: one all-gather of every layer's shard rows, then each rank's real
    /// rows (`shards[r]`, the same list on every rank) copied into `store`'s layer views at
    /// their token positions ([`shard_ranges`]). Call it between `store.begin_step` and
    /// `store.end_step`, both on the communicator's stream; the store's layout is then
    /// `StepLayout::sequence_parallel_gathered(shards.iter().sum())`.
    pub fn gather_into(&mut self, shards: &[usize], store: &mut CaptureStore) -> Result<()> {
        let world = self.comm.world_size();
        let cfg = store.config();
        ensure(
            cfg.moe_layers == self.layers && cfg.top_k == self.top_k,
            "store",
            || {
                format!(
                    "holds {} layers of top-{}, the gather {} of top-{}",
                    cfg.moe_layers, cfg.top_k, self.layers, self.top_k
                )
            },
        )?;
        let max_tokens = cfg.max_tokens;
        let ranges = shard_ranges(shards, world, self.shard_rows, max_tokens)?;
        // Every check before the collective: a rank that refuses after its all-gather was
        // enqueued would leave the others waiting for it.
        store.gather_target()?;
        let stream = self.comm.stream();
        let bytes = std::mem::size_of::<i16>();
        {
            // NCCL has no 16-bit integer type; the all-gather copies bytes, bit for bit.
            // SAFETY: any byte is a valid u8, and the views cover exactly the i16 buffers.
            let send = unsafe { self.shard.transmute::<u8>(self.shard.len() * bytes) }
                .ok_or_else(|| Error::Internal("shard view as bytes".into()))?;
            let len = self.gathered.len() * bytes;
            let mut recv = unsafe { self.gathered.transmute_mut::<u8>(len) }
                .ok_or_else(|| Error::Internal("gathered view as bytes".into()))?;
            self.comm
                .all_gather(&send, &mut recv)
                .map_err(|e| Error::Nccl {
                    call: "ncclAllGather",
                    code: e.0 as i32,
                })?;
        }
        let row = self.top_k * bytes;
        let per_rank = self.layers * self.shard_rows * row;
        let (src, _g1) = self.gathered.device_ptr(&stream);
        let (dst, _g2) = store.gather_target()?.device_ptr_mut(&stream);
        stream.context().bind_to_thread()?;
        for (rank, range) in ranges.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
            let copy = sys::CUDA_MEMCPY2D {
                srcXInBytes: 0,
                srcY: 0,
                srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                srcHost: std::ptr::null(),
                srcDevice: src + (rank * per_rank) as u64,
                srcArray: std::ptr::null_mut(),
                srcPitch: self.shard_rows * row,
                dstXInBytes: range.start * row,
                dstY: 0,
                dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                dstHost: std::ptr::null_mut(),
                dstDevice: dst,
                dstArray: std::ptr::null_mut(),
                dstPitch: max_tokens * row,
                WidthInBytes: range.len() * row,
                Height: self.layers,
            };
            // SAFETY: the source rows lie in rank `rank`'s part of the gathered buffer (pitch
            // shard_rows rows, `layers` of them); the destination rows `range` lie within the
            // store's `[layers, max_tokens]` rows (checked by shard_ranges); ordered on the
            // communicator's stream after the all-gather.
            unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }.result()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_land_in_rank_order_and_bad_lists_are_refused() {
        assert_eq!(
            shard_ranges(&[3, 0, 5], 3, 8, 16).unwrap(),
            vec![0..3, 3..3, 3..8]
        );
        assert!(shard_ranges(&[3, 5], 3, 8, 16).is_err(), "a shard per rank");
        assert!(
            shard_ranges(&[9, 0, 0], 3, 8, 16).is_err(),
            "above shard_rows"
        );
        assert!(
            shard_ranges(&[8, 8, 1], 3, 8, 16).is_err(),
            "above max_tokens"
        );
        assert!(shard_ranges(&[usize::MAX, 1], 2, usize::MAX, usize::MAX).is_err());
    }
}
