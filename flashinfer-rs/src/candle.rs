//! Candle tensors in and out (feature `candle`): a candle model calls the routers and the
//! Hopper MoE layer with the `Tensor`s it already has, on candle's own CUDA stream, and gets
//! `Tensor`s back; checkpoint tensors become a layer's weights on the GPU ([`cutlass_weights`]
//! from float checkpoints, [`cutlass_block_weights`] from fine-grained fp8 ones).
//!
//! Inputs are read in place (candle's device memory, no copy): every tensor is checked first
//! (CUDA storage, dtype, rank and sizes, contiguity, the stream's CUDA context) and a wrong
//! one is an [`Error::InvalidArgument`] naming it. Outputs are new tensors on the inputs'
//! device, allocated on candle's stream as candle's own ops allocate theirs; a server that
//! must not allocate per call (a captured CUDA graph) uses the views API
//! ([`CutlassMoe::forward`], [`TopKRouter::route`]) with buffers it keeps.
//!
//! ```ignore
#![doc = include_str!("candle_example.rs")]
//! ```
//!
//! (Not a doctest: the example, `src/candle_example.rs`, is compiled and run by the candle
//! check, `downstream/candle`, which builds candle with CUDA once; a doctest here would build
//! it a second time, for this workspace's features and profile.)

use std::sync::Arc;

use candle_core::cuda::CudaDType;
use candle_core::op::BackpropOp;
use candle_core::{CudaDevice, CudaStorage, DType, Device, Storage, StorageRef, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use crate::capture::LayerViews;
use crate::cutlass::{
    CutlassBatch, CutlassBlockScales, CutlassElement, CutlassMoe, CutlassRouting, CutlassWeights,
    CutlassWorkspace, WeightBuffer,
};
use crate::error::{ensure, Error, Result};
use crate::fused::elements::e4m3_view;
use crate::fused::E4m3;
use crate::routing::{Logits, RouteInput, TopKOutputs, TopKRouter};

/// candle's CUDA stream of `device`: every call of this module runs on it, ordered after
/// whatever candle enqueued there. Not a CUDA device: [`Error::InvalidArgument`].
pub fn cuda_stream(device: &Device) -> Result<Arc<CudaStream>> {
    Ok(cuda_device(device, "device")?.cuda_stream())
}

fn cuda_device<'d>(device: &'d Device, arg: &'static str) -> Result<&'d CudaDevice> {
    match device {
        Device::Cuda(d) => Ok(d),
        other => Err(Error::invalid(
            arg,
            format!("must be on a CUDA device, is on {:?}", other.location()),
        )),
    }
}

/// A candle operation failed (weight preparation's concatenations, dtype conversions).
fn candle_err(what: &'static str) -> impl FnOnce(candle_core::Error) -> Error {
    move |e| Error::Candle(format!("{what}: {e}"))
}

/// A CUDA tensor held for reading: its storage's read lock and the checked span of its
/// elements. While it lives, candle cannot write the storage; the views it gives borrow it.
struct Held<'t> {
    arg: &'static str,
    dtype: DType,
    storage: StorageRef<'t>,
    start: usize,
    len: usize,
}

