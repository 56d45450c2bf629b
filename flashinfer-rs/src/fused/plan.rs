//! Every rule of a fused MoE call, on sizes alone: what each op takes, in which shape, and
//! which combinations upstream accepts. Host arithmetic only, so each rule is tested in CI.
//!
//! The rules are FlashInfer 0.6.13's own checks (`check_routing`/`check_moe` of each launcher
//! in flashinfer-sys/csrc/trtllm_fused_moe_kernel_launcher.cu) plus the ones upstream forgets (undersized
//! buffers, replay rows, dtypes), split by when they can be known:
//! - [`FusedPlan::new`] (`layer`): the routing config, the sizes, the options and the
//!   weights, checked once by [`FusedMoe::new`](super::FusedMoe::new);
//! - [`FusedPlan::check_batch`] (`batch`): the token count, the routing input, the replay
//!   buffer, the activations and the output, checked by every forward call.
//!
//! Each gives the exact tensor shapes to hand to the C ABI ([`TensorSpec`]). Public and
//! GPU-free: a server checks a batch before it has buffers, and the fuzz targets call it.
//! Tensors are named by the C ABI's [`MoeTensor`] and typed by its [`fi_dtype`] values.

use flashinfer_sys as sys;
/// The C ABI's element types (`fi_dtype::Type` values), as [`TensorSize`] and [`TensorSpec`]
/// give them.
pub use sys::fi_dtype;
use sys::fi_dtype::Type as Dtype;
/// The C ABI's tensor arguments of a fused call, as [`TensorSize`] and [`TensorSpec`] name
/// them.
pub use sys::MoeTensor;

use crate::error::{ensure, Error, Result};

mod batch;
mod layer;
#[cfg(test)]
mod whole;

use batch::plan_batch;
pub use batch::FusedBatchSizes;
pub use layer::{FusedLayerSizes, FusedPlan};
#[cfg(test)]
pub(crate) use whole::{plan, Desc, Shape};

/// Which upstream entry point, with the variant its arguments select (each precision's
/// layer has one: [`Precision`](super::Precision)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `trtllm_bf16_moe`.
    Bf16,
    /// `trtllm_fp8_per_tensor_scale_moe`.
    Fp8PerTensor,
    /// `trtllm_fp8_block_scale_moe` with DeepSeek's fp32 128x128 block scales.
    Fp8BlockDeepSeek,
    /// `trtllm_fp8_block_scale_moe` with MxFp8's ue8m0 scales.
    Fp8BlockMx,
    /// `trtllm_fp4_block_scale_moe`.
    Fp4 {
        /// The activations it is fed.
        act: Fp4Act,
        /// Its weights' format.
        weights: Fp4W,
    },
}

/// The activations an fp4 layer is fed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp4Act {
    /// bf16.
    Bf16,
    /// fp8 e4m3.
    E4m3,
    /// MX fp8 e4m3 with block scales.
    MxE4m3,
    /// NV fp4 with block scales.
    Nvfp4,
}

/// The fp4 weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp4W {
    /// NV fp4 (16-element blocks, e4m3 scales).
    Nvfp4,
    /// MX fp4 (32-element blocks, ue8m0 scales).
    Mxfp4,
}

