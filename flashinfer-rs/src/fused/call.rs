//! Upstream's four entry points by their names, each one [`FusedMoe::new`] then
//! [`FusedMoe::forward`]: for a single call, or a caller that keeps no layer object. A server
//! calling a layer every step builds its [`FusedMoe`] once instead (the layer's rules are then
//! checked once, not per call).

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut};
use half::bf16;

use super::config::MoeConfig;
use super::moe::{FusedMoe, MoeBatch};
use super::precision::{Bf16, Fp4BlockScale, Fp8BlockScale, Fp8PerTensor, Precision};
use super::unfinalized::Unfinalized;
use crate::error::Result;
use crate::replay::ReplayView;

macro_rules! one_shot {
    ($($(#[$doc:meta])* $name:ident => $p:ty;)*) => {$(
        $(#[$doc])*
        pub fn $name(
            stream: &Arc<CudaStream>,
            config: &MoeConfig,
            weights: <$p as Precision>::Weights<'_>,
            batch: MoeBatch<'_, $p>,
            output: &mut CudaViewMut<'_, bf16>,
            routing_replay_out: Option<&mut ReplayView<'_>>,
        ) -> Result<Option<Unfinalized>> {
            FusedMoe::<$p>::new(*config, weights)?.forward(stream, batch, output, routing_replay_out)
        }
    )*};
}

one_shot! {
    /// `trtllm_bf16_moe`: a [`Bf16`] layer, built and called once.
    trtllm_bf16_moe => Bf16;
    /// `trtllm_fp8_per_tensor_scale_moe`: an [`Fp8PerTensor`] layer, built and called once.
    trtllm_fp8_per_tensor_scale_moe => Fp8PerTensor;
    /// `trtllm_fp8_block_scale_moe`: an [`Fp8BlockScale`] layer, built and called once.
    trtllm_fp8_block_scale_moe => Fp8BlockScale;
    /// `trtllm_fp4_block_scale_moe`: an [`Fp4BlockScale`] layer, built and called once.
    trtllm_fp4_block_scale_moe => Fp4BlockScale;
}