impl<'t> Held<'t> {
    /// Checks `tensor` (CUDA, `dtypes`, `dims`, row-major contiguous) and holds it.
    fn new(
        tensor: &'t Tensor,
        arg: &'static str,
        dtypes: &[DType],
        dims: &[Option<usize>],
    ) -> Result<Held<'t>> {
        cuda_device(tensor.device(), arg)?;
        ensure(dtypes.contains(&tensor.dtype()), arg, || {
            format!("has dtype {:?}, must be one of {dtypes:?}", tensor.dtype())
        })?;
        check_shape(tensor, arg, dims)?;
        let (storage, layout) = tensor.storage_and_layout();
        ensure(layout.is_contiguous(), arg, || {
            format!(
                "must be row-major contiguous (strides {:?}); call .contiguous() first",
                layout.stride()
            )
        })?;
        let (start, len) = (layout.start_offset(), tensor.elem_count());
        Ok(Held {
            arg,
            dtype: tensor.dtype(),
            storage,
            start,
            len,
        })
    }

    /// The elements as `T` (the dtype was checked by `new`).
    fn view<T: CudaDType + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
        let Storage::Cuda(cuda) = &*self.storage else {
            return Err(Error::invalid(self.arg, "must be a CUDA tensor"));
        };
        let slice = cuda
            .as_cuda_slice::<T>()
            .map_err(|e| Error::invalid(self.arg, e))?;
        // In range: candle's layout of this storage says so; checked again, not trusted.
        ensure(self.start + self.len <= slice.len(), self.arg, || {
            format!(
                "elements {}..{} outside its storage of {}",
                self.start,
                self.start + self.len,
                slice.len()
            )
        })?;
        Ok(slice.slice(self.start..self.start + self.len))
    }

    fn logits(&self) -> Result<Logits<'_>> {
        Ok(match self.dtype {
            DType::BF16 => self.view::<bf16>()?.into(),
            _ => self.view::<f32>()?.into(),
        })
    }
}

/// `tensor`'s shape against `dims` (`None`: any size there).
fn check_shape(tensor: &Tensor, arg: &'static str, dims: &[Option<usize>]) -> Result<()> {
    let shape = tensor.dims();
    let fits = shape.len() == dims.len()
        && shape
            .iter()
            .zip(dims)
            .all(|(&d, want)| want.is_none_or(|w| w == d));
    ensure(fits, arg, || {
        let want: Vec<String> = dims
            .iter()
            .map(|d| d.map_or("_".into(), |d| d.to_string()))
            .collect();
        format!("has shape {shape:?}, must be [{}]", want.join(", "))
    })
}

/// An output's memory: `n` zeroed elements on `stream` (candle's), to become a tensor.
fn output<T: DeviceRepr + ValidAsZeroBits>(
    stream: &Arc<CudaStream>,
    n: usize,
) -> Result<CudaSlice<T>> {
    Ok(stream.alloc_zeros::<T>(n)?)
}

fn into_tensor<T: CudaDType>(
    slice: CudaSlice<T>,
    device: &CudaDevice,
    dims: (usize, usize),
) -> Tensor {
    let storage = Storage::Cuda(CudaStorage::wrap_cuda_slice(slice, device.clone()));
    Tensor::from_storage(storage, dims, BackpropOp::none(), false)
}

/// Where a tensor call's routing comes from (the tensor form of
/// [`CutlassRouting`]).
#[derive(Debug, Clone, Copy)]
pub enum TensorRouting<'a> {
    /// Route inside the call from the gate's logits `[tokens, experts]` (f32 or bf16) and the
    /// method's bias `[experts]` (required by DeepSeekV3 and MiniMax2, refused by the others).
    Logits {
        /// The gate's output.
        logits: &'a Tensor,
        /// The per-expert bias.
        bias: Option<&'a Tensor>,
    },
    /// Routing done elsewhere (e.g. [`TopKRouter::route_tensor`]): expert ids `[tokens,
    /// top_k]` i32 and their weights `[tokens, top_k]` f32.
    Routed(&'a RoutedTensors),
}

/// A routing result as tensors a candle op consumes: `[tokens, top_k]` each, best first.
#[derive(Debug, Clone)]
pub struct RoutedTensors {
    /// Global expert ids, i32.
    pub ids: Tensor,
    /// Their weights, f32.
    pub weights: Tensor,
}

