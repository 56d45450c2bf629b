//! The Hopper MoE backend (feature `cuda`): every MoE layer is flashinfer-rs's CUTLASS fused
//! MoE (`cutlass::CutlassMoe`) on an sm_90 GPU, called through `flashinfer_rs::candle`, its
//! router's ids written by the kernels straight into a device `CaptureStore` (the zero-copy
//! path the crate exists for), and read back once per step in [`MoeBackend::finish_step`].
//!
//! The model's `Device` is the backend's (one candle device, one stream): a model on the GPU
//! hands its bf16 rows over as they are (no copy); a CPU model's rows are copied over and
//! back.
//!
//! Per step: layer 0's call begins the store's step, each layer routes into its views, and
//! `finish_step` ends the step, collects its rows (one device-to-host copy) and lays them
//! into the step's `StepCapture`; a step no request wants rows of
//! ([`LayerCapture::wanted`]) neither captures nor reads back. The router's logits are computed in f32 (candle's matmul on
//! the GPU), as the CPU backend computes them; the experts run in bf16.
//!
//! Batch-invariant (a model on the CPU): the router's logits are the CPU backend's (f32, row
//! by row, then copied over) and every layer runs `CutlassSchedule::BatchInvariant`, so a
//! request's tokens and routed experts do not depend on what else is in its steps.
//!
//! A fine-grained fp8 checkpoint's experts run in fp8 where [`MoeWeights`] says so (its
//! `Auto` does wherever the blocks are 128x128): the codes and their block scales go to the GPU
//! as they are (GEMM 1's rows and scale rows up first, by the library's
//! `cutlass_block_weights`) and every layer is the block-scale layer
//! (`CutlassMoe::fp8_blocks_with_schedule`).

use std::sync::{Arc, Mutex};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use flashinfer_rs::candle::{
    cuda_stream, cutlass_block_weights, cutlass_weights, Fc1, TensorRouting,
};
use flashinfer_rs::capture::{CaptureConfig, CaptureStore, LayerViews, StepLayout};
use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream};
use flashinfer_rs::cutlass::{
    CutlassBlockScales, CutlassMoe, CutlassMoeConfig, CutlassSchedule, CutlassWeights,
    CutlassWorkspace,
};
use flashinfer_rs::fused::E4m3;

use super::{
    layer_of, LayerCapture, LayerLoader, MoeBackend, MoeLayerWeights, MoeSpec, MoeWeights,
    StepCapture,
};
use crate::model::ops::linear;

struct HopperLayer {
    /// Router `[experts, hidden]`, f32: on the GPU, or on the CPU when batch-invariant.
    router: Tensor,
    experts: Experts,
}

/// A layer's experts: bf16, or e4m3 with their 128x128 block scales.
enum Experts {
    Bf16(CutlassMoe),
    Fp8(CutlassMoe<CudaSlice<E4m3>>),
}

impl Experts {
    fn workspace(&self, stream: &Arc<CudaStream>) -> flashinfer_rs::Result<CutlassWorkspace> {
        match self {
            Experts::Bf16(m) => m.workspace(stream),
            Experts::Fp8(m) => m.workspace(stream),
        }
    }

    fn forward_tensor(
        &self,
        workspace: &mut CutlassWorkspace,
        hidden: &Tensor,
        routing: TensorRouting<'_>,
        capture: Option<LayerViews<'_>>,
    ) -> flashinfer_rs::Result<Tensor> {
        match self {
            Experts::Bf16(m) => m.forward_tensor(workspace, hidden, routing, capture),
            Experts::Fp8(m) => m.forward_tensor(workspace, hidden, routing, capture),
        }
    }
}

/// The block-scale layer's weights from a layer's fp8 codes and block scales (any device),
/// arranged on `device` by flashinfer-rs's `cutlass_block_weights` (GEMM 1's code rows and
/// scale rows up first).
fn fp8_weights(
    w: &MoeLayerWeights,
    device: &Device,
) -> Result<(CutlassWeights<CudaSlice<E4m3>>, CutlassBlockScales)> {
    let s = w
        .scales
        .as_ref()
        .context("fp8 experts without their scales")?;
    let on = |t: &Tensor| t.to_device(device);
    let (gate, up, down) = (on(&w.gate)?, on(&w.up)?, on(&w.down)?);
    let (gate_s, up_s, down_s) = (on(&s.gate)?, on(&s.up)?, on(&s.down)?);
    Ok(cutlass_block_weights(
        Fc1::GateUp {
            gate: &gate,
            up: &up,
        },
        Fc1::GateUp {
            gate: &gate_s,
            up: &up_s,
        },
        &down,
        &down_s,
    )?)
}

