//! GPU integration tests, in one binary so the kernels are linked once.
//!
//! Without a GPU every test here passes after printing `skipped: ...`; with
//! `FLASHINFER_RS_REQUIRE_GPU=1` a missing GPU fails them instead. Tests take a file lock for
//! the whole test, so they run one at a time on the GPU both as threads of this binary and as
//! separate processes under nextest.
// The lock is std's File::lock (Rust 1.89): these tests run on the GPU machines' toolchain;
// the library itself holds the crate's 1.88.
#![allow(clippy::incompatible_msrv)]
mod bad_inputs;
mod boundary;
mod capture;
mod common;
mod concurrency;
mod cutlass_moe;
#[cfg(feature = "sm90-moe-fp8")]
mod cutlass_moe_fp8;
#[cfg(feature = "sm90-moe-fp8")]
mod cutlass_moe_fp8_blocks;
mod degenerate;
mod fused;
#[cfg(feature = "sm100")]
mod fused_sm100;
mod graph;
#[path = "../fixtures/models.rs"]
mod models;
mod noaux;
mod prepare;
mod routing;
mod smoke;
mod topk;