impl TopKRouter {
    /// Routes the rows of `logits` (`[tokens, experts]`, f32 or bf16, on a CUDA device) on
    /// candle's stream: the chosen experts and their weights as new tensors, and, with
    /// `capture`, the ids into the capture store's layer views (and the weights, when the
    /// store captures them).
    pub fn route_tensor(
        &self,
        logits: &Tensor,
        bias: Option<&Tensor>,
        capture: Option<LayerViews<'_>>,
    ) -> Result<RoutedTensors> {
        let cfg = *self.config();
        let (experts, k) = (cfg.num_experts as usize, cfg.top_k as usize);
        let device = cuda_device(logits.device(), "logits")?;
        let stream = device.cuda_stream();
        let held = Held::new(
            logits,
            "logits",
            &[DType::F32, DType::BF16],
            &[None, Some(experts)],
        )?;
        let tokens = logits.dims()[0];
        let bias = bias
            .map(|b| Held::new(b, "bias", &[DType::F32, DType::BF16], &[Some(experts)]))
            .transpose()?;
        let n = tokens
            .checked_mul(k)
            .ok_or_else(|| Error::invalid("logits", "tokens x top_k overflows usize"))?;
        let mut ids = output::<i32>(&stream, n)?;
        let mut weights = output::<f32>(&stream, n)?;
        let input = RouteInput {
            logits: held.logits()?,
            bias: bias.as_ref().map(Held::logits).transpose()?,
            num_tokens: tokens,
        };
        let (mut replay, captured) = match capture {
            Some(LayerViews { ids, weights }) => (Some(ids), weights),
            None => (None, None),
        };
        let mut outputs = TopKOutputs {
            ids: Some(ids.as_view_mut()),
            weights_f32: Some(weights.as_view_mut()),
            weights_bf16: None,
        };
        self.route(&stream, &input, &mut outputs, replay.as_mut())?;
        if let Some(mut captured) = captured {
            let held = captured.len();
            ensure(held >= n, "capture", || {
                format!("the weights view holds {held} values, the call routes {n}")
            })?;
            stream.memcpy_dtod(&weights, &mut captured.slice_mut(..n))?;
        }
        Ok(RoutedTensors {
            ids: into_tensor(ids, device, (tokens, k)),
            weights: into_tensor(weights, device, (tokens, k)),
        })
    }
}

impl<W: WeightBuffer> CutlassMoe<W>
where
    W::Element: CutlassElement,
{
    /// [`forward`](Self::forward) on candle tensors, on candle's stream of `hidden`'s device
    /// (for any of the layer's weight formats: bf16, fp8 per-tensor or block scale):
    /// `hidden` `[tokens, hidden_size]` bf16 in, the layer's output `[tokens, hidden_size]`
    /// bf16 out (a new tensor). With `capture` the routed ids (and weights, when the store
    /// captures them) land in the capture store's layer views, as
    /// [`forward_captured`](Self::forward_captured) writes them; routing that came in as
    /// [`TensorRouting::Routed`] is the caller's and is not captured here (capture it where it
    /// was routed).
    pub fn forward_tensor(
        &self,
        workspace: &mut CutlassWorkspace,
        hidden: &Tensor,
        routing: TensorRouting<'_>,
        capture: Option<LayerViews<'_>>,
    ) -> Result<Tensor> {
        let cfg = self.config();
        let (h, experts, k) = (
            cfg.hidden_size,
            cfg.routing.num_experts as usize,
            cfg.routing.top_k as usize,
        );
        let device = cuda_device(hidden.device(), "hidden")?;
        let stream = device.cuda_stream();
        let x = Held::new(hidden, "hidden", &[DType::BF16], &[None, Some(h)])?;
        let tokens = hidden.dims()[0];
        let rows = Some(tokens);
        let held: [Option<Held<'_>>; 2] = match routing {
            TensorRouting::Logits { logits, bias } => [
                Some(Held::new(
                    logits,
                    "logits",
                    &[DType::F32, DType::BF16],
                    &[rows, Some(experts)],
                )?),
                bias.map(|b| Held::new(b, "bias", &[DType::F32, DType::BF16], &[Some(experts)]))
                    .transpose()?,
            ],
            TensorRouting::Routed(r) => [
                Some(Held::new(&r.ids, "ids", &[DType::I32], &[rows, Some(k)])?),
                Some(Held::new(
                    &r.weights,
                    "weights",
                    &[DType::F32],
                    &[rows, Some(k)],
                )?),
            ],
        };
        let routing = match (routing, &held) {
            (TensorRouting::Logits { .. }, [Some(logits), bias]) => CutlassRouting::Logits {
                logits: logits.logits()?,
                bias: bias.as_ref().map(Held::logits).transpose()?,
            },
            (TensorRouting::Routed(_), [Some(ids), Some(weights)]) => CutlassRouting::Precomputed {
                ids: ids.view::<i32>()?,
                scales: weights.view::<f32>()?,
            },
            _ => return Err(Error::Internal("tensor routing held as taken".into())),
        };
        let n = tokens
            .checked_mul(h)
            .ok_or_else(|| Error::invalid("hidden", "tokens x hidden overflows usize"))?;
        let mut out = output::<bf16>(&stream, n)?;
        let batch = CutlassBatch {
            num_tokens: tokens,
            routing,
            hidden_states: x.view::<bf16>()?,
        };
        match capture {
            Some(views) => {
                self.forward_captured(&stream, batch, &mut out.as_view_mut(), workspace, views)?
            }
            None => self.forward(&stream, batch, &mut out.as_view_mut(), workspace, None)?,
        }
        Ok(into_tensor(out, device, (tokens, h)))
    }
}

