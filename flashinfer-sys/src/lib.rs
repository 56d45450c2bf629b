//! Raw bindings to flashinfer-rs's C ABI (`csrc/flashinfer_rs.h`) over FlashInfer's
//! TRTLLM-gen MoE routing and fused MoE kernels.
//!
//! This crate compiles the pinned FlashInfer sources with nvcc (see `build.rs`) and exposes
//! the C ABI unchanged: `unsafe` functions over plain structs and device pointers, returning
//! [`fi_status`]. The safe API is the `flashinfer-rs` crate.
//!
//! | feature | what is compiled |
//! |---|---|
//! | (none) | no kernels and no nvcc: every entry point returns [`fi_status::FI_STATUS_KERNELS_NOT_BUILT`] |
//! | `sm90` | routing kernels, the NoAuxTc DeepSeekV3 router and the shim for `sm_90a` (Hopper) |
//! | `sm90-moe` | `sm90` and FlashInfer's CUTLASS fused MoE for `sm_90a` (`fi_cutlass_moe_*`; bf16, SwiGLU); without it those entry points answer `FI_STATUS_KERNELS_NOT_BUILT` |
//! | `sm100` | routing and the fused TRTLLM MoE for Blackwell (`sm_100f`, the family target: B200/GB200 and B300/GB300) |
//!
//! The pinned upstream version is part of this crate's version (`0.1.0+flashinfer.0.6.13`)
//! and available as [`FLASHINFER_VERSION`].
//!
//! Instead of compiling the kernels, a build can load a prebuilt kernel library at run time
//! (`FLASHINFER_RS_KERNELS_LIB`, see [`prebuilt`]): the same functions, called through a
//! checked table, with no nvcc and no fetched sources.
#![allow(non_camel_case_types)]

// The header's comments, which bindgen copies, write shapes as `[T, E]` and paths as
// `<artifact>/...`: not links, not HTML.
#[cfg(not(flashinfer_prebuilt))]
#[allow(rustdoc::broken_intra_doc_links, rustdoc::invalid_html_tags)]
mod bindings;
/// The bindings of a prebuilt build, derived from `src/bindings.rs` by `cargo xtask generate`.
#[cfg(flashinfer_prebuilt)]
#[allow(
    clippy::all,
    missing_docs,
    rustdoc::broken_intra_doc_links,
    rustdoc::invalid_html_tags
)]
mod bindings {
    include!("generated/prebuilt.rs");
}
pub use bindings::*;
// `MoeTensor`, from the header's `FI_MOE_TENSORS` list by `cargo xtask generate`.
include!("generated/moe_tensors.rs");
pub mod prebuilt;

/// The FlashInfer release these kernels are compiled from.
pub const FLASHINFER_VERSION: &str = env!("FLASHINFER_RS_UPSTREAM_VERSION");

/// The batched-GEMM cubin artifact (path below `flashinfer_cubin/cubins/`) the fused MoE of
/// this version loads at run time.
pub const BMM_ARTIFACT: &str = env!("FLASHINFER_RS_BMM_ARTIFACT");

/// Comma-separated GPU architectures compiled into this build (`""` without kernels).
pub const BUILT_ARCHS: &str = env!("FLASHINFER_RS_ARCHS");

/// Whether this build has kernels: compiled (an `sm90` or `sm100` feature) or from a
/// prebuilt kernel library.
pub const KERNELS_BUILT: bool = cfg!(flashinfer_kernels);

/// Whether the kernels come from a prebuilt library loaded at run time ([`prebuilt`]).
pub const PREBUILT: bool = cfg!(flashinfer_prebuilt);

#[cfg(test)]
mod tests;