impl Op {
    pub(crate) fn raw(self) -> i32 {
        use sys::fi_moe_op as o;
        (match self {
            Op::Bf16 => o::FI_MOE_BF16,
            Op::Fp8PerTensor => o::FI_MOE_FP8_PER_TENSOR,
            Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => o::FI_MOE_FP8_BLOCK_SCALE,
            Op::Fp4 { .. } => o::FI_MOE_FP4_BLOCK_SCALE,
        }) as i32
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Bf16 => "trtllm_bf16_moe",
            Op::Fp8PerTensor => "trtllm_fp8_per_tensor_scale_moe",
            Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => "trtllm_fp8_block_scale_moe",
            Op::Fp4 { .. } => "trtllm_fp4_block_scale_moe",
        }
    }

    /// Token tiles upstream builds launchers for (`mSupportedTileNums` and friends).
    pub(crate) fn tiles(self) -> &'static [i64] {
        match self {
            Op::Bf16 | Op::Fp8PerTensor | Op::Fp8BlockDeepSeek => &[8, 16, 32, 64, 128],
            Op::Fp8BlockMx => &[8, 16, 32, 64, 128, 256],
            Op::Fp4 {
                act: Fp4Act::Bf16, ..
            } => &[8, 16, 32, 64],
            Op::Fp4 { .. } => &[8, 16, 32, 64, 128, 256],
        }
    }

    /// Whether `tensor` belongs to the layer (weights, their scales, per-expert parameters:
    /// [`FusedLayerSizes::weights`], checked once) rather than to a batch
    /// ([`FusedBatchSizes::inputs`], checked per call). The typed calls know theirs by type.
    pub fn in_layer(self, tensor: MoeTensor) -> bool {
        use MoeTensor as M;
        match tensor {
            M::Gemm1Weights
            | M::Gemm1WeightsScale
            | M::Gemm2Weights
            | M::Gemm2WeightsScale
            | M::Gemm2Bias
            | M::Gemm1Alpha
            | M::Gemm1Beta
            | M::Gemm1ClampLimit
            | M::Output1ScalesScalar
            | M::Output1ScalesGateScalar
            | M::Output2ScalesScalar => true,
            // fp4's GEMM1 bias is per expert; the bf16 and MxFp8 layers' is a per-token delta.
            M::Gemm1Bias => matches!(self, Op::Fp4 { .. }),
            _ => false,
        }
    }

    /// The argument name errors blame for `tensor`: the typed calls' field, where it differs
    /// from the ABI name.
    pub(crate) fn label(self, tensor: MoeTensor) -> &'static str {
        match (self, tensor) {
            (Op::Fp4 { .. }, MoeTensor::ExpertIndices) => "topk_ids",
            (Op::Fp4 { .. }, MoeTensor::ExpertWeights) => "topk_weights",
            (Op::Bf16 | Op::Fp8BlockMx | Op::Fp8BlockDeepSeek, MoeTensor::Gemm1Bias) => {
                "gemm1_lora_delta"
            }
            _ => tensor.name(),
        }
    }
}

/// Where a fused call's routing comes from, by size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingSrc {
    /// Logits `[T, E]` (len elements of dtype) and an optional bias.
    Logits {
        /// The logits' [`fi_dtype`].
        dtype: Dtype,
        /// Elements of the logits.
        len: usize,
        /// The bias' [`fi_dtype`] and elements, if one is given.
        bias: Option<(Dtype, usize)>,
    },
    /// Packed `(id << 16) | bf16 weight` ids, `[T, K]` int32.
    Packed {
        /// Elements of the packed ids.
        len: usize,
    },
}

/// A tensor the caller passed: which argument, its element type and length in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSize {
    /// Which argument.
    pub tensor: MoeTensor,
    /// Its [`fi_dtype`].
    pub dtype: Dtype,
    /// Its length in elements.
    pub len: usize,
}

/// Most dimensions of a tensor (`fi_tensor::shape`).
const MAX_DIMS: usize = 4;

/// A tensor as it will be handed to the C ABI: which argument, which dtype, which shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorSpec {
    /// Which argument.
    pub tensor: MoeTensor,
    /// Its [`fi_dtype`].
    pub dtype: Dtype,
    ndim: usize,
    dims: [i64; MAX_DIMS],
}

impl TensorSpec {
    /// `shape` must have 1 to 4 dimensions, each at most `i64::MAX` (the rules' sizes are
    /// bounded by `MAX_TOKENS` products, far below).
    fn new(tensor: MoeTensor, dtype: Dtype, shape: &[usize]) -> Result<TensorSpec> {
        if shape.is_empty() || shape.len() > MAX_DIMS {
            return Err(Error::Internal(format!("{shape:?}: rank out of range")));
        }
        let mut dims = [0i64; MAX_DIMS];
        for (d, &s) in dims.iter_mut().zip(shape) {
            *d = i64::try_from(s).map_err(|_| {
                Error::invalid(tensor.name(), format!("{shape:?} overflows a tensor size"))
            })?;
        }
        Ok(TensorSpec {
            tensor,
            dtype,
            ndim: shape.len(),
            dims,
        })
    }

    /// Its shape (1 to 4 dimensions).
    pub fn shape(&self) -> &[i64] {
        &self.dims[..self.ndim]
    }

    /// Elements of the shape; `None` if the count does not fit u128 (no buffer holds it).
    fn numel(&self) -> Option<u128> {
        self.shape()
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(u128::try_from(d).ok()?))
    }

    /// The `fi_tensor` of this spec at device address `ptr`.
    pub(crate) fn to_raw(self, ptr: u64) -> sys::fi_tensor {
        sys::fi_tensor {
            data: ptr as *mut _,
            dtype: self.dtype as i32,
            ndim: self.ndim as i32,
            shape: self.dims,
        }
    }
}

