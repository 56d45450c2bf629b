//! Safe Rust calls into FlashInfer's TRTLLM-gen Mixture-of-Experts kernels (routing and the
//! fused MoE), with the experts every token was routed to written straight into a buffer you
//! own (`routing_replay_out`): zero-copy, CUDA-graph safe, and collected per request for RL
//! routing replay ([`capture`]).
//!
//! ```no_run
//! use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};
//! use flashinfer_rs::ReplayView;
//!
//! # fn main() -> Result<(), flashinfer_rs::Error> {
//! let stream = flashinfer_rs::cuda_context(0)?.default_stream();
//! let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8); // Qwen3-30B-A3B
//! let router = Router::new(cfg)?;
//! let mut buffers = RoutingBuffers::new(&stream, &cfg, 1024)?;
//! let logits = stream.alloc_zeros::<flashinfer_rs::half::bf16>(16 * 128)?; // the gate's [16, 128] output
//! let mut replay = stream.alloc_zeros::<i16>(1024 * 8)?;
//! let input = RouteInput { logits: (&logits).into(), bias: None, num_tokens: 16 };
//! router.route(&stream, &input, &mut buffers, Some(&mut ReplayView::from_slice(&mut replay, 8)?))?;
//! # Ok(())
//! # }
//! ```
//!
//! # What runs where
//!
//! | capability | Hopper (sm_90) | Blackwell B200/GB200, B300/GB300 (sm_100, sm_103) | no kernels built |
//! |---|---|---|---|
//! | [`routing`]: every 0.6.13 routing method with replay, our numeric fixes, CPU oracle | yes (`sm90`; tested on H100/H200) | built (`sm100`); not run (no Blackwell available to us) | [`Error::KernelsNotBuilt`] (the oracle works) |
//! | [`capture`]: zero-copy layer store, async readback, layouts, per-request assembly, vLLM/SGLang export, KV-slot store | yes (tested on H100/H200) | yes | host side only |
//! | [`fused`]: [`FusedMoe`](fused::FusedMoe) layers of the four precisions (upstream's `trtllm_*_moe`) and the tactic query | [`Error::UnsupportedArch`], nothing launched | built and linked (`sm100`); not run yet | [`Error::KernelsNotBuilt`] |
//! | [`cutlass`]: [`CutlassMoe`](cutlass::CutlassMoe), a bf16 MoE layer (FlashInfer's CUTLASS fused MoE behind the top-k router) with replay and capture | yes (`sm90-moe`; tested on H200) | [`Error::UnsupportedArch`] (its GEMMs are sm_90a code) | [`Error::KernelsNotBuilt`] |
//! | [`build_info`], [`device_info`] | yes | yes | build info only |
//!
//! # Features and the build
//!
//! - `sm90`, `sm100`: compile the kernels (routing, and for `sm100` the fused MoE) with nvcc
//!   from the pinned FlashInfer 0.6.13 sources. Nothing is downloaded by the build: fetch the
//!   sources (and, if you have no CUDA >= 12.9, nvcc from PyPI) once with
//!   `python3 <flashinfer-sys>/vendor/fetch.py all`; a missing tree fails the build with that
//!   command. Compiled objects are cached (`~/.cache/flashinfer-rs/objects`).
//! - `sm90-moe`: `sm90` plus FlashInfer's CUTLASS fused MoE for Hopper ([`cutlass`]), from its
//!   own fetched tree (the same `fetch.py all`); about 9 more CPU-minutes of nvcc cold.
//! - No feature: no nvcc, no kernels; every kernel entry point answers
//!   [`Error::KernelsNotBuilt`], the host side (capture assembly, export, oracle) works.
//! - `serde`: `Serialize`/`Deserialize` for the configs (routing, capture, assembly, KV-slot
//!   store, the Hopper layer) and `Serialize` for the exports; a config read from a file is
//!   still checked where it is used (each constructor's typed errors).
//! - `float8`: the `float8` crate's e4m3fn (candle's fp8 element type) and this crate's
//!   [`fused::E4m3`]: conversions, and no-copy host and device views.
//! - Logs: layers, routers and capture stores say what they built (and a layer its first
//!   launch) as `tracing` events under the target `flashinfer_rs` (info and debug levels);
//!   install any `tracing` subscriber to see them.
//! - `nccl`: capture across ranks, `capture::ShardGather` (sequence-parallel shards gathered
//!   with one NCCL all-gather per step); NCCL is loaded at run time (`libnccl.so`), so the
//!   build needs none.
//!
//! # Layers
//!
//! `flashinfer-sys` is the raw C ABI (`flashinfer-sys/csrc/flashinfer_rs.h`); this crate validates every
//! argument against upstream's limits before anything is launched and turns every failure
//! into a typed [`Error`] that keeps CUDA error codes. Every kernel has one call shape: an
//! object built once from its configuration, which checks every rule that does not depend on
//! the batch ([`Router::new`](routing::Router::new),
//! [`NoAuxTcRouter::new`](routing::NoAuxTcRouter::new),
//! [`FusedMoe::new`](fused::FusedMoe::new), [`CutlassMoe::new`](cutlass::CutlassMoe::new)), then
//! a cheap per-call method that checks only the batch (`route`, `forward`). The rules
//! themselves are public and need no GPU: [`plan`] lists each kernel's plan, which a server
//! can use to check a batch before it has buffers.
//!
//! Counts that are kernel parameters (experts, top-k, groups in [`routing::RoutingConfig`])
//! are `u32`, as the kernels take them (int32, bounded by each method's limits); counts that
//! size host or device buffers (tokens, layers, positions in [`capture`], the fused MoE's
//! hidden and intermediate sizes) are `usize`.
//!
//! # Machines without a GPU or a driver
//!
//! cudarc's `CudaContext::new` panics where no CUDA driver can be loaded. Make contexts with
//! [`cuda_context`] instead (it answers [`Error::NoDriver`], or an out-of-range ordinal as
//! [`Error::InvalidArgument`]), or probe first with [`cuda_device_count`], which is 0 without a
//! driver and never panics. Nothing else in this crate creates a context: every call takes the
//! caller's stream.
//!
//! # Sizes a caller gives
//!
//! Every size that a caller (or a server's config file) passes is checked before it is used:
//! products with checked arithmetic (an overflow is [`Error::InvalidArgument`] naming the
//! argument), host memory taken fallibly ([`Error::HostAllocation`] when the machine cannot
//! give it), device memory through the driver (its out-of-memory error), and loops bounded by
//! the data held, never by a count alone. No public function of this crate panics on its
//! arguments.
//!
//! Routing calls run on the caller's cudarc stream, allocate nothing and never synchronise;
//! the fused MoE takes its scratch stream-ordered on that stream, the CUTLASS MoE uses a
//! workspace allocated once. All can be captured in CUDA graphs (with cudarc's event tracking
//! off during capture, as for any cudarc work).
#![warn(missing_docs)]

mod alloc;
#[cfg(feature = "candle")]
pub mod candle;
pub mod capture;
mod context;
pub mod cutlass;
mod error;
mod ffi;
pub mod fused;
mod launch;
pub mod plan;
mod replay;
pub mod routing;

pub use error::{Error, Result};
pub use ffi::{build_info, cuda_context, cuda_device_count, device_info, BuildInfo, DeviceInfo};
pub use replay::ReplayView;

/// The FlashInfer release the kernels are compiled from.
pub const FLASHINFER_VERSION: &str = flashinfer_sys::FLASHINFER_VERSION;

/// Re-exported so callers use the same cudarc and half versions as this crate.
pub use cudarc;
pub use half;

/// The crate README's code, compiled as doctests (every snippet there is a real program).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The repository README's code, compiled as doctests too (only in the repository: the
/// packaged crate has no such file, and this item exists only under `cargo test --doc`).
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct RepositoryReadmeDoctests;