/// What one step changes: the layers' shared workspace and the capture store.
struct StepState {
    workspace: CutlassWorkspace,
    store: CaptureStore,
    /// The step begun by MoE layer 0 (`None` between steps): its rows, and whether they are
    /// captured (a step no request asked routed experts of writes no store).
    open: Option<(usize, bool)>,
}

/// flashinfer-rs's Hopper layer for every MoE layer of a model, on one GPU.
pub struct HopperMoe {
    spec: MoeSpec,
    device: Device,
    stream: Arc<CudaStream>,
    max_tokens: usize,
    batch_invariant: bool,
    layers: Vec<HopperLayer>,
    state: Mutex<StepState>,
}

impl HopperMoe {
    /// Builds one `CutlassMoe` per MoE layer on `device` (a CUDA device: the model's own when
    /// the model is on one, so both share candle's stream) for steps of up to
    /// `max_tokens` rows. Each layer's checkpoint tensors come from `load` (any float dtype,
    /// any device; moved to `device` if elsewhere), are prepared there (bf16, up rows first)
    /// and dropped before the next layer is loaded; a fine-grained fp8 checkpoint's experts
    /// stay e4m3 where `weights` says so (every layer alike). `batch_invariant` (for a model
    /// on the CPU, whose rows come from the host): the routers stay on the host and every
    /// layer runs `CutlassSchedule::BatchInvariant`.
    pub fn new(
        spec: MoeSpec,
        weights: MoeWeights,
        device: &Device,
        max_tokens: usize,
        batch_invariant: bool,
        load: &mut LayerLoader<'_>,
    ) -> Result<Self> {
        let schedule = if batch_invariant {
            CutlassSchedule::BatchInvariant
        } else {
            CutlassSchedule::Fastest
        };
        let stream = cuda_stream(device).context("the Hopper backend's device")?;
        let config = CutlassMoeConfig {
            routing: spec.routing(),
            hidden_size: spec.hidden,
            intermediate_size: spec.intermediate,
            max_tokens,
        };
        let mut built = Vec::with_capacity(spec.layers);
        let mut fp8_layers = None;
        for l in 0..spec.layers {
            let w = load(l).with_context(|| format!("MoE layer {l}: loading"))?;
            let fp8 = w.runs_fp8(l, weights, true)?;
            ensure!(
                *fp8_layers.get_or_insert(fp8) == fp8,
                "MoE layer {l} runs {} where layer 0 runs {}: one format for every layer",
                if fp8 { "fp8" } else { "bf16" },
                if fp8 { "bf16" } else { "fp8" }
            );
            let router = if batch_invariant {
                w.router.to_device(&Device::Cpu)?
            } else {
                w.router.to_device(device)?
            }
            .to_dtype(DType::F32)?;
            let experts = if fp8 {
                let (codes, scales) = fp8_weights(&w, device)
                    .with_context(|| format!("MoE layer {l}: fp8 weights"))?;
                drop(w);
                Experts::Fp8(
                    CutlassMoe::fp8_blocks_with_schedule(config, codes, scales, schedule)
                        .with_context(|| format!("MoE layer {l}: the block-scale Hopper layer"))?,
                )
            } else {
                let w = w.dequantized()?;
                let on = |t: &Tensor| t.to_device(device);
                let (gate, up, down) = (on(&w.gate)?, on(&w.up)?, on(&w.down)?);
                let prepared = cutlass_weights(
                    Fc1::GateUp {
                        gate: &gate,
                        up: &up,
                    },
                    &down,
                )
                .with_context(|| format!("MoE layer {l}: weights"))?;
                // The checkpoint's tensors (and their device copies) go before the next
                // layer's come: the layer keeps only its own prepared copy.
                drop((w, gate, up, down));
                Experts::Bf16(
                    CutlassMoe::with_schedule(config, prepared, schedule)
                        .with_context(|| format!("MoE layer {l}: the Hopper layer"))?,
                )
            };
            built.push(HopperLayer { router, experts });
        }
        let first = built.first().context("a model with no MoE layer")?;
        let workspace = first.experts.workspace(&stream)?;
        let store = CaptureStore::new(
            &stream,
            CaptureConfig::new(spec.layers, max_tokens, spec.top_k).with_weights(true),
        )?;
        Ok(HopperMoe {
            spec,
            device: device.clone(),
            stream,
            max_tokens,
            batch_invariant,
            layers: built,
            state: Mutex::new(StepState {
                workspace,
                store,
                open: None,
            }),
        })
    }

