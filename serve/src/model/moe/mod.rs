//! The MoE block behind one door: [`MoeBackend`] runs one MoE layer (router + experts) over
//! all tokens of a step and writes their routed experts into the step's [`StepCapture`].
//!
//! The model never looks inside a backend: the CPU reference ([`cpu::CpuMoe`], built on
//! flashinfer-rs's routing and MoE oracles) and a GPU backend (flashinfer-rs's Hopper
//! `CutlassMoe`, feature `cuda`) plug in the same way, through [`build_backend`].

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod hopper;

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use candle_core::{Device, Tensor};
use flashinfer_rs::capture::{LayerMajorRows, StepRows, UNKNOWN};
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};

use super::device::{cuda_device, DeviceError};
use super::weights::dequantize_blocks;

/// The shape of every MoE layer of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MoeSpec {
    /// MoE layers (capture layers), in decoder order.
    pub layers: usize,
    /// Routed experts per layer.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Intermediate size of one expert.
    pub intermediate: usize,
    /// Qwen3-MoE's `norm_topk_prob`: renormalise the chosen probabilities.
    pub norm_topk_prob: bool,
}

impl MoeSpec {
    /// The rows of a step's `hidden` (`[tokens, hidden]`), its width checked against the
    /// layers'.
    pub fn rows_of(&self, hidden: &Tensor) -> Result<usize> {
        let (tokens, h) = hidden.dims2()?;
        ensure!(
            h == self.hidden,
            "hidden {h}, the layer has {}",
            self.hidden
        );
        Ok(tokens)
    }

    /// The routing this spec means, as flashinfer-rs names it: softmax, top-k, renormalise is
    /// `Renormalize`; without renormalisation it is `Default`.
    pub fn routing(&self) -> RoutingConfig {
        let method = if self.norm_topk_prob {
            RoutingMethod::Renormalize
        } else {
            RoutingMethod::Default
        };
        RoutingConfig::new(method, self.num_experts as u32, self.top_k as u32)
    }
}

/// One MoE layer's weights as the checkpoint has them (any float dtype, or e4m3 codes with
/// their block scales, on the host).
#[derive(Debug, Clone)]
pub struct MoeLayerWeights {
    /// Router `mlp.gate.weight`, `[experts, hidden]`.
    pub router: Tensor,
    /// Each expert's `gate_proj`, stacked: `[experts, intermediate, hidden]`.
    pub gate: Tensor,
    /// Each expert's `up_proj`, stacked: `[experts, intermediate, hidden]`.
    pub up: Tensor,
    /// Each expert's `down_proj`, stacked: `[experts, hidden, intermediate]`.
    pub down: Tensor,
    /// A fine-grained fp8 checkpoint's block scales: with them, `gate`, `up` and `down` are
    /// e4m3 codes.
    pub scales: Option<ExpertScales>,
}

/// The `weight_scale_inv` of a fine-grained fp8 layer's experts, stacked as their codes are:
/// a weight is its code times its block's scale.
#[derive(Debug, Clone)]
pub struct ExpertScales {
    /// `gate_proj`'s, `[experts, ceil(intermediate / rows), ceil(hidden / cols)]`.
    pub gate: Tensor,
    /// `up_proj`'s, as `gate`'s.
    pub up: Tensor,
    /// `down_proj`'s, `[experts, ceil(hidden / rows), ceil(intermediate / cols)]`.
    pub down: Tensor,
    /// A block's rows and columns (`weight_block_size`).
    pub block: (usize, usize),
}

/// How a fine-grained fp8 checkpoint's experts run (`--moe-weights`). A float checkpoint's
/// experts run as they are under `Auto` and `Dequantized`; `Fp8` refuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum MoeWeights {
    /// fp8 on the Hopper backend wherever the layer takes the checkpoint's blocks, else
    /// dequantized; dequantized on the CPU backend.
    #[default]
    Auto,
    /// Each code times its block's scale, the experts then run as float weights (bf16 on
    /// the Hopper backend, f32 on the CPU): transformers' `dequantize=True`.
    Dequantized,
    /// e4m3 weights with their 128x128 block scales and the inputs of both GEMMs quantised
    /// per token and 128 values (w8a8, as vLLM, SGLang and DeepSeek-V3's reference run them):
    /// flashinfer-rs's block-scale Hopper layer, or on the CPU its reference
    /// (`fused::oracle`'s `Fp8Groups128`). Needs 128x128 blocks and hidden and intermediate
    /// sizes that are multiples of 128; half the experts' memory of `Dequantized` on a GPU.
    Fp8,
}

