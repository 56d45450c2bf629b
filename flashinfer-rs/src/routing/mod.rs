//! Routing: which experts each token goes to, with what weight.
//!
//! [`RoutingConfig`] holds a model's method and shape and is validated once by a router;
//! each call then only checks its buffers. Three routers, one shape:
//!
//! | router | kernels | writes | use it for |
//! |---|---|---|---|
//! | [`TopKRouter`] | ours (flashinfer-sys/csrc/topk_router.cu), one pass over the logits | ids (int32 and/or the int16 replay view), weights (fp32 and/or bf16) | your own expert GEMMs, FlashInfer's CUTLASS MoE, capture alone: the fast path |
//! | [`Router`] | upstream's TRTLLM-gen routing | the same, plus the grouped-GEMM permutation ([`RoutingBuffers`]) | feeding the TRTLLM fused MoE's layout, or cross-checking |
//! | [`NoAuxTcRouter`] | upstream's DeepSeek-V3 router (`fused_topk_deepseek`) | ids, weights | a DeepSeek-V3 baseline |
//!
//! All three follow [`oracle`] (the models' reference routers) and take the same replay
//! buffers, so the capture store works with any of them. [`TopKRouter`] also serves the
//! methods upstream has no kernel for ([`RoutingMethod::DeepSeekV2`]); the other two refuse
//! them ([`RoutingConfig::validate`]). docs/routing-methods.md maps model families to methods.
//!
//! Each router's rules on sizes are its plan, built by its constructor and public
//! ([`RoutePlan`], [`TopKPlan`], [`NoAuxTcPlan`]; [`crate::plan`]): a call's sizes can be
//! checked before any buffer exists.
mod method;
mod noaux_tc;
pub mod oracle;
mod route;
mod topk;

pub(crate) use method::check_bias;
pub use method::{
    MethodLimits, RoutingConfig, RoutingMethod, MAX_EXPERTS_PER_GROUP, MAX_EXPERT_GROUPS,
    MAX_TOPK_GROUPS,
};
pub use noaux_tc::{NoAuxTcBatchSizes, NoAuxTcOutputs, NoAuxTcPlan, NoAuxTcRouter};
pub use route::{
    Bias, Logits, LogitsDtype, RouteBatchSizes, RouteInput, RoutePlan, Router, RoutingBuffers,
    RoutingBuffersShape,
};
pub use topk::{TopKBatchSizes, TopKOutputs, TopKPlan, TopKRouter};