    fn state(&self) -> Result<std::sync::MutexGuard<'_, StepState>> {
        self.state
            .lock()
            .map_err(|_| anyhow::anyhow!("a step panicked while it held the Hopper backend"))
    }
}

impl MoeBackend for HopperMoe {
    fn name(&self) -> &'static str {
        match self.layers.first().map(|l| &l.experts) {
            Some(Experts::Fp8(_)) => "hopper-fp8",
            _ => "hopper",
        }
    }

    fn spec(&self) -> &MoeSpec {
        &self.spec
    }

    fn forward(
        &self,
        moe_layer: usize,
        hidden: &Tensor,
        capture: LayerCapture<'_>,
    ) -> Result<Tensor> {
        let layer = layer_of(&self.layers, moe_layer)?;
        let tokens = self.spec.rows_of(hidden)?;
        ensure!(
            tokens <= self.max_tokens,
            "a step of {tokens} rows, the Hopper backend was built for {}",
            self.max_tokens
        );
        let mut state = self.state()?;
        let state = &mut *state;
        if moe_layer == 0 {
            if let Some((_, captured)) = state.open.take() {
                // The step before failed between its layers: close it and drop its rows, so
                // one failed step does not stop every step after it.
                tracing::warn!("dropping the rows of a step that failed midway");
                if captured {
                    state.store.end_step(&self.stream)?;
                    state.store.collect()?;
                }
            }
            if capture.wanted {
                state
                    .store
                    .begin_step(&self.stream, StepLayout::single(tokens))?;
            }
            state.open = Some((tokens, capture.wanted));
        }
        ensure!(
            state.open == Some((tokens, capture.wanted)),
            "MoE layer {moe_layer}: {tokens} rows (capture {}) in a step begun with {:?}",
            capture.wanted,
            state.open
        );
        // On the model's device already (the GPU model): no copy; a CPU model's rows go over
        // and back.
        let x = hidden.to_device(&self.device)?;
        let logits = if self.batch_invariant {
            // The CPU backend's logits: row by row on the host, whatever the batch.
            linear(&hidden.to_dtype(DType::F32)?, &layer.router)?.to_device(&self.device)?
        } else {
            x.to_dtype(DType::F32)?.matmul(&layer.router.t()?)?
        };
        let views = if capture.wanted {
            Some(state.store.layer_views(moe_layer)?)
        } else {
            None
        };
        let y = layer.experts.forward_tensor(
            &mut state.workspace,
            &x.to_dtype(DType::BF16)?.contiguous()?,
            TensorRouting::Logits {
                logits: &logits,
                bias: None,
            },
            views,
        )?;
        Ok(y.to_dtype(hidden.dtype())?.to_device(hidden.device())?)
    }

    fn finish_step(&self, capture: &mut StepCapture) -> Result<()> {
        let mut state = self.state()?;
        let Some((tokens, captured)) = state.open.take() else {
            bail!("finish_step without a step: no MoE layer ran");
        };
        if !captured {
            // Nobody asked: the rows stay unknown, nothing was written or is read back.
            return Ok(());
        }
        state.store.end_step(&self.stream)?;
        let buffer = state
            .store
            .take_oldest()
            .context("the step just ended is in flight")?;
        // The rows land layer-major, as the step capture holds them: one copy, no transpose
        // (the store's `collect` would make them token-major first).
        let copied = buffer.rows().map_err(anyhow::Error::from).and_then(|rows| {
            ensure!(
                capture.tokens() == tokens
                    && rows.tokens == tokens
                    && rows.layers == capture.layers()
                    && rows.top_k == capture.top_k(),
                "step of {tokens} rows, capture of {}, read back {}x{}x{}",
                capture.tokens(),
                rows.tokens,
                rows.layers,
                rows.top_k
            );
            let (ids, weights) = capture.ids_mut();
            ids.copy_from_slice(rows.ids);
            if let (Some(dst), Some(src)) = (weights, rows.weights) {
                dst.copy_from_slice(src);
            }
            Ok(())
        });
        state
            .store
            .recycle(buffer)
            .map_err(flashinfer_rs::Error::from)?;
        copied
    }
}
