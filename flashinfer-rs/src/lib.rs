//! Safe Rust calls into FlashInfer's TRTLLM-gen Mixture-of-Experts routing, with the routed
//! experts of every token captured straight into a buffer you own (`routing_replay_out`).
//!
//! | capability | Hopper (sm_90) | Blackwell (sm_100) | no kernels built |
//! |---|---|---|---|
//! | [`routing`]: every 0.6.13 routing method, replay, CPU oracle | yes (`sm90`) | yes (`sm100`) | [`Error::KernelsNotBuilt`] (oracle works) |
//! | [`capture`]: zero-copy layer store, async step readback, request assembly, vLLM/SGLang export | yes | yes | host side only |
//! | [`fused`]: tactic query | [`Error::UnsupportedArch`] | yes (`sm100`) | [`Error::KernelsNotBuilt`] |
//! | build and device queries ([`build_info`], [`device_info`]) | yes | yes | build info only |
//!
//! Layers: `flashinfer-sys` is the raw C ABI; this crate checks every argument against
//! upstream's limits before anything is launched and turns every failure into an [`Error`].
//! Kernels run on the caller's cudarc stream, never allocate or synchronise in a call, and can
//! be captured in CUDA graphs.
#![warn(missing_docs)]

pub mod capture;
mod error;
mod ffi;
pub mod fused;
pub mod fuzzing;
mod replay;
pub mod routing;

pub use error::{Error, Result};
pub use ffi::{build_info, cuda_device_count, device_info, BuildInfo, DeviceInfo};
pub use replay::ReplayView;

/// The FlashInfer release the kernels are compiled from.
pub const FLASHINFER_VERSION: &str = flashinfer_sys::FLASHINFER_VERSION;

/// Re-exported so callers use the same cudarc and half versions as this crate.
pub use cudarc;
pub use half;