/// A checkpoint's GEMM 1 weights, in the layouts checkpoints and servers keep them; every
/// tensor on the same CUDA device, any float dtype (converted to bf16 on the GPU).
#[derive(Debug, Clone, Copy)]
pub enum Fc1<'a> {
    /// Hugging Face's `gate_proj` and `up_proj`, each `[experts, intermediate, hidden]`
    /// (the per-expert tensors stacked, e.g. with `Tensor::stack`).
    GateUp {
        /// Every expert's `gate_proj.weight`.
        gate: &'a Tensor,
        /// Every expert's `up_proj.weight`.
        up: &'a Tensor,
    },
    /// A fused `w13` / `gate_up_proj` `[experts, 2 * intermediate, hidden]`, gate rows first
    /// (vLLM's and SGLang's layout, and transformers' fused experts).
    GateFirst(&'a Tensor),
    /// A fused `[experts, 2 * intermediate, hidden]`, up rows first: the layer's own layout.
    UpFirst(&'a Tensor),
}

/// The Hopper layer's weights ([`CutlassWeights`], owned) from checkpoint tensors, prepared
/// on their GPU (no host round trip): GEMM 1 as `[experts, 2 * intermediate, hidden]` with
/// the up rows first, GEMM 2 (`down`, `[experts, hidden, intermediate]`) as is; both bf16.
/// The result is a copy: the checkpoint's tensors can be dropped after.
pub fn cutlass_weights(fc1: Fc1<'_>, down: &Tensor) -> Result<CutlassWeights> {
    let (experts, hidden, inter) = expert_dims(down, "down")?;
    let stream = cuda_device(down.device(), "down")?.cuda_stream();
    let bf = |t: &Tensor| {
        // Codes are not weights: converted, they would be taken for their values.
        let codes = [
            DType::F8E4M3,
            DType::F8E8M0,
            DType::F6E2M3,
            DType::F6E3M2,
            DType::F4,
        ];
        ensure(!codes.contains(&t.dtype()), "weights", || {
            format!(
                "are {:?} codes: without their scales they are not the weights \
                 (fine-grained fp8: cutlass_block_weights)",
                t.dtype()
            )
        })?;
        t.to_dtype(DType::BF16).map_err(candle_err("to bf16"))
    };
    let fc1 = up_first(fc1, [experts, inter, hidden], down, &WEIGHT_NAMES, &bf)?;
    let down = bf(down)?
        .contiguous()
        .map_err(candle_err("down contiguous"))?;
    let copy = |t: &Tensor, arg| -> Result<CudaSlice<bf16>> {
        let held = Held::new(t, arg, &[DType::BF16], &[Some(experts), None, None])?;
        Ok(stream.clone_dtod(&held.view::<bf16>()?)?)
    };
    Ok(CutlassWeights {
        fc1: copy(&fc1, "fc1")?,
        fc2: copy(&down, "down")?,
    })
}

/// An fp8 block-scale layer's weights ([`CutlassMoe::new_fp8_blocks`]: e4m3 [`CutlassWeights`]
/// and their [`CutlassBlockScales`], owned) from a fine-grained fp8 checkpoint's tensors on
/// their GPU (DeepSeek-V3's and Qwen3-30B-A3B-FP8's: each projection's `weight` e4m3 and its
/// `weight_scale_inv`, one scale per 128x128 block), with no host round trip: `codes` and
/// `scales` in the same [`Fc1`] layout (the scales' sizes those of the codes over 128, any
/// float dtype, converted to f32), `down` `[experts, hidden, intermediate]` e4m3 and
/// `down_scales` `[experts, hidden / 128, intermediate / 128]`. GEMM 1's code rows and scale
/// rows are arranged up first on the GPU, as [`cutlass_weights`] arranges bf16 ones; the
/// result is a copy. Hidden and intermediate sizes must be multiples of 128 (the layer's
/// rule; a GateFirst or UpFirst tensor's halves then split on whole blocks).
pub fn cutlass_block_weights(
    codes: Fc1<'_>,
    scales: Fc1<'_>,
    down: &Tensor,
    down_scales: &Tensor,
) -> Result<(CutlassWeights<CudaSlice<E4m3>>, CutlassBlockScales)> {
    let (experts, hidden, inter) = expert_dims(down, "down")?;
    ensure(
        hidden.is_multiple_of(BLOCK) && inter.is_multiple_of(BLOCK),
        "down",
        || {
            format!("[{experts}, {hidden}, {inter}]: hidden and intermediate must be multiples of {BLOCK}")
        },
    )?;
    let stream = cuda_device(down.device(), "down")?.cuda_stream();
    let e4m3 = |t: &Tensor| -> Result<Tensor> {
        ensure(t.dtype() == DType::F8E4M3, "codes", || {
            format!("have dtype {:?}, must be F8E4M3", t.dtype())
        })?;
        Ok(t.clone())
    };
    let f32s = |t: &Tensor| t.to_dtype(DType::F32).map_err(candle_err("scales to f32"));
    let fc1 = up_first(codes, [experts, inter, hidden], down, &WEIGHT_NAMES, &e4m3)?;
    let blocks = [experts, inter / BLOCK, hidden / BLOCK];
    let fc1_scales = up_first(scales, blocks, down, &SCALE_NAMES, &f32s)?;
    let fc2_blocks = [Some(experts), Some(hidden / BLOCK), Some(inter / BLOCK)];
    check_weight(down_scales, "down_scales", &fc2_blocks, down)?;
    let codes_of = |t: &Tensor, arg| -> Result<CudaSlice<E4m3>> {
        let t = t.contiguous().map_err(candle_err("codes contiguous"))?;
        let held = Held::new(&t, arg, &[DType::F8E4M3], &[Some(experts), None, None])?;
        let view = held.view::<float8::F8E4M3>()?;
        Ok(stream.clone_dtod(&e4m3_view(&view))?)
    };
    let scales_of = |t: &Tensor, arg| -> Result<CudaSlice<f32>> {
        let t = f32s(t)?
            .contiguous()
            .map_err(candle_err("scales contiguous"))?;
        let held = Held::new(&t, arg, &[DType::F32], &[Some(experts), None, None])?;
        Ok(stream.clone_dtod(&held.view::<f32>()?)?)
    };
    Ok((
        CutlassWeights {
            fc1: codes_of(&fc1, "codes")?,
            fc2: codes_of(down, "down")?,
        },
        CutlassBlockScales {
            fc1: scales_of(&fc1_scales, "scales")?,
            fc2: scales_of(down_scales, "down_scales")?,
        },
    ))
}

/// The 128x128 blocks of an fp8 block-scale layer's weights.
const BLOCK: usize = 128;

/// `[experts, hidden, intermediate]` of a GEMM 2 tensor (`down`), checked as every weight is
/// (a CUDA device, a float dtype), or an error naming `arg`.
fn expert_dims(down: &Tensor, arg: &'static str) -> Result<(usize, usize, usize)> {
    let dims = match down.dims() {
        &[e, h, i] => (e, h, i),
        d => {
            return Err(Error::invalid(
                arg,
                format!("has shape {d:?}, must be [experts, hidden, intermediate]"),
            ))
        }
    };
    check_weight(down, arg, &[Some(dims.0), Some(dims.1), Some(dims.2)], down)?;
    Ok(dims)
}

/// The argument names an [`Fc1`]'s tensors are refused under, by variant.
struct Fc1Names {
    gate: &'static str,
    up: &'static str,
    w13: &'static str,
    fc1: &'static str,
}

/// Weights (or codes) given as an [`Fc1`].
const WEIGHT_NAMES: Fc1Names = Fc1Names {
    gate: "gate",
    up: "up",
    w13: "w13",
    fc1: "fc1",
};

/// Block scales given as an [`Fc1`].
const SCALE_NAMES: Fc1Names = Fc1Names {
    gate: "gate_scales",
    up: "up_scales",
    w13: "w13_scales",
    fc1: "fc1_scales",
};

/// GEMM 1's `[experts, 2 * rows, cols]` with each expert's up rows first, from `fc1` in its
/// layout (halves `[experts, rows, cols]`, or whole), each tensor checked (`down`'s device, a
/// float dtype, its shape; a wrong one refused under its name in `names`) and passed through
/// `convert` (a dtype conversion, or a check) first; `half` is `[experts, rows, cols]`.
fn up_first(
    fc1: Fc1<'_>,
    half: [usize; 3],
    down: &Tensor,
    names: &Fc1Names,
    convert: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let [experts, rows, cols] = half;
    let half_shape = [Some(experts), Some(rows), Some(cols)];
    let whole_shape = [Some(experts), Some(2 * rows), Some(cols)];
    let up_gate = |up: &Tensor, gate: &Tensor| {
        Tensor::cat(&[up, gate], 1).map_err(candle_err("fc1 = [up, gate]"))
    };
    match fc1 {
        Fc1::GateUp { gate, up } => {
            for (arg, t) in [(names.gate, gate), (names.up, up)] {
                check_weight(t, arg, &half_shape, down)?;
            }
            up_gate(&convert(up)?, &convert(gate)?)
        }
        Fc1::GateFirst(w13) => {
            check_weight(w13, names.w13, &whole_shape, down)?;
            let w13 = convert(w13)?;
            let half = |start| w13.narrow(1, start, rows).map_err(candle_err("w13 halves"));
            up_gate(&half(rows)?, &half(0)?)
        }
        Fc1::UpFirst(w) => {
            check_weight(w, names.fc1, &whole_shape, down)?;
            convert(w)?
                .contiguous()
                .map_err(candle_err("fc1 contiguous"))
        }
    }
}

/// A weight tensor's device (candle's device of `down`: the same stream), float dtype and
/// shape.
fn check_weight(
    t: &Tensor,
    arg: &'static str,
    dims: &[Option<usize>],
    down: &Tensor,
) -> Result<()> {
    cuda_device(t.device(), arg)?;
    ensure(t.device().same_device(down.device()), arg, || {
        "must be on the same candle device as `down`".into()
    })?;
    ensure(t.dtype().is_float(), arg, || {
        format!("has dtype {:?}, must be a float type", t.dtype())
    })?;
    check_shape(t, arg, dims)
}

/// Wraps [`CudaSlice`] outputs of the views API as candle tensors, for callers that mix both.
pub fn tensor_from_slice<T: CudaDType>(
    slice: CudaSlice<T>,
    device: &Device,
    dims: (usize, usize),
) -> Result<Tensor> {
    let d = cuda_device(device, "device")?;
    ensure(
        dims.0.checked_mul(dims.1) == Some(slice.len()),
        "dims",
        || format!("{dims:?} is not the slice's {} elements", slice.len()),
    )?;
    Ok(into_tensor(slice, d, dims))
}
