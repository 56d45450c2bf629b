//! The CPU MoE backend: flashinfer-rs's reference routing (`routing::oracle::route_topk`)
//! and reference experts (`fused::oracle`), in f32.
//!
//! The oracle's GEMM1 weights are `[experts, 2 * intermediate, hidden]` with each expert's up
//! rows first, then its gate rows (it computes `silu(gate) * up`), which is what
//! `cutlass::prepare::fc1_from_gate_up` makes from Hugging Face's `gate_proj` / `up_proj`.
//! `fused::oracle::moe` always rounds the activation between the GEMMs (bf16, fp8, mxfp8 or
//! nvfp4: `ActivationRounding` has no f32 case), so this backend takes the unrounded
//! activations from `fused::oracle::activations` and applies GEMM2 and the weighted sum
//! itself, in the oracle's order (per token, top-k order).
//!
//! A fine-grained fp8 layer run as fp8 ([`MoeWeights::Fp8`]) is the library's reference of
//! its block-scale Hopper layer instead: the hidden states rounded to bf16 (the layer's input
//! type) and quantised per 128 values (`round_fp8_groups`), the dequantized weights, GEMM 1
//! rounded to bf16, SwiGLU rounded to bf16 and quantised per 128 (`Fp8Groups128`).

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use flashinfer_rs::cutlass::prepare::fc1_from_gate_up;
use flashinfer_rs::fused::oracle::{self, ActivationRounding, ExpertWeights, ReferenceProblem};
use flashinfer_rs::fused::Activation;
use flashinfer_rs::routing::oracle::route_topk;
use flashinfer_rs::routing::RoutingConfig;

use super::{
    layer_of, LayerCapture, LayerLoader, MoeBackend, MoeLayerWeights, MoeSpec, MoeWeights,
};
use crate::model::ops::{linear, to_f32_vec};

struct CpuLayer {
    /// Router `[experts, hidden]`, f32.
    router: Tensor,
    /// The oracle's weights: `w1` up-then-gate rows per expert, `w2` = `down_proj`.
    experts: ExpertWeights,
    /// Run as the block-scale fp8 layer's reference (the weights are then its dequantized
    /// codes).
    fp8: bool,
}

/// MoE layer `l`'s checkpoint weights as the oracle takes them.
fn prepare(spec: &MoeSpec, l: usize, w: MoeLayerWeights, mode: MoeWeights) -> Result<CpuLayer> {
    let fp8 = w.runs_fp8(l, mode, false)?;
    let w = w.dequantized()?;
    let (e, i, h) = (spec.num_experts, spec.intermediate, spec.hidden);
    for (name, t, want) in [
        ("router", &w.router, &[e, h][..]),
        ("gate", &w.gate, &[e, i, h][..]),
        ("up", &w.up, &[e, i, h][..]),
        ("down", &w.down, &[e, h, i][..]),
    ] {
        ensure!(t.dims() == want, "MoE layer {l}: {name} {:?}", t.dims());
    }
    let w1 = fc1_from_gate_up(&to_f32_vec(&w.gate)?, &to_f32_vec(&w.up)?, e, i, h)?;
    Ok(CpuLayer {
        router: w.router.to_device(&Device::Cpu)?.to_dtype(DType::F32)?,
        experts: ExpertWeights {
            w1,
            w2: to_f32_vec(&w.down)?,
        },
        fp8,
    })
}

/// flashinfer-rs's CPU reference MoE, every layer of a model.
pub struct CpuMoe {
    spec: MoeSpec,
    routing: RoutingConfig,
    layers: Vec<CpuLayer>,
}

impl CpuMoe {
    /// Prepares `layers` (any float dtype, or fp8 codes, dequantized) for the oracle: f32,
    /// GEMM1 as up-then-gate rows.
    pub fn new(spec: MoeSpec, layers: Vec<MoeLayerWeights>) -> Result<Self> {
        ensure!(
            layers.len() == spec.layers,
            "{} MoE layers of weights for {} MoE layers",
            layers.len(),
            spec.layers
        );
        let mut layers = layers.into_iter();
        Self::load(spec, MoeWeights::Auto, &mut |_| {
            layers.next().context("no more MoE layers")
        })
    }

    /// As [`new`](Self::new), each layer from `load` (called once per layer, in order; what
    /// it returns is dropped once the layer is prepared), an fp8 checkpoint's layers as
    /// `mode` says.
    pub fn load(spec: MoeSpec, mode: MoeWeights, load: &mut LayerLoader<'_>) -> Result<Self> {
        let routing = spec.routing();
        routing.validate().context("the model's routing")?;
        let layers = (0..spec.layers)
            .map(|l| prepare(&spec, l, load(l)?, mode))
            .collect::<Result<Vec<_>>>()?;
        Ok(CpuMoe {
            spec,
            routing,
            layers,
        })
    }