impl MoeLayerWeights {
    /// Whether MoE layer `l` runs as fp8 blocks: always under [`MoeWeights::Fp8`] (an error
    /// naming what is missing where it cannot), never under `Dequantized`, and under `Auto`
    /// where `backend_prefers` it (the Hopper backend) and it can.
    pub fn runs_fp8(&self, l: usize, mode: MoeWeights, backend_prefers: bool) -> Result<bool> {
        let why_not = match &self.scales {
            None => Some("its experts are not fp8 in the checkpoint".to_string()),
            Some(s) if s.block != (128, 128) => Some(format!(
                "its blocks are {}x{}, the block-scale layer's are 128x128",
                s.block.0, s.block.1
            )),
            Some(_) => {
                let (i, h) = (self.gate.dim(1)?, self.gate.dim(2)?);
                (!(i.is_multiple_of(128) && h.is_multiple_of(128))).then(|| {
                    format!("intermediate {i} and hidden {h} are not both multiples of 128")
                })
            }
        };
        match (mode, why_not) {
            (MoeWeights::Dequantized, _) => Ok(false),
            (MoeWeights::Fp8, Some(why)) => {
                anyhow::bail!("--moe-weights fp8: MoE layer {l} cannot run in fp8: {why}")
            }
            (MoeWeights::Fp8, None) => Ok(true),
            (MoeWeights::Auto, why) => Ok(backend_prefers && why.is_none()),
        }
    }

    /// The weights as floats: fp8 codes times their blocks' scales (f32); float weights as
    /// they are.
    pub fn dequantized(self) -> Result<MoeLayerWeights> {
        let Some(s) = self.scales else {
            return Ok(self);
        };
        let deq = |codes: &Tensor, scales: &Tensor, what: &str| {
            dequantize_blocks(codes, scales, s.block)
                .with_context(|| format!("dequantising {what}"))
        };
        Ok(MoeLayerWeights {
            router: self.router,
            gate: deq(&self.gate, &s.gate, "gate_proj")?,
            up: deq(&self.up, &s.up, "up_proj")?,
            down: deq(&self.down, &s.down, "down_proj")?,
            scales: None,
        })
    }
}

/// Where one MoE layer writes the routing of a step's tokens: row `t` of the step's batch is
/// `ids[t * top_k..][..top_k]`, best first.
#[derive(Debug)]
pub struct LayerCapture<'a> {
    /// `[tokens, top_k]` expert ids (logical ids, in `[0, num_experts)`).
    pub ids: &'a mut [i16],
    /// `[tokens, top_k]` routing weights of those ids, when the step captures weights.
    pub weights: Option<&'a mut [f32]>,
    /// Whether any row of the step is wanted (some request asked for its routed experts): a
    /// backend that captures on the device may skip the capture when not.
    pub wanted: bool,
}

/// One step's routed experts for all MoE layers, layer-major: layer `l`'s rows are one
/// contiguous `[tokens, top_k]` block, the layout of flashinfer-rs's `CaptureStore` layer
/// views on the GPU. Rows no layer wrote stay [`UNKNOWN`] (-1), never expert 0.
#[derive(Debug, Clone, PartialEq)]
pub struct StepCapture {
    tokens: usize,
    layers: usize,
    top_k: usize,
    ids: Vec<i16>,
    weights: Option<Vec<f32>>,
    wanted: bool,
}

impl StepCapture {
    /// An empty capture of `tokens` rows (every id [`UNKNOWN`], every weight NaN).
    pub fn new(tokens: usize, layers: usize, top_k: usize, with_weights: bool) -> Self {
        let n = tokens * layers * top_k;
        StepCapture {
            tokens,
            layers,
            top_k,
            ids: vec![UNKNOWN; n],
            weights: with_weights.then(|| vec![f32::NAN; n]),
            wanted: true,
        }
    }

    /// Marks the step's rows as wanted or not (default: wanted). The engine clears it for a
    /// step with no request that asked for routed experts; a device backend then neither
    /// captures nor reads back, and the rows stay [`UNKNOWN`].
    pub fn set_wanted(&mut self, wanted: bool) {
        self.wanted = wanted;
    }

    /// Whether the step's rows are wanted.
    pub fn wanted(&self) -> bool {
        self.wanted
    }

    /// Rows of the step.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// MoE layers.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// Experts per token.
    pub fn top_k(&self) -> usize {
        self.top_k
    }

