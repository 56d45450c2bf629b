//! FlashInfer's CUTLASS fused MoE on Hopper (feature `sm90-moe`): a whole MoE layer on the
//! H100/H200/H20/GH200 (sm_90), where the fused TRTLLM MoE ([`crate::fused`]) has no kernels.
//!
//! FlashInfer's `CutlassMoeFCRunner<bf16, bf16>` (TMA warp-specialised grouped GEMMs for
//! sm_90a) takes precomputed expert ids and scales; here our [`TopKRouter`] computes them in
//! the same call, so the ids written to `routing_replay_out` are, by construction, the ids the
//! GEMMs consume. At decode sizes (up to a [`DecodeLimit`] per weight format:
//! [`DECODE_MAX_TOKENS`], [`FP8_DECODE_MAX_TOKENS`], [`BLOCK_DECODE_MAX_TOKENS`]) two kernels of
//! this crate
//! (flashinfer-sys's `csrc/moe_decode.cu`) take the place of the grouped GEMMs: they read each
//! routed expert's weights once, at the memory's bandwidth. Layers:
//! - [`CutlassMoe`] (`layer`): checked once by [`CutlassMoe::new`], called per batch by
//!   [`CutlassMoe::forward`] (or [`CutlassMoe::forward_captured`] into a capture store);
//! - [`CutlassPlan`] (`plan`): every rule on sizes, checked before any launch (tested on CPU
//!   and fuzzed; public, so a server checks a batch before it has buffers);
//! - [`prepare`]: GEMM 1's weights from `gate_proj`/`up_proj` or a gate-first `w13`; fp8
//!   weights quantised per expert or in 128x128 blocks, or from fp8 checkpoints' separate gate
//!   and up scales.
//!
//! What is built (pruned to what this layer exposes, see flashinfer-sys's
//! `build/cutlass_moe.rs`): bf16 activations and bf16 weights, and with feature
//! `sm90-moe-fp8` fp8 per-tensor weights and activations ([`CutlassMoe::new_fp8`],
//! [`CutlassFp8Scales`]: `CutlassMoeFCRunner<fp8, fp8, bf16>`, bf16 in and out) and DeepSeek's
//! fp8 weights with 128x128 block scales ([`CutlassMoe::new_fp8_blocks`],
//! [`CutlassBlockScales`]: `CutlassMoeFCRunner<bf16, fp8>`, activations quantised per 128
//! inside); SwiGLU (linear half first), no biases, the TMA warp-specialised GEMMs only, three
//! CTA tiles each (cluster 1x1): 128x16 with swapped operands for decode, 128x64 with swapped
//! operands (an expert's tokens padded to 64: 16-63 rows per expert) and 128x256 for prefill
//! ([`CutlassTactic`], [`CutlassSchedule::Fastest`]); the block-scale GEMM is upstream's WGMMA
//! kernel with two tiles, 128x64 (upstream's) and 64x64 (not DeepGEMM, whose JIT needs NVRTC:
//! docs/fp8-on-hopper.md). Not built: GEMM 2 with the weighted sum fused (not deterministic),
//! other activations, LoRA, min-latency mode.
//!
//! [`TopKRouter`]: crate::routing::TopKRouter
mod layer;
mod plan;
pub mod prepare;

pub use layer::{
    CutlassBatch, CutlassBlockScales, CutlassElement, CutlassKernels, CutlassMoe, CutlassRouting,
    CutlassSchedule, CutlassTactic, CutlassWeights, CutlassWorkspace, DecodeLimit, WeightBuffer,
    BLOCK_DECODE_MAX_TOKENS, DECODE_MAX_EXPERT_SIZE, DECODE_MAX_TOKENS, FP8_DECODE_MAX_TOKENS,
};
pub use plan::{
    CutlassBatchSizes, CutlassFp8Scales, CutlassMoeConfig, CutlassPlan, CutlassRoutingSizes,
};
