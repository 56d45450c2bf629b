//! A whole call (layer and batch together), as the planner's tests describe one, and
//! [`plan`] over it (the fuzz target splits its calls the same way, with [`Op::in_layer`]).

use super::{FusedBatchSizes, FusedLayerSizes, FusedPlan, Op, RoutingSrc, TensorSize, TensorSpec};
use crate::error::Result;
use crate::fused::config::MoeOptions;
use crate::routing::RoutingConfig;

/// Sizes of one whole call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub num_tokens: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
}

/// One whole call, described by sizes.
#[derive(Debug, Clone)]
pub(crate) struct Desc {
    pub op: Op,
    pub shape: Shape,
    pub routing: RoutingConfig,
    pub src: RoutingSrc,
    pub opts: MoeOptions,
    /// `(rows, cols)` of the replay buffer.
    pub replay: Option<(usize, usize)>,
    /// Every tensor except logits, bias, packed ids and replay (covered above).
    pub given: Vec<TensorSize>,
}

impl Desc {
    /// The layer and the batch of this call ([`Op::in_layer`] sorts the tensors).
    pub(crate) fn split(&self) -> (FusedLayerSizes, FusedBatchSizes) {
        let (weights, inputs) = self.given.iter().partition(|g| self.op.in_layer(g.tensor));
        let layer = FusedLayerSizes {
            op: self.op,
            hidden_size: self.shape.hidden_size,
            intermediate_size: self.shape.intermediate_size,
            routing: self.routing,
            opts: self.opts,
            weights,
        };
        let batch = FusedBatchSizes {
            num_tokens: self.shape.num_tokens,
            src: self.src,
            replay: self.replay,
            inputs,
        };
        (layer, batch)
    }
}

/// Checks a whole call: its layer, then its batch. Returns the layer's tensors, then the
/// batch's.
pub(crate) fn plan(d: &Desc) -> Result<Vec<TensorSpec>> {
    let (layer, batch) = d.split();
    let layer = FusedPlan::new(layer)?;
    let batch = layer.batch_tensors(&batch)?;
    Ok(layer.specs.iter().copied().chain(batch).collect())
}
