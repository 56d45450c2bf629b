//! The reference server of flashinfer-rs: a Qwen3-MoE model on candle, served OpenAI-style,
//! returning every token's routed experts (vLLM's and SGLang's response forms).
//!
//! - [`model`]: Qwen3-MoE (transformers' definition) with its MoE block behind
//!   [`model::moe::MoeBackend`] (the CPU reference of flashinfer-rs here; the Hopper layer plugs
//!   in the same way);
//! - [`engine`]: continuous batching on a scheduler thread, capture rows attributed to
//!   (request, position) through flashinfer-rs's `Assembler`;
//! - [`http`]: the OpenAI-compatible endpoints;
//! - [`text`]: tokenizer, chat template, EOS.

pub mod engine;
pub mod http;
pub mod model;
pub mod server;
pub mod text;
