//! Capturing routed experts for every request: the data RL trainers need for routing replay.
//!
//! - [`CaptureStore`]: one layer-major device buffer whose per-layer views the kernels write
//!   (zero-copy, fixed addresses), read back once per step, asynchronously, to pinned memory;
//! - [`StepLayout`]: which rows of a step are this rank's (DP, padding, SP after a gather);
//! - [`Assembler`]: a step's rows attributed to (request, position) across steps, with
//!   speculative decoding, aborts, preemption and prompt offsets, exported whole or in parts,
//!   physical expert ids turned logical by an [`ExpertMap`] (replicated experts);
//! - [`RoutedExperts`]: per-request export as vLLM `.npy`/base64 and SGLang flat bytes;
//! - [`SlotStore`]: bounded host routing by KV slot, for prefix-cache hits;
//! - `ShardGather` (feature `nccl`): sequence-parallel shards gathered into a store, one
//!   NCCL all-gather per step.
mod assemble;
mod export;
#[cfg(feature = "nccl")]
mod gather;
mod replicas;
mod slots;
mod store;

pub use assemble::{
    Assembler, AssemblerConfig, LayerMajorRows, RequestId, RoutedSpan, RowOwner, StepRows,
};
pub use export::{ExportDtype, RoutedExperts, MAX_EXPORT_EXPERTS, UNKNOWN};
#[cfg(feature = "nccl")]
pub use gather::{shard_ranges, ShardGather};
pub use replicas::ExpertMap;
pub use slots::{SlotStore, SlotStoreConfig};
pub use store::{
    CaptureConfig, CaptureStore, CollectedStep, LayerViews, StepBuffer, StepLayout,
    MAX_READBACK_BUFFERS,
};
