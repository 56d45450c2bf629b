//! The Rust side of `fi_moe_args`: the scalars of a checked layer, the list of tensors a call
//! passes (any element type, read-only or written), and the pointers that fill the struct.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{CudaStream, CudaView};
use flashinfer_sys as sys;
use sys::fi_dtype::{self, Type as Dtype};
use sys::MoeTensor;

use super::plan::{FusedLayerSizes, Op, TensorSize, TensorSpec};
use super::precision::SwigluParams;
use crate::error::{Error, Result};
use crate::launch::{Launch, RoArg, RwArg};
use crate::routing::RoutingMethod;

/// A tensor's field and the plan that shapes it: what the fused call reads back with each
/// address from the launch.
pub(crate) type Key<'a> = (MoeTensor, &'a [TensorSpec]);

/// The tensors a layer's weights or a batch's inputs pass, each with the dtype the op
/// declares it as to upstream.
#[derive(Default)]
pub struct ArgList<'v> {
    ro: Vec<(MoeTensor, Dtype, &'v dyn RoArg)>,
    rw: Vec<(MoeTensor, Dtype, &'v mut dyn RwArg)>,
}

impl<'v> ArgList<'v> {
    pub fn ro(&mut self, tensor: MoeTensor, dtype: Dtype, v: &'v dyn RoArg) {
        self.ro.push((tensor, dtype, v));
    }

    pub fn ro_opt<T>(&mut self, tensor: MoeTensor, dtype: Dtype, v: &'v Option<CudaView<'_, T>>) {
        if let Some(v) = v {
            self.ro.push((tensor, dtype, v));
        }
    }

    pub fn rw(&mut self, tensor: MoeTensor, dtype: Dtype, v: &'v mut dyn RwArg) {
        self.rw.push((tensor, dtype, v));
    }

    pub fn swiglu(&mut self, s: &'v SwigluParams<'_>) {
        let f32_ = fi_dtype::FI_DTYPE_F32;
        self.ro_opt(MoeTensor::Gemm1Alpha, f32_, &s.alpha);
        self.ro_opt(MoeTensor::Gemm1Beta, f32_, &s.beta);
        self.ro_opt(MoeTensor::Gemm1ClampLimit, f32_, &s.clamp_limit);
    }

    /// What the planner checks: every tensor by size.
    pub(crate) fn given(&self) -> Vec<TensorSize> {
        let ro = self.ro.iter().map(|(t, d, v)| (*t, *d, v.arg_len()));
        let rw = self.rw.iter().map(|(t, d, v)| (*t, *d, v.arg_len()));
        ro.chain(rw)
            .map(|(tensor, dtype, len)| TensorSize { tensor, dtype, len })
            .collect()
    }

    /// Each tensor's stream, named for a context error by `op`'s label.
    pub(crate) fn streams(
        &self,
        op: Op,
    ) -> impl Iterator<Item = (&'static str, &Arc<CudaStream>)> + use<'_, 'v> {
        let ro = self
            .ro
            .iter()
            .map(move |(t, _, v)| (op.label(*t), v.arg_stream()));
        let rw = self
            .rw
            .iter()
            .map(move |(t, _, v)| (op.label(*t), v.arg_stream()));
        ro.chain(rw)
    }

    /// Lists every tensor into the launch `l`, named by `op`'s label, keyed with the plan
    /// `specs` that shapes it (in the order [`streams`](Self::streams) gives them).
    pub(crate) fn launch<'a>(
        &'a mut self,
        l: &mut Launch<'a, Key<'a>>,
        op: Op,
        specs: &'a [TensorSpec],
    ) {
        let ArgList { ro, rw } = self;
        for (t, _, v) in ro.iter() {
            l.keyed_input(op.label(*t), (*t, specs), *v);
        }
        for (t, _, v) in rw.iter_mut() {
            l.keyed_output(op.label(*t), (*t, specs), &mut **v);
        }
    }
}

/// Puts `tensor`, planned in `specs`, at `ptr` into its `fi_moe_args` field.
pub(crate) fn fill(
    a: &mut sys::fi_moe_args,
    specs: &[TensorSpec],
    tensor: MoeTensor,
    ptr: CUdeviceptr,
) -> Result<()> {
    let spec = specs
        .iter()
        .find(|s| s.tensor == tensor)
        .ok_or_else(|| Error::Internal(format!("`{}` passed but not planned", tensor.name())))?;
    *tensor.field_mut(a) = spec.to_raw(ptr);
    Ok(())
}

/// Every scalar of `fi_moe_args` for a checked layer (tensors left empty).
pub(crate) fn scalar_args(
    desc: &FusedLayerSizes,
    device: i32,
    use_routing_scales_on_input: bool,
) -> sys::fi_moe_args {
    let (cfg, opts, op) = (&desc.routing, &desc.opts, desc.op);
    let raw = cfg.raw_params(0, fi_dtype::FI_DTYPE_F32, fi_dtype::FI_DTYPE_F32);
    let (n_group, topk_group) = match cfg.method {
        // The fused launchers want DeepSeekV3's groups given (1 = ungrouped).
        RoutingMethod::DeepSeekV3 { .. } => (
            i64::from(raw.n_group.max(1)),
            i64::from(raw.topk_group.max(1)),
        ),
        _ => (-1, -1),
    };
    let has_scale = matches!(
        cfg.method,
        RoutingMethod::DeepSeekV3 { .. } | RoutingMethod::MiniMax2 { .. }
    );
    // SAFETY: fi_moe_args is plain data; all-zero is "no tensor, zero scalars".
    let mut a: sys::fi_moe_args = unsafe { std::mem::zeroed() };
    a.op = op.raw();
    a.device = device;
    a.num_experts = cfg.num_experts.into();
    a.top_k = cfg.top_k.into();
    a.n_group = n_group;
    a.topk_group = topk_group;
    a.intermediate_size = desc.intermediate_size as i64;
    a.local_expert_offset = cfg.local_expert_offset.into();
    a.local_num_experts = cfg.local_num_experts.into();
    a.routed_scaling_factor = raw.routed_scaling_factor.into();
    a.has_routed_scaling_factor = has_scale.into();
    a.routing_method = raw.method;
    a.routing_input_mode = 0;
    a.use_routing_scales_on_input = use_routing_scales_on_input.into();
    a.use_shuffled_weight = opts.use_shuffled_weight.into();
    a.weight_layout = opts.weight_layout as i32;
    a.fp8_quantization = match op {
        Op::Fp8BlockDeepSeek => 1,
        Op::Fp8BlockMx => 2,
        _ => 0,
    };
    a.activation = opts.activation as i32;
    a.do_finalize = opts.do_finalize.into();
    a.enable_pdl = opts.use_pdl.into();
    a.norm_topk_prob = raw.norm_topk_prob;
    (a.tile_n, a.config) = opts.tactic.map_or((-1, -1), |t| (t.tile_n, t.config));
    a
}

#[cfg(test)]
mod tests;
