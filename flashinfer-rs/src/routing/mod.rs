//! Routing: which experts each token goes to, with what weight.
//!
//! [`RoutingConfig`] holds a model's method and shape and is validated once ([`Router::new`]);
//! [`RoutingBuffers`] are allocated once; [`Router::route`] then only checks the call's
//! buffers and launches upstream's kernels through the C ABI.
mod method;
mod noaux_tc;
pub mod oracle;
pub(crate) mod route;

pub(crate) use method::check_bias;
pub use method::{
    MethodLimits, RoutingConfig, RoutingMethod, MAX_EXPERTS_PER_GROUP, MAX_EXPERT_GROUPS,
    MAX_TOPK_GROUPS,
};
pub use noaux_tc::{NoAuxTcOutputs, NoAuxTcRouter};
pub use route::{Bias, Logits, RouteInput, Router, RoutingBuffers};
