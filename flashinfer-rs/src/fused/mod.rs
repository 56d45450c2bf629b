//! The fused TRTLLM-gen MoE (Blackwell only: its GEMMs exist as sm_100 cubins alone).
//!
//! This module holds the typed vocabulary of the fused calls and the tactic query; the
//! launches themselves come with the `trtllm_*_moe` calls.
mod tactic;
mod types;

pub use tactic::{valid_tactics, Tactic, TacticQuery};
pub use types::{Activation, Fp8Quantization, MoeDtype, WeightLayout};