/// How errors name an `fi_dtype`.
pub(crate) fn dtype_name(dtype: Dtype) -> &'static str {
    use sys::fi_dtype as d;
    match dtype {
        d::FI_DTYPE_F32 => "f32",
        d::FI_DTYPE_BF16 => "bf16",
        d::FI_DTYPE_F16 => "f16",
        d::FI_DTYPE_E4M3 => "fp8 e4m3",
        d::FI_DTYPE_U8 => "u8 (packed fp4 or ue8m0)",
        d::FI_DTYPE_I32 => "i32",
        d::FI_DTYPE_I16 => "i16",
        _ => "an unknown fi_dtype",
    }
}

pub(crate) fn round_up(x: usize, m: usize) -> usize {
    x.div_ceil(m) * m
}

/// The product of `dims` as a 1-D size, or a typed error when it overflows.
pub(crate) fn cmul(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::invalid("shape", format!("{dims:?} overflows a tensor size")))
}

/// Claims the tensors an op takes from what the caller gave, checking each; refuses what is
/// left (nothing is silently ignored).
pub(crate) struct Planner<'d> {
    op: Op,
    given: &'d [TensorSize],
    taken: Vec<bool>,
    specs: Vec<TensorSpec>,
}

impl<'d> Planner<'d> {
    /// The typed calls pass each tensor once; anything else is our bug.
    fn new(op: Op, given: &'d [TensorSize]) -> Result<Planner<'d>> {
        for (n, g) in given.iter().enumerate() {
            if given[..n].iter().any(|x| x.tensor == g.tensor) {
                return Err(Error::Internal(format!(
                    "`{}` passed twice",
                    g.tensor.name()
                )));
            }
        }
        Ok(Planner {
            op,
            given,
            taken: vec![false; given.len()],
            specs: Vec::with_capacity(given.len() + 4),
        })
    }

    fn label(&self, tensor: MoeTensor) -> &'static str {
        self.op.label(tensor)
    }

    fn given(&self, tensor: MoeTensor) -> Option<&'d TensorSize> {
        self.given.iter().find(|g| g.tensor == tensor)
    }

    /// A tensor the op requires in `shape` (the passed slice may be longer).
    fn need(&mut self, tensor: MoeTensor, dtype: Dtype, shape: &[usize]) -> Result<()> {
        if self.given(tensor).is_none() {
            return Err(Error::invalid(
                self.label(tensor),
                format!("{} needs it here", self.op.name()),
            ));
        }
        self.maybe(tensor, dtype, shape)
    }

    /// A tensor the op requires, declared to upstream as `shape` but read by the kernels over
    /// `min_len` elements (at least the shape's count).
    fn need_padded(
        &mut self,
        tensor: MoeTensor,
        dtype: Dtype,
        shape: &[usize],
        min_len: usize,
    ) -> Result<()> {
        self.need(tensor, dtype, shape)?;
        let len = self.given(tensor).map_or(0, |g| g.len);
        ensure(len >= min_len, self.label(tensor), || {
            format!("holds {len} elements, needs {min_len} (128x4-interleaved scales)")
        })
    }

    /// A tensor the op may take.
    fn maybe(&mut self, tensor: MoeTensor, dtype: Dtype, shape: &[usize]) -> Result<()> {
        let Some(i) = self.given.iter().position(|g| g.tensor == tensor) else {
            return Ok(());
        };
        let g = self.given[i];
        let label = self.label(tensor);
        ensure(g.dtype == dtype, label, || {
            format!(
                "is {}, {} takes {}",
                dtype_name(g.dtype),
                self.op.name(),
                dtype_name(dtype)
            )
        })?;
        let spec = TensorSpec::new(tensor, dtype, shape)?;
        let need = spec.numel();
        ensure(need.is_some_and(|n| g.len as u128 >= n), label, || {
            format!("holds {} elements, needs {need:?} ({shape:?})", g.len)
        })?;
        self.taken[i] = true;
        self.specs.push(spec);
        Ok(())
    }

    /// A tensor the call hands over that is not in `given` (logits, bias, packed ids,
    /// replay: their sizes are checked by their own rules).
    fn push(&mut self, tensor: MoeTensor, dtype: Dtype, shape: &[usize]) -> Result<()> {
        self.specs.push(TensorSpec::new(tensor, dtype, shape)?);
        Ok(())
    }

    /// Refuses every given tensor the op has not claimed.
    fn finish(self) -> Result<Vec<TensorSpec>> {
        if let Some(i) = self.taken.iter().position(|&t| !t) {
            let tensor = self.given[i].tensor;
            return Err(Error::invalid(
                self.label(tensor),
                format!("is not taken by {} with these options", self.op.name()),
            ));
        }
        Ok(self.specs)
    }
}

#[cfg(test)]
pub(crate) mod tests;