    fn problem(&self, tokens: usize) -> ReferenceProblem {
        ReferenceProblem {
            num_tokens: tokens,
            hidden_size: self.spec.hidden,
            intermediate_size: self.spec.intermediate,
            top_k: self.spec.top_k,
            local_expert_offset: 0,
            local_num_experts: self.spec.num_experts,
            activation: Activation::Swiglu,
            routing_scales_on_input: false,
        }
    }
}

impl MoeBackend for CpuMoe {
    fn name(&self) -> &'static str {
        "cpu"
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
        let (k, h) = (self.spec.top_k, self.spec.hidden);
        ensure!(
            capture.ids.len() == tokens * k,
            "capture rows do not match the step"
        );
        let x = hidden.to_dtype(DType::F32)?;
        // Router logits in f32, row by row (batch-invariant), then the reference routing.
        let logits = to_f32_vec(&linear(&x, &layer.router)?)?;
        let routed = route_topk(&self.routing, &logits, None, tokens)?;
        capture.ids.copy_from_slice(&routed.ids);
        if let Some(w) = capture.weights {
            w.copy_from_slice(&routed.weights);
        }
        let ids: Vec<usize> = routed.ids.iter().map(|&i| i as usize).collect();
        let p = self.problem(tokens);
        let out = if layer.fp8 {
            // The block-scale layer's input: bf16, quantised per token and 128 values.
            let xs = to_f32_vec(&x.to_dtype(DType::BF16)?)?;
            let xq: Vec<f32> = xs.chunks(h).flat_map(oracle::round_fp8_groups).collect();
            let rounding = ActivationRounding::Fp8Groups128;
            oracle::moe(&p, &xq, &ids, &routed.weights, &layer.experts, rounding)?
        } else {
            let xs = to_f32_vec(&x)?;
            let acts = oracle::activations(&p, &xs, &ids, &routed.weights, &layer.experts)?;
            combine(&p, &ids, &routed.weights, &layer.experts.w2, acts)?
        };
        Ok(Tensor::from_vec(out, (tokens, h), hidden.device())?.to_dtype(hidden.dtype())?)
    }
}