    /// MoE layer `layer`'s rows, for its backend to write.
    pub fn layer(&mut self, layer: usize) -> Result<LayerCapture<'_>> {
        ensure!(layer < self.layers, "MoE layer {layer} of {}", self.layers);
        let span = layer * self.tokens * self.top_k..(layer + 1) * self.tokens * self.top_k;
        Ok(LayerCapture {
            ids: &mut self.ids[span.clone()],
            weights: self.weights.as_mut().map(|w| &mut w[span]),
            wanted: self.wanted,
        })
    }

    /// The whole step, layer-major: `ids[(layer * tokens + row) * top_k + k]`.
    pub fn ids(&self) -> &[i16] {
        &self.ids
    }

    /// The weights, same layout as [`ids`](Self::ids), when captured.
    pub fn weights(&self) -> Option<&[f32]> {
        self.weights.as_deref()
    }

    /// Mutable access for a backend that fills the whole step at once (a device readback).
    pub fn ids_mut(&mut self) -> (&mut [i16], Option<&mut [f32]>) {
        (&mut self.ids, self.weights.as_deref_mut())
    }

    /// The step as the assembler takes it straight from the device layout
    /// ([`Assembler::push_layer_major`](flashinfer_rs::capture::Assembler::push_layer_major)).
    pub fn as_layer_major(&self) -> LayerMajorRows<'_> {
        LayerMajorRows {
            tokens: self.tokens,
            layers: self.layers,
            top_k: self.top_k,
            ids: &self.ids,
            weights: self.weights.as_deref(),
        }
    }

    /// The step token-major, as [`StepRows`]: `ids[(row * layers + layer) * top_k + k]`.
    pub fn to_step_rows(&self) -> StepRows {
        let (t, l, k) = (self.tokens, self.layers, self.top_k);
        let gather = |row: usize, layer: usize| (layer * t + row) * k;
        let mut ids = Vec::with_capacity(self.ids.len());
        let mut weights = self
            .weights
            .as_ref()
            .map(|_| Vec::with_capacity(self.ids.len()));
        for row in 0..t {
            for layer in 0..l {
                let at = gather(row, layer);
                ids.extend_from_slice(&self.ids[at..at + k]);
                if let (Some(w), Some(src)) = (weights.as_mut(), self.weights.as_ref()) {
                    w.extend_from_slice(&src[at..at + k]);
                }
            }
        }
        StepRows {
            tokens: t,
            layers: l,
            top_k: k,
            ids,
            weights,
        }
    }
}

/// One MoE block implementation for every MoE layer of a model.
///
/// Contract, per step: the model calls [`forward`](Self::forward) once per MoE layer, in
/// decoder order, with the step's whole batch (`[tokens, hidden]`, every request's rows
/// concatenated: prefill chunks and decode tokens alike), then
/// [`finish_step`](Self::finish_step) once. A backend writes each token's top-k expert ids
/// (best first) and, where asked, their weights into `capture` during `forward`, or keeps
/// them in its own store (a device capture store) and copies them in `finish_step`.
pub trait MoeBackend: Send + Sync {
    /// Short name, for logs and `/metrics`.
    fn name(&self) -> &'static str;

    /// The layers this backend serves.
    fn spec(&self) -> &MoeSpec;

    /// Runs MoE layer `moe_layer` (0-based among MoE layers) over `hidden` (`[tokens, hidden]`)
    /// and returns its output, same shape and device as `hidden`.
    fn forward(
        &self,
        moe_layer: usize,
        hidden: &Tensor,
        capture: LayerCapture<'_>,
    ) -> Result<Tensor>;

    /// Called once after the step's last MoE layer: a backend whose ids land elsewhere first
    /// (a device store) makes `capture` whole here. The CPU backend has nothing to do.
    fn finish_step(&self, capture: &mut StepCapture) -> Result<()> {
        let _ = capture;
        Ok(())
    }
}

/// A backend's MoE layer `moe_layer`, or an error naming how many it has.
fn layer_of<T>(layers: &[T], moe_layer: usize) -> Result<&T> {
    layers
        .get(moe_layer)
        .with_context(|| format!("MoE layer {moe_layer} of {}", layers.len()))
}

/// Which MoE backend serves the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// flashinfer-rs's CPU oracle (f32): always available.
    Cpu,
    /// flashinfer-rs's Hopper CUTLASS MoE layer (needs the `cuda` feature and an sm_90 GPU).
    Hopper,
    /// Hopper where built and present, else the CPU.
    Auto,
}

