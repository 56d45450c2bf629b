//! Upstream's separate DeepSeek-V3 router (`fused_topk_deepseek`, "NoAuxTc"), which FlashInfer
//! supports on Hopper. It is not the router the fused MoE runs; we expose it as a
//! cross-check of [`Router`](super::Router)'s DeepSeekV3 path and as a baseline for benchmarks.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use flashinfer_sys as sys;

use super::method::{RoutingConfig, RoutingMethod};
use crate::error::{covers, ensure, Error, Result, MAX_TOKENS};
use crate::ffi::check;
use crate::replay::ReplayView;

/// The configurations upstream's NoAuxTc kernel has (others it refuses at run time).
fn validate(cfg: &RoutingConfig) -> Result<(u32, u32, f32)> {
    cfg.validate()?;
    let RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        routed_scaling_factor,
    } = cfg.method
    else {
        return Err(Error::invalid("method", "NoAuxTc routes DeepSeekV3 only"));
    };
    let e = cfg.num_experts;
    let n = n_group.max(1);
    let single = n == 1 && e <= 384;
    let multi = n > 1 && e <= 256 && e / n <= 32 && (e / n) * topk_group <= 128;
    ensure(single || multi, "num_experts", || {
        format!("NoAuxTc supports one group of <= 384 experts or <= 256 experts in groups of <= 32 (kept groups <= 128 experts); got {e} experts in {n} groups")
    })?;
    Ok((
        n,
        if n == 1 { 1 } else { topk_group },
        routed_scaling_factor,
    ))
}

/// Routes `num_tokens` rows of fp32 `logits` with upstream's NoAuxTc kernel: `values[t][k]`
/// are the weights, `indices[t][k]` the experts (int32), `replay` as for [`Router::route`](super::Router::route).
#[allow(clippy::too_many_arguments)]
pub fn route_noaux_tc(
    stream: &Arc<CudaStream>,
    cfg: &RoutingConfig,
    logits: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    num_tokens: usize,
    values: &mut CudaSlice<f32>,
    indices: &mut CudaSlice<i32>,
    replay: Option<&mut ReplayView<'_>>,
) -> Result<()> {
    let (n_group, topk_group, scale) = validate(cfg)?;
    let (t, e, k) = (num_tokens, cfg.num_experts as usize, cfg.top_k as usize);
    ensure(t <= MAX_TOKENS, "num_tokens", || {
        format!("{t} exceeds the kernels' int32 token count")
    })?;
    ensure(covers(logits.len(), t, e), "logits", || {
        format!("holds {}, needs {}", logits.len(), t as u128 * e as u128)
    })?;
    ensure(bias.len() == e, "bias", || {
        format!("must hold num_experts ({e}) elements, holds {}", bias.len())
    })?;
    ensure(covers(values.len(), t, k), "values", || {
        format!("holds {}, needs {}", values.len(), t as u128 * k as u128)
    })?;
    ensure(covers(indices.len(), t, k), "indices", || {
        format!("holds {}, needs {}", indices.len(), t as u128 * k as u128)
    })?;
    if let Some(r) = replay.as_deref() {
        super::route::check_replay(r.rows(), r.cols(), t, k)?;
    }
    stream.context().bind_to_thread()?;
    let (l, _g1) = logits.device_ptr(stream);
    let (b, _g2) = bias.device_ptr(stream);
    let (v, _g3) = values.device_ptr_mut(stream);
    let (i, _g4) = indices.device_ptr_mut(stream);
    let (r, _g5) = match replay {
        Some(r) => {
            let (p, g) = r.data_mut().device_ptr_mut(stream);
            (p as *mut i16, Some(g))
        }
        None => (std::ptr::null_mut(), None),
    };
    // SAFETY: sizes checked above; all pointers are device memory kept alive by the guards;
    // the stream's context is current.
    check(unsafe {
        sys::fi_noaux_tc_run(
            t as i32,
            e as i32,
            k as i32,
            n_group as i32,
            topk_group as i32,
            scale,
            l as *const _,
            sys::fi_dtype::FI_DTYPE_F32,
            b as *const _,
            sys::fi_dtype::FI_DTYPE_F32,
            v as *mut _,
            i as *mut i32,
            r,
            cfg.use_pdl as i32,
            stream.cu_stream() as *mut _,
        )
    })
}