/// GEMM2 of every routed (token, k) pair and the weighted sum, as `fused::oracle::moe` does
/// without rounding the activation: `out[t] += weight[t, k] * (down[e] @ act[t, k])`.
fn combine(
    p: &ReferenceProblem,
    ids: &[usize],
    weights: &[f32],
    w2: &[f32],
    acts: Vec<Vec<f32>>,
) -> Result<Vec<f32>> {
    let (h, i) = (p.hidden_size, p.intermediate_size);
    ensure!(
        acts.len() == p.num_tokens * p.top_k,
        "one activation per routed pair"
    );
    let mut out = vec![0f32; p.num_tokens * h];
    for (pair, act) in acts.iter().enumerate() {
        let (t, e) = (pair / p.top_k, ids[pair]);
        let s = weights[pair];
        let down = &w2[e * h * i..(e + 1) * h * i];
        for (o, row) in out[t * h..(t + 1) * h].iter_mut().zip(down.chunks_exact(i)) {
            let y: f32 = row.iter().zip(act).map(|(a, b)| a * b).sum();
            *o += s * y;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::moe::StepCapture;

    fn tensor(n: usize, shape: &[usize], seed: u64) -> Tensor {
        let mut rng = flashinfer_rs::routing::oracle::SplitMix64(seed);
        let v: Vec<f32> = (0..n).map(|_| rng.unit() as f32 - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// One renormalising layer of `e` experts, top-`k`, hidden `h`, intermediate `i`.
    fn spec(e: usize, k: usize, h: usize, i: usize) -> MoeSpec {
        MoeSpec {
            layers: 1,
            num_experts: e,
            top_k: k,
            hidden: h,
            intermediate: i,
            norm_topk_prob: true,
        }
    }

    /// The backend equals Hugging Face's Qwen3MoeSparseMoeBlock written out naively.
    #[test]
    fn matches_a_naive_qwen3_moe_block() {
        let (e, k, h, i, t) = (8, 2, 6, 4, 5);
        let spec = spec(e, k, h, i);
        let w = MoeLayerWeights {
            router: tensor(e * h, &[e, h], 1),
            gate: tensor(e * i * h, &[e, i, h], 2),
            up: tensor(e * i * h, &[e, i, h], 3),
            down: tensor(e * h * i, &[e, h, i], 4),
            scales: None,
        };
        let x = tensor(t * h, &[t, h], 5);
        let moe = CpuMoe::new(spec, vec![w.clone()]).unwrap();
        let mut cap = StepCapture::new(t, 1, k, true);
        let y = to_f32_vec(&moe.forward(0, &x, cap.layer(0).unwrap()).unwrap()).unwrap();
        let (xs, r) = (to_f32_vec(&x).unwrap(), to_f32_vec(&w.router).unwrap());
        let (g, u, d) = (
            to_f32_vec(&w.gate).unwrap(),
            to_f32_vec(&w.up).unwrap(),
            to_f32_vec(&w.down).unwrap(),
        );
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
        for tok in 0..t {
            let xr = &xs[tok * h..(tok + 1) * h];
            let logits: Vec<f32> = (0..e).map(|ex| dot(&r[ex * h..(ex + 1) * h], xr)).collect();
            let mut order: Vec<usize> = (0..e).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            let chosen = &order[..k];
            assert_eq!(
                &cap.ids()[tok * k..(tok + 1) * k],
                chosen
                    .iter()
                    .map(|&c| c as i16)
                    .collect::<Vec<_>>()
                    .as_slice()
            );
            let z: f32 = chosen.iter().map(|&c| logits[c].exp()).sum();
            for c in 0..h {
                let mut want = 0f32;
                for &ex in chosen {
                    let act: Vec<f32> = (0..i)
                        .map(|j| {
                            let gv = dot(&g[(ex * i + j) * h..][..h], xr);
                            let uv = dot(&u[(ex * i + j) * h..][..h], xr);
                            gv / (1.0 + (-gv).exp()) * uv
                        })
                        .collect();
                    want += logits[ex].exp() / z * dot(&d[(ex * h + c) * i..][..i], &act);
                }
                assert!(
                    (y[tok * h + c] - want).abs() < 1e-5,
                    "{} vs {want}",
                    y[tok * h + c]
                );
            }
        }
    }

    /// An fp8 layer run as fp8 (the block-scale layer's reference: inputs of both GEMMs
    /// quantised per 128 values) differs from the same codes dequantized by the activations'
    /// e4m3 rounding only (a few percent of the output's norm, measured 4.4%: e4m3 keeps 3
    /// mantissa bits), and routes the same: the router reads the unquantised rows.
    #[test]
    fn fp8_experts_stay_within_activation_rounding() {
        use super::super::ExpertScales;
        use crate::model::weights::quantize_blocks;
        let (e, k, h, i, t) = (8, 2, 256, 128, 32);
        let spec = spec(e, k, h, i);
        // Each [experts, rows, cols] tensor as e4m3 codes and its 128x128 block scales.
        let quantised = |rows: usize, cols: usize, seed: u64| {
            quantize_blocks(&tensor(e * rows * cols, &[e, rows, cols], seed)).unwrap()
        };
        let (gate, gate_s) = quantised(i, h, 2);
        let (up, up_s) = quantised(i, h, 3);
        let (down, down_s) = quantised(h, i, 4);
        let w = MoeLayerWeights {
            router: tensor(e * h, &[e, h], 1),
            gate,
            up,
            down,
            scales: Some(ExpertScales {
                gate: gate_s,
                up: up_s,
                down: down_s,
                block: (128, 128),
            }),
        };
        let x = (tensor(t * h, &[t, h], 5) * 4.0).unwrap();
        let run = |mode| {
            let moe = CpuMoe::load(spec, mode, &mut |_| Ok(w.clone())).unwrap();
            let mut cap = StepCapture::new(t, 1, k, true);
            let y = to_f32_vec(&moe.forward(0, &x, cap.layer(0).unwrap()).unwrap()).unwrap();
            (y, cap.ids().to_vec())
        };
        let (exact, exact_ids) = run(MoeWeights::Dequantized);
        let (w8a8, ids) = run(MoeWeights::Fp8);
        assert_eq!(
            ids, exact_ids,
            "the router reads the unquantised hidden states"
        );
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|a| a * a).sum::<f32>().sqrt();
        let diff = norm(&mut exact.iter().zip(&w8a8).map(|(a, b)| a - b));
        let rel = diff / norm(&mut exact.iter().copied());
        eprintln!("w8a8 against dequantized: relative error {rel}");
        assert!(rel > 1e-3 && rel < 0.08, "relative error {rel}");
    }
}
