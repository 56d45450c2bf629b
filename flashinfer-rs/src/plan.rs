//! The size rules of every kernel, public and GPU-free: one plan per kernel, built once from
//! the layer's or router's configuration, then one `check_batch` per call on sizes alone.
//!
//! Each kernel's object builds its plan in its constructor and checks every call with it
//! before it touches a device buffer; the same plans are public so that a server can check a
//! batch (say, one read from a request or a config file) before it has allocated anything,
//! and so that the fuzz targets (`fuzz/`) exercise the very rules the calls run. Every
//! refusal is the call's own: [`Error::InvalidArgument`](crate::Error::InvalidArgument)
//! naming the argument, never a panic, whatever the sizes (products are checked, not
//! wrapped).
//!
//! | kernel | plan (built by) | per call |
//! |---|---|---|
//! | [`Router`](crate::routing::Router) | [`RoutePlan::new`] ([`Router::plan`](crate::routing::Router::plan)) | [`RoutePlan::check_batch`]`(&`[`RouteBatchSizes`]`)` |
//! | [`TopKRouter`](crate::routing::TopKRouter) | [`TopKPlan::new`] | [`TopKPlan::check_batch`]`(&`[`TopKBatchSizes`]`)` |
//! | [`NoAuxTcRouter`](crate::routing::NoAuxTcRouter) | [`NoAuxTcPlan::new`] | [`NoAuxTcPlan::check_batch`]`(&`[`NoAuxTcBatchSizes`]`)` |
//! | [`CutlassMoe`](crate::cutlass::CutlassMoe) | [`CutlassPlan::new`] | [`CutlassPlan::check_batch`]`(&`[`CutlassBatchSizes`]`)` |
//! | [`FusedMoe`](crate::fused::FusedMoe) | [`FusedPlan::new`]`(`[`FusedLayerSizes`]`)` | [`FusedPlan::check_batch`]`(&`[`FusedBatchSizes`]`)` |
//!
//! ```
//! use flashinfer_rs::plan::{RouteBatchSizes, RoutePlan, RoutingBuffersShape};
//! use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
//!
//! let plan = RoutePlan::new(RoutingConfig::new(RoutingMethod::Renormalize, 128, 8))?;
//! let buffers = RoutingBuffersShape { max_tokens: 1024, num_experts: 128, top_k: 8, tile_tokens_dim: 8 };
//! let batch = RouteBatchSizes {
//!     num_tokens: 16,
//!     logits: 16 * 128,
//!     bias: None,
//!     replay: Some((1024, 8)),
//!     buffers,
//! };
//! plan.check_batch(&batch)?;
//! let too_many = RouteBatchSizes { num_tokens: 2048, logits: 2048 * 128, ..batch };
//! assert!(plan.check_batch(&too_many).is_err());
//! # Ok::<(), flashinfer_rs::Error>(())
//! ```

pub use crate::cutlass::{CutlassBatchSizes, CutlassPlan, CutlassRoutingSizes};
pub use crate::fused::plan::{Op, RoutingSrc, TensorSize, TensorSpec};
pub use crate::fused::{FusedBatchSizes, FusedLayerSizes, FusedPlan};
pub use crate::routing::{
    LogitsDtype, NoAuxTcBatchSizes, NoAuxTcPlan, RouteBatchSizes, RoutePlan, RoutingBuffersShape,
    TopKBatchSizes, TopKPlan,
};