/// Loads MoE layer `i`'s weights (0-based among MoE layers), on the host or on the model's
/// device: a backend calls it once per layer, in order, prepares its own copy and drops what
/// it was given before asking for the next, so at most one layer's checkpoint tensors live
/// at a time.
pub type LayerLoader<'a> = dyn FnMut(usize) -> Result<MoeLayerWeights> + 'a;

/// Builds the backend `kind` for `spec`, the model on `device`, its layers from `load`, a
/// fine-grained fp8 checkpoint's experts as `weights` says.
///
/// `Auto` is the Hopper layer when this is a `cuda` build and a CUDA device opens (the
/// model's own when it is on one), else the CPU oracle; once chosen, a failure is an error
/// (no silent fallback with half a model loaded). A model on a CUDA device takes only the
/// Hopper backend ([`DeviceError::CpuBackendOnGpu`]). Under a model on the CPU (batch-invariant
/// by design) the Hopper backend is batch-invariant too (`hopper::HopperMoe::new`).
pub fn build_backend(
    kind: BackendKind,
    spec: MoeSpec,
    weights: MoeWeights,
    device: &Device,
    load: &mut LayerLoader<'_>,
) -> Result<Arc<dyn MoeBackend>> {
    ensure!(spec.layers > 0, "a model with no MoE layer");
    let gpu = match (kind, device) {
        (BackendKind::Cpu, Device::Cpu) => None,
        (BackendKind::Cpu, _) => return Err(DeviceError::CpuBackendOnGpu.into()),
        (_, Device::Cpu) if kind == BackendKind::Hopper => Some(cuda_device()?),
        (_, Device::Cpu) => match cuda_device().map_err(anyhow::Error::from).and_then(|d| {
            ensure!(
                hopper_supported(&d)?,
                "the GPU is not one the Hopper layer runs on"
            );
            Ok(d)
        }) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::info!("--backend auto: the CPU backend ({e:#})");
                None
            }
        },
        (_, d) => Some(d.clone()),
    };
    match gpu {
        None => Ok(Arc::new(cpu::CpuMoe::load(spec, weights, load)?)),
        Some(d) => hopper(spec, weights, &d, device.is_cpu(), load),
    }
}

/// The most rows a step may hand the GPU backend: its layers' workspace and its capture
/// store are sized for this once (the server refuses a larger `--max-batch-tokens`).
pub const GPU_MAX_STEP_TOKENS: usize = 8192;

/// Whether this build's CUTLASS MoE runs on `device` (an sm_90 GPU).
#[cfg(feature = "cuda")]
fn hopper_supported(device: &Device) -> Result<bool> {
    let stream = flashinfer_rs::candle::cuda_stream(device)?;
    Ok(flashinfer_rs::device_info(stream.context())?.cutlass_moe_supported)
}

#[cfg(not(feature = "cuda"))]
fn hopper_supported(device: &Device) -> Result<bool> {
    let _ = device;
    Ok(false)
}

/// flashinfer-rs's Hopper layer for every MoE layer, on `device` (a CUDA device).
#[cfg(feature = "cuda")]
fn hopper(
    spec: MoeSpec,
    weights: MoeWeights,
    device: &Device,
    batch_invariant: bool,
    load: &mut LayerLoader<'_>,
) -> Result<Arc<dyn MoeBackend>> {
    Ok(Arc::new(hopper::HopperMoe::new(
        spec,
        weights,
        device,
        GPU_MAX_STEP_TOKENS,
        batch_invariant,
        load,
    )?))
}

#[cfg(not(feature = "cuda"))]
fn hopper(
    spec: MoeSpec,
    weights: MoeWeights,
    device: &Device,
    batch_invariant: bool,
    load: &mut LayerLoader<'_>,
) -> Result<Arc<dyn MoeBackend>> {
    let _ = (spec, weights, device, batch_invariant, load);
    Err(DeviceError::CudaNotBuilt.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_major_view_regroups_layer_major_rows() {
        let mut c = StepCapture::new(2, 2, 1, true);
        c.layer(0).unwrap().ids.copy_from_slice(&[1, 2]);
        c.layer(1).unwrap().ids.copy_from_slice(&[3, 4]);
        let rows = c.to_step_rows();
        assert_eq!(rows.ids, vec![1, 3, 2, 4]);
        assert_eq!(c.ids(), &[1, 2, 3, 4]);
        assert!(c.layer(2).is_err());
    }
}
