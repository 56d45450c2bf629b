//! The reference server's tests, in one binary: linked once (candle, and in a `cuda` build its
//! CUDA kernels, make each test binary tens of MB), and one file to carry to a GPU machine.
//!
//! `FLASHINFER_RS_SERVE_BACKEND=hopper` runs them with every MoE layer on the Hopper layer
//! (a `cuda` build on an sm_90 GPU); `FLASHINFER_RS_SERVE_FIXTURES` says where the
//! transformers fixtures are when the binary runs away from this tree.

mod batched;
mod common;
mod fixtures;
mod gpu_model;
mod model;
mod server;
