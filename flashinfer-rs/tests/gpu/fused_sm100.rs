//! The fused MoE on Blackwell (`bash scripts/test-sm100.sh` on a B200/GB200): bf16, fp8
//! per-tensor, DeepSeek fp8 and MxFp8 block-scale, nvfp4, and mxfp4 (bf16 or MX fp8
//! activations) over every routing method, against the CPU reference MoE (routing oracle +
//! dequantised expert math), with the replay invariants (ids = the routing oracle, sentinel rows
//! untouched, output bit-identical with and without replay); expert parallelism, unfinalized
//! outputs and a CUDA graph replay.
//!
//! On any other GPU these tests print `skipped:` and pass; `FLASHINFER_RS_REQUIRE_SM100=1`
//! turns the skip into a failure. Tolerances are upstream's (tests/moe/
//! test_trtllm_gen_fused_moe.py of FlashInfer 0.6.13, `get_tolerances`).
use std::sync::Arc;

use flashinfer_rs::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use flashinfer_rs::fused::oracle::{
    self as moe_oracle, ActivationRounding, ExpertWeights, ReferenceProblem,
};
use flashinfer_rs::fused::prepare::{
    interleave_scales, shuffle_block_scaled_weights, shuffle_expert_weights, EPILOGUE_TILE_M,
};
use flashinfer_rs::fused::{
    trtllm_bf16_moe, Activation, Bf16, Bf16Inputs, Bf16Weights, E4m3, Fp4Activations,
    Fp4BlockScale, Fp4BlockScaleInputs, Fp4BlockScaleWeights, Fp4Weights, Fp8Activations,
    Fp8BlockInputScale, Fp8BlockScale, Fp8BlockScaleInputs, Fp8BlockScaleWeights,
    Fp8BlockWeightScales, Fp8PerTensor, Fp8PerTensorInputs, Fp8PerTensorWeights, FusedMoe,
    MoeBatch, MoeConfig, MoeOptions, MoeRoutingInput, SwigluParams, Unfinalized, WeightLayout,
};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::{self, SplitMix64};
use flashinfer_rs::routing::{Logits, RoutingConfig, RoutingMethod};
use flashinfer_rs::ReplayView;

use crate::common::{gpu, Gpu};

const SENTINEL: i16 = -7;
const SPARE_ROWS: usize = 3;

/// The GPU, if it runs the fused MoE; else `None` after saying why (or a failure when
/// `FLASHINFER_RS_REQUIRE_SM100=1`).
fn sm100(test: &str) -> Option<Gpu> {
    let required = std::env::var("FLASHINFER_RS_REQUIRE_SM100").is_ok_and(|v| v == "1");
    let g = gpu(test);
    let supported = g
        .as_ref()
        .is_some_and(|g| flashinfer_rs::device_info(&g.ctx).unwrap().fused_supported);
    if !supported {
        assert!(
            !required,
            "FLASHINFER_RS_REQUIRE_SM100=1 but this machine cannot run the fused MoE ({test})"
        );
        eprintln!("skipped: {test}: needs an sm_100 GPU and an `sm100` build");
        return None;
    }
    g
}

fn uniform(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| bf16::from_f32((rng.unit() as f32 * 2.0 - 1.0) * scale).to_f32())
        .collect()
}

fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// Sizes of one case.
#[derive(Debug, Clone, Copy)]
struct Shape {
    num_tokens: usize,
    hidden_size: usize,
    intermediate_size: usize,
}

/// One problem's host data: routing (logits, bias, oracle) and f32 activations/weights.
struct Case {
    cfg: RoutingConfig,
    shape: Shape,
    activation: Activation,
    logits: Vec<f32>,
    bf16_logits: bool,
    bias: Option<Vec<f32>>,
    ids: Vec<usize>,
    weights: Vec<f32>,
    hidden: Vec<f32>,
    w: ExpertWeights,
}

impl Case {
    fn new(cfg: RoutingConfig, shape: Shape, seed: u64) -> Case {
        let bf16_logits = !matches!(cfg.method, RoutingMethod::DeepSeekV3 { .. });
        let (logits, bias) =
            oracle::separated_logits(&cfg, shape.num_tokens, bf16_logits, seed).unwrap();
        let routed = oracle::route(&cfg, &logits, bias.as_deref(), shape.num_tokens).unwrap();
        let mut rng = SplitMix64(seed ^ 0x5eed);
        let (h, i) = (shape.hidden_size, shape.intermediate_size);
        let el = cfg.local_num_experts as usize;
        Case {
            cfg,
            shape,
            activation: Activation::Swiglu,
            logits,
            bf16_logits,
            bias,
            ids: routed.ids.iter().map(|&x| x as usize).collect(),
            // The kernels carry routing weights in bf16.
            weights: routed
                .weights
                .iter()
                .map(|&x| bf16::from_f32(x).to_f32())
                .collect(),
            hidden: uniform(&mut rng, shape.num_tokens * h, 1.0),
            w: ExpertWeights {
                w1: uniform(&mut rng, el * 2 * i * h, 1.0 / (h as f32).sqrt()),
                w2: uniform(&mut rng, el * h * i, 1.0 / (i as f32).sqrt()),
            },
        }
    }

    /// The layer configuration of this case.
    fn config(&self, options: MoeOptions) -> MoeConfig {
        MoeConfig {
            routing: self.cfg,
            hidden_size: self.shape.hidden_size,
            intermediate_size: self.shape.intermediate_size,
            options,
        }
    }

    /// A batch of this case's tokens.
    fn batch<'a, P: flashinfer_rs::fused::Precision>(
        &self,
        routing: MoeRoutingInput<'a>,
        inputs: P::Inputs<'a>,
    ) -> MoeBatch<'a, P> {
        MoeBatch {
            num_tokens: self.shape.num_tokens,
            routing,
            inputs,
        }
    }

    /// The reference output for this case's own routing.
    fn reference(&self, routing_scales_on_input: bool, rounding: ActivationRounding) -> Vec<f32> {
        moe_oracle::moe(
            &self.problem(routing_scales_on_input),
            &self.hidden,
            &self.ids,
            &self.weights,
            &self.w,
            rounding,
        )
        .unwrap()
    }

    fn problem(&self, routing_scales_on_input: bool) -> ReferenceProblem {
        ReferenceProblem {
            num_tokens: self.shape.num_tokens,
            hidden_size: self.shape.hidden_size,
            intermediate_size: self.shape.intermediate_size,
            top_k: self.cfg.top_k as usize,
            local_expert_offset: self.cfg.local_expert_offset as usize,
            local_num_experts: self.cfg.local_num_experts as usize,
            activation: self.activation,
            routing_scales_on_input,
        }
    }
}

/// Device routing inputs of a case.
struct DeviceRouting {
    f32_logits: Option<CudaSlice<f32>>,
    bf16_logits: Option<CudaSlice<bf16>>,
    bias: Option<CudaSlice<f32>>,
}

impl DeviceRouting {
    fn upload(s: &Arc<CudaStream>, c: &Case) -> DeviceRouting {
        let (f, b) = if c.bf16_logits {
            (None, Some(s.clone_htod(&to_bf16(&c.logits)).unwrap()))
        } else {
            (Some(s.clone_htod(&c.logits).unwrap()), None)
        };
        DeviceRouting {
            f32_logits: f,
            bf16_logits: b,
            bias: c.bias.as_ref().map(|b| s.clone_htod(b).unwrap()),
        }
    }

    fn routing(&self) -> MoeRoutingInput<'_> {
        let logits: Logits<'_> = match (&self.f32_logits, &self.bf16_logits) {
            (Some(l), _) => l.into(),
            (_, Some(l)) => l.into(),
            _ => unreachable!("one of the two is uploaded"),
        };
        MoeRoutingInput::Logits {
            logits,
            bias: self.bias.as_ref().map(Into::into),
        }
    }
}

/// What one op run produced: output and replay (with its spare rows), downloaded.
struct Outcome {
    output: Vec<f32>,
    replay: Option<Vec<i16>>,
}

/// The outcome of one fused call: routing (from the case's logits), output and replay buffer
/// in, the call's result out.
type FusedOp<'x> = dyn FnMut(
        MoeRoutingInput<'_>,
        &mut CudaViewMut<'_, bf16>,
        Option<&mut ReplayView<'_>>,
    ) -> flashinfer_rs::Result<Option<Unfinalized>>
    + 'x;

/// Runs `op` on case `c` twice, with and without a replay buffer, and checks the replay
/// invariants; returns the output.
fn run_checked(g: &Gpu, c: &Case, name: &str, op: &mut FusedOp<'_>) -> Vec<f32> {
    let s = &g.stream;
    let dr = DeviceRouting::upload(s, c);
    let (t, h, k) = (
        c.shape.num_tokens,
        c.shape.hidden_size,
        c.cfg.top_k as usize,
    );
    let mut run = |with_replay: bool| -> Outcome {
        let mut out = s.alloc_zeros::<bf16>(t * h).unwrap();
        let mut replay = s.clone_htod(&vec![SENTINEL; (t + SPARE_ROWS) * k]).unwrap();
        let result = if with_replay {
            let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
            op(dr.routing(), &mut out.as_view_mut(), Some(&mut view))
        } else {
            op(dr.routing(), &mut out.as_view_mut(), None)
        };
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        Outcome {
            output: s
                .clone_dtoh(&out)
                .unwrap()
                .iter()
                .map(|v| v.to_f32())
                .collect(),
            replay: with_replay.then(|| s.clone_dtoh(&replay).unwrap()),
        }
    };
    let with = run(true);
    let without = run(false);
    assert!(
        with.output
            .iter()
            .zip(&without.output)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "{name}: output differs with and without replay"
    );
    let replay = with.replay.unwrap();
    let want: Vec<i16> = c.ids.iter().map(|&x| x as i16).collect();
    assert_eq!(
        &replay[..t * k],
        &want[..],
        "{name}: replay ids vs the routing oracle"
    );
    assert!(
        replay[t * k..].iter().all(|&x| x == SENTINEL),
        "{name}: replay wrote past num_tokens"
    );
    with.output
}

fn shape(num_tokens: usize) -> Shape {
    Shape {
        num_tokens,
        hidden_size: 512,
        intermediate_size: 256,
    }
}

/// Every routing method, small shapes (every op runs all of them).
fn routing_configs() -> Vec<(&'static str, RoutingConfig)> {
    let m = |method, e, k| RoutingConfig::new(method, e, k);
    vec![
        ("Renormalize", m(RoutingMethod::Renormalize, 64, 4)),
        (
            "RenormalizeNaive",
            m(RoutingMethod::RenormalizeNaive, 64, 4),
        ),
        ("Default", m(RoutingMethod::Default, 64, 4)),
        ("TopK", m(RoutingMethod::TopK, 64, 4)),
        ("Sigmoid", m(RoutingMethod::Sigmoid, 64, 4)),
        (
            "SigmoidRenorm",
            m(
                RoutingMethod::SigmoidRenorm {
                    norm_topk_prob: true,
                },
                64,
                4,
            ),
        ),
        (
            "MiniMax2",
            m(
                RoutingMethod::MiniMax2 {
                    routed_scaling_factor: 1.0,
                },
                64,
                4,
            ),
        ),
        (
            "DeepSeekV3",
            m(
                RoutingMethod::DeepSeekV3 {
                    n_group: 8,
                    topk_group: 4,
                    routed_scaling_factor: 2.5,
                },
                64,
                4,
            ),
        ),
        ("Llama4", m(RoutingMethod::Llama4, 64, 1)),
    ]
}

fn bf16_run(g: &Gpu, c: &Case, opts: &MoeOptions, name: &str) -> Vec<f32> {
    let s = &g.stream;
    let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
    let el = c.cfg.local_num_experts as usize;
    let (w1, w2) = shuffle_expert_weights(
        &to_bf16(&c.w.w1),
        &to_bf16(&c.w.w2),
        el,
        (2 * i, h),
        (h, i),
        true,
        EPILOGUE_TILE_M,
        Some(64),
    )
    .unwrap();
    let (hs, w1, w2) = (
        s.clone_htod(&to_bf16(&c.hidden)).unwrap(),
        s.clone_htod(&w1).unwrap(),
        s.clone_htod(&w2).unwrap(),
    );
    let weights = Bf16Weights {
        gemm1_weights: w1.as_view(),
        gemm2_weights: w2.as_view(),
        swiglu: SwigluParams::default(),
    };
    let moe = FusedMoe::<Bf16>::new(c.config(*opts), weights).unwrap();
    run_checked(g, c, name, &mut |r, out, replay| {
        let inputs = Bf16Inputs {
            hidden_states: hs.as_view(),
            gemm1_lora_delta: None,
        };
        moe.forward(s, c.batch(r, inputs), out, replay)
    })
}

fn check(name: &str, want: &[f32], got: &[f32], percent: f32) {
    match moe_oracle::check_accuracy(want, got, 0.1, 0.85, percent) {
        Ok(frac) => eprintln!("{name}: {frac:.4} of elements within tolerance"),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn bf16_moe_matches_the_reference_for_every_routing_method() {
    let Some(g) = sm100("fused_sm100::bf16_moe_matches_the_reference_for_every_routing_method")
    else {
        return;
    };
    let opts = MoeOptions::new(WeightLayout::BlockMajorK);
    for (method, cfg) in routing_configs() {
        for t in [1, 13, 130] {
            let name = format!("bf16 {method} T={t}");
            let c = Case::new(cfg, shape(t), t as u64 * 31 + 7);
            let got = bf16_run(&g, &c, &opts, &name);
            let want = c.reference(false, ActivationRounding::Bf16);
            check(&name, &want, &got, 0.925);
        }
    }
}

#[test]
fn bf16_moe_with_expert_parallelism_sums_only_local_experts() {
    let Some(g) = sm100("fused_sm100::bf16_moe_with_expert_parallelism_sums_only_local_experts")
    else {
        return;
    };
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 64, 4).with_local_experts(16, 32);
    let c = Case::new(cfg, shape(40), 99);
    let got = bf16_run(
        &g,
        &c,
        &MoeOptions::new(WeightLayout::BlockMajorK),
        "bf16 EP",
    );
    let want = c.reference(false, ActivationRounding::Bf16);
    check("bf16 EP 16..48 of 64", &want, &got, 0.925);
}

#[test]
fn fp8_per_tensor_moe_matches_the_reference() {
    let Some(g) = sm100("fused_sm100::fp8_per_tensor_moe_matches_the_reference") else {
        return;
    };
    let s = &g.stream;
    // Llama 4 applies its routing weight to the input, as upstream's test does.
    let configs = routing_configs()
        .into_iter()
        .map(|(m, c)| (m, c, matches!(c.method, RoutingMethod::Llama4)));
    for (method, cfg, on_input) in configs {
        for t in [1, 37] {
            let name = format!("fp8 per-tensor {method} T={t}");
            let mut c = Case::new(cfg, shape(t), 500 + t as u64);
            let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
            let el = cfg.local_num_experts as usize;
            // Quantise per expert (weights) and per tensor (activations); the reference runs
            // on the dequantised values.
            let (mut q1, mut q2, mut sf1, mut sf2) = (vec![], vec![], vec![], vec![]);
            for e in 0..el {
                let (q, sf) = moe_oracle::quantize_fp8_per_tensor(
                    &c.w.w1[e * 2 * i * h..(e + 1) * 2 * i * h],
                );
                q1.extend(q);
                sf1.push(sf);
                let (q, sf) =
                    moe_oracle::quantize_fp8_per_tensor(&c.w.w2[e * h * i..(e + 1) * h * i]);
                q2.extend(q);
                sf2.push(sf);
            }
            let (hq, hsf) = moe_oracle::quantize_fp8_per_tensor(&c.hidden);
            c.hidden = hq.iter().map(|q| q.to_f32() / hsf).collect();
            for e in 0..el {
                for v in &mut c.w.w1[e * 2 * i * h..(e + 1) * 2 * i * h] {
                    *v = E4m3::from_f32(*v * sf1[e]).to_f32() / sf1[e];
                }
                for v in &mut c.w.w2[e * h * i..(e + 1) * h * i] {
                    *v = E4m3::from_f32(*v * sf2[e]).to_f32() / sf2[e];
                }
            }
            let p = c.problem(on_input);
            let acts: Vec<f32> = moe_oracle::activations(&p, &c.hidden, &c.ids, &c.weights, &c.w)
                .unwrap()
                .into_iter()
                .flatten()
                .collect();
            let c_sf = moe_oracle::fp8_global_scale(&acts);
            let scale_c_fc1: Vec<f32> = sf1.iter().map(|w| c_sf / w / hsf).collect();
            let scale_gate_fc1: Vec<f32> = sf1.iter().map(|w| 1.0 / w / hsf).collect();
            let scale_c_fc2: Vec<f32> = sf2.iter().map(|w| 1.0 / c_sf / w).collect();
            let (w1, w2) = shuffle_expert_weights(
                &q1,
                &q2,
                el,
                (2 * i, h),
                (h, i),
                true,
                EPILOGUE_TILE_M,
                None,
            )
            .unwrap();
            let (hs, w1, w2) = (
                s.clone_htod(&hq).unwrap(),
                s.clone_htod(&w1).unwrap(),
                s.clone_htod(&w2).unwrap(),
            );
            let (o1, og, o2) = (
                s.clone_htod(&scale_c_fc1).unwrap(),
                s.clone_htod(&scale_gate_fc1).unwrap(),
                s.clone_htod(&scale_c_fc2).unwrap(),
            );
            let weights = Fp8PerTensorWeights {
                gemm1_weights: w1.as_view(),
                output1_scales_scalar: o1.as_view(),
                output1_scales_gate_scalar: og.as_view(),
                gemm2_weights: w2.as_view(),
                output2_scales_scalar: o2.as_view(),
                use_routing_scales_on_input: on_input,
            };
            let opts = MoeOptions::new(WeightLayout::MajorK);
            let moe = FusedMoe::<Fp8PerTensor>::new(c.config(opts), weights).unwrap();
            let got = run_checked(&g, &c, &name, &mut |r, out, replay| {
                let inputs = Fp8PerTensorInputs {
                    hidden_states: Fp8Activations::E4m3(hs.as_view()),
                };
                moe.forward(s, c.batch(r, inputs), out, replay)
            });
            let want = c.reference(on_input, ActivationRounding::Fp8PerTensor { scale: c_sf });
            check(&name, &want, &got, 0.92);
        }
    }
}

#[test]
fn deepseek_fp8_block_scale_moe_matches_the_reference() {
    let Some(g) = sm100("fused_sm100::deepseek_fp8_block_scale_moe_matches_the_reference") else {
        return;
    };
    let s = &g.stream;
    for (method, cfg) in routing_configs() {
        for t in [1, 29, 130] {
            let name = format!("DeepSeek fp8 {method} T={t}");
            let mut c = Case::new(cfg, shape(t), 900 + t as u64);
            let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
            let el = cfg.local_num_experts as usize;
            let (mut q1, mut q2, mut s1, mut s2) = (vec![], vec![], vec![], vec![]);
            for e in 0..el {
                let w1 = &mut c.w.w1[e * 2 * i * h..(e + 1) * 2 * i * h];
                let (q, sc) = moe_oracle::quantize_fp8_blocks(w1, 2 * i, h).unwrap();
                w1.copy_from_slice(&moe_oracle::dequantize_fp8_blocks(&q, &sc, 2 * i, h).unwrap());
                q1.extend(q);
                s1.extend(sc);
                let w2 = &mut c.w.w2[e * h * i..(e + 1) * h * i];
                let (q, sc) = moe_oracle::quantize_fp8_blocks(w2, h, i).unwrap();
                w2.copy_from_slice(&moe_oracle::dequantize_fp8_blocks(&q, &sc, h, i).unwrap());
                q2.extend(q);
                s2.extend(sc);
            }
            let (hq, hs_t) = moe_oracle::quantize_fp8_activation_blocks(&c.hidden, t, h).unwrap();
            c.hidden = moe_oracle::dequantize_fp8_activation_blocks(&hq, &hs_t, t, h).unwrap();
            let (hs, hsc, w1, w1s, w2, w2s) = (
                s.clone_htod(&hq).unwrap(),
                s.clone_htod(&hs_t).unwrap(),
                s.clone_htod(&q1).unwrap(),
                s.clone_htod(&s1).unwrap(),
                s.clone_htod(&q2).unwrap(),
                s.clone_htod(&s2).unwrap(),
            );
            // Unshuffled MajorK weights: one of upstream's tested DeepSeek configurations.
            let mut opts = MoeOptions::new(WeightLayout::MajorK);
            opts.use_shuffled_weight = false;
            let weights = Fp8BlockScaleWeights {
                gemm1_weights: w1.as_view(),
                gemm2_weights: w2.as_view(),
                scales: Fp8BlockWeightScales::DeepSeek {
                    gemm1_weights_scale: w1s.as_view(),
                    gemm2_weights_scale: w2s.as_view(),
                },
                swiglu: SwigluParams::default(),
            };
            let moe = FusedMoe::<Fp8BlockScale>::new(c.config(opts), weights).unwrap();
            let got = run_checked(&g, &c, &name, &mut |r, out, replay| {
                let inputs = Fp8BlockScaleInputs {
                    hidden_states: hs.as_view(),
                    hidden_states_scale: Fp8BlockInputScale::DeepSeek(hsc.as_view()),
                    gemm1_lora_delta: None,
                };
                moe.forward(s, c.batch(r, inputs), out, replay)
            });
            let want = c.reference(false, ActivationRounding::Bf16);
            check(&name, &want, &got, 0.79);
        }
    }
}

#[test]
fn mxfp8_block_scale_moe_matches_the_reference() {
    let Some(g) = sm100("fused_sm100::mxfp8_block_scale_moe_matches_the_reference") else {
        return;
    };
    let s = &g.stream;
    for (method, cfg) in routing_configs() {
        for t in [1, 21, 130] {
            let name = format!("MxFp8 {method} T={t}");
            let mut c = Case::new(cfg, shape(t), 1700 + t as u64);
            let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
            let el = cfg.local_num_experts as usize;
            // Weights: MX fp8 with linear scales, then rows and scale rows shuffled together
            // and the scales interleaved (upstream's MxFp8 preparation).
            let (q1, s1) = moe_oracle::quantize_mxfp8(&c.w.w1, el * 2 * i, h).unwrap();
            let (q2, s2) = moe_oracle::quantize_mxfp8(&c.w.w2, el * h, i).unwrap();
            c.w.w1 = moe_oracle::dequantize_mxfp8(&q1, &s1).unwrap();
            c.w.w2 = moe_oracle::dequantize_mxfp8(&q2, &s2).unwrap();
            let (w1, w1s, w2, w2s) = shuffle_block_scaled_weights(
                (&q1, &s1),
                (&q2, &s2),
                el,
                (2 * i, h, h / 32),
                (h, i, i / 32),
                true,
                EPILOGUE_TILE_M,
            )
            .unwrap();
            // Activations: MX fp8 with the scales interleaved 128x4, as mxfp8_quantize makes them.
            let (hq, hs) = moe_oracle::quantize_mxfp8(&c.hidden, t, h).unwrap();
            c.hidden = moe_oracle::dequantize_mxfp8(&hq, &hs).unwrap();
            let hs = interleave_scales(&hs, t, h / 32).unwrap();
            let (hq, hs, w1, w1s, w2, w2s) = (
                s.clone_htod(&hq).unwrap(),
                s.clone_htod(&hs).unwrap(),
                s.clone_htod(&w1).unwrap(),
                s.clone_htod(&w1s).unwrap(),
                s.clone_htod(&w2).unwrap(),
                s.clone_htod(&w2s).unwrap(),
            );
            let weights = Fp8BlockScaleWeights {
                gemm1_weights: w1.as_view(),
                gemm2_weights: w2.as_view(),
                scales: Fp8BlockWeightScales::Mx {
                    gemm1_weights_scale: w1s.as_view(),
                    gemm2_weights_scale: w2s.as_view(),
                },
                swiglu: SwigluParams::default(),
            };
            let opts = MoeOptions::new(WeightLayout::MajorK);
            let moe = FusedMoe::<Fp8BlockScale>::new(c.config(opts), weights).unwrap();
            let got = run_checked(&g, &c, &name, &mut |r, out, replay| {
                let inputs = Fp8BlockScaleInputs {
                    hidden_states: hq.as_view(),
                    hidden_states_scale: Fp8BlockInputScale::Mx(hs.as_view()),
                    gemm1_lora_delta: None,
                };
                moe.forward(s, c.batch(r, inputs), out, replay)
            });
            check(
                &name,
                &c.reference(false, ActivationRounding::MxFp8),
                &got,
                0.79,
            );
        }
    }
}

/// Runs the fp4 op on case `c` with these activations (made afresh for each of
/// `run_checked`'s calls), weights and output scales (gemm1, gemm1 gate, gemm2), checking the
/// replay invariants and that the packed routing result `(id << 16) | bf16 weight` lands in
/// `topk_ids`; returns the output.
fn run_fp4<'h>(
    g: &Gpu,
    c: &Case,
    name: &str,
    hidden_states: &dyn Fn() -> Fp4Activations<'h>,
    weights: Fp4Weights<'_>,
    [o1, og, o2]: [CudaView<'_, f32>; 3],
) -> Vec<f32> {
    let s = &g.stream;
    let tk = c.shape.num_tokens * c.cfg.top_k as usize;
    let mut ids = s.alloc_zeros::<i32>(tk).unwrap();
    let mut wts = s.alloc_zeros::<bf16>(tk).unwrap();
    let opts = MoeOptions::new(WeightLayout::MajorK);
    let weights = Fp4BlockScaleWeights {
        activations: hidden_states().kind(),
        weights,
        gemm1_bias: None,
        gemm2_bias: None,
        output1_scales_scalar: Some(o1),
        output1_scales_gate_scalar: Some(og),
        output2_scales_scalar: Some(o2),
        swiglu: SwigluParams::default(),
    };
    let moe = FusedMoe::<Fp4BlockScale>::new(c.config(opts), weights).unwrap();
    let got = run_checked(g, c, name, &mut |r, out, replay| {
        let inputs = Fp4BlockScaleInputs {
            hidden_states: hidden_states(),
            per_token_scales: None,
            topk_ids: ids.as_view_mut(),
            topk_weights: wts.as_view_mut(),
        };
        moe.forward(s, c.batch(r, inputs), out, replay)
    });
    let got_ids: Vec<i32> = s
        .clone_dtoh(&ids)
        .unwrap()
        .iter()
        .map(|p| p >> 16)
        .collect();
    let want_ids: Vec<i32> = c.ids.iter().map(|&x| x as i32).collect();
    assert_eq!(got_ids, want_ids, "{name}: topk_ids");
    got
}

/// nvfp4 weights with nvfp4 activations. Token counts are multiples of 128: FlashInfer 0.6.13
/// infers the activation scales' block size from their count (`T * hidden / 16` exactly), and
/// its tests pass them 128x4-interleaved, whose count matches only when T is a multiple of 128.
#[test]
fn nvfp4_moe_matches_the_reference() {
    let Some(g) = sm100("fused_sm100::nvfp4_moe_matches_the_reference") else {
        return;
    };
    let s = &g.stream;
    for (method, cfg) in routing_configs() {
        for t in [128, 256] {
            let name = format!("nvfp4 {method} T={t}");
            let mut c = Case::new(cfg, shape(t), 2100 + t as u64);
            let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
            let el = cfg.local_num_experts as usize;
            // Per-expert global scales, as upstream's quant_fp4_batches calibrates them.
            let (mut q1, mut s1, mut g1) = (vec![], vec![], vec![]);
            let (mut q2, mut s2, mut g2) = (vec![], vec![], vec![]);
            for e in 0..el {
                let w1 = &mut c.w.w1[e * 2 * i * h..(e + 1) * 2 * i * h];
                let gs = moe_oracle::nvfp4_global_scale(w1);
                let (q, sc) = moe_oracle::quantize_nvfp4(w1, 2 * i, h, gs).unwrap();
                w1.copy_from_slice(&moe_oracle::dequantize_nvfp4(&q, &sc, gs).unwrap());
                q1.extend(q);
                s1.extend(sc);
                g1.push(gs);
                let w2 = &mut c.w.w2[e * h * i..(e + 1) * h * i];
                let gs = moe_oracle::nvfp4_global_scale(w2);
                let (q, sc) = moe_oracle::quantize_nvfp4(w2, h, i, gs).unwrap();
                w2.copy_from_slice(&moe_oracle::dequantize_nvfp4(&q, &sc, gs).unwrap());
                q2.extend(q);
                s2.extend(sc);
                g2.push(gs);
            }
            let (w1, w1s, w2, w2s) = shuffle_block_scaled_weights(
                (&q1, &s1),
                (&q2, &s2),
                el,
                (2 * i, h / 2, h / 16),
                (h, i / 2, i / 16),
                true,
                EPILOGUE_TILE_M,
            )
            .unwrap();
            let hg = moe_oracle::nvfp4_global_scale(&c.hidden);
            let (hq, hs) = moe_oracle::quantize_nvfp4(&c.hidden, t, h, hg).unwrap();
            c.hidden = moe_oracle::dequantize_nvfp4(&hq, &hs, hg).unwrap();
            let hs = interleave_scales(&hs, t, h / 16).unwrap();
            // The kernel requantises the activation to nvfp4 with a global scale calibrated on
            // it; the output scales fold every global scale in (upstream's scale_c_fc1 & co).
            let acts: Vec<f32> =
                moe_oracle::activations(&c.problem(false), &c.hidden, &c.ids, &c.weights, &c.w)
                    .unwrap()
                    .into_iter()
                    .flatten()
                    .collect();
            let cg = moe_oracle::nvfp4_global_scale(&acts);
            let o1: Vec<f32> = g1.iter().map(|w| cg / w / hg).collect();
            let og: Vec<f32> = g1.iter().map(|w| 1.0 / w / hg).collect();
            let o2: Vec<f32> = g2.iter().map(|w| 1.0 / cg / w).collect();
            let (hq, hs, w1, w1s, w2, w2s) = (
                s.clone_htod(&hq).unwrap(),
                s.clone_htod(&hs).unwrap(),
                s.clone_htod(&w1).unwrap(),
                s.clone_htod(&w1s).unwrap(),
                s.clone_htod(&w2).unwrap(),
                s.clone_htod(&w2s).unwrap(),
            );
            let (o1, og, o2) = (
                s.clone_htod(&o1).unwrap(),
                s.clone_htod(&og).unwrap(),
                s.clone_htod(&o2).unwrap(),
            );
            let got = run_fp4(
                &g,
                &c,
                &name,
                &|| Fp4Activations::Nvfp4 {
                    data: hq.as_view(),
                    scale: hs.as_view(),
                },
                Fp4Weights::Nvfp4 {
                    gemm1: w1.as_view(),
                    gemm1_scale: w1s.as_view(),
                    gemm2: w2.as_view(),
                    gemm2_scale: w2s.as_view(),
                },
                [o1.as_view(), og.as_view(), o2.as_view()],
            );
            let want = c.reference(false, ActivationRounding::Nvfp4 { global_scale: cg });
            check(&name, &want, &got, 0.92);
        }
    }
}

/// mxfp4 weights with bf16 activations, and with MX fp8 activations (whose scales are
/// 128x4-interleaved like nvfp4's: token counts are multiples of 128, see the nvfp4 test).
#[test]
fn mxfp4_moe_matches_the_reference() {
    let Some(g) = sm100("fused_sm100::mxfp4_moe_matches_the_reference") else {
        return;
    };
    let s = &g.stream;
    for (method, cfg) in routing_configs() {
        for (mx_act, t) in [
            (false, 1),
            (false, 8),
            (false, 100),
            (true, 128),
            (true, 256),
        ] {
            let act = if mx_act { "MX fp8" } else { "bf16" };
            let name = format!("mxfp4 x {act} {method} T={t}");
            let mut c = Case::new(cfg, shape(t), 1300 + t as u64);
            let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
            let el = cfg.local_num_experts as usize;
            // Quantise the weights to mxfp4; the reference runs on their exact values.
            let (q1, s1) = moe_oracle::quantize_mxfp4(&c.w.w1, el * 2 * i, h).unwrap();
            let (q2, s2) = moe_oracle::quantize_mxfp4(&c.w.w2, el * h, i).unwrap();
            c.w.w1 = moe_oracle::dequantize_mxfp4(&q1, &s1, h).unwrap();
            c.w.w2 = moe_oracle::dequantize_mxfp4(&q2, &s2, i).unwrap();
            let (w1, w1s, w2, w2s) = shuffle_block_scaled_weights(
                (&q1, &s1),
                (&q2, &s2),
                el,
                (2 * i, h / 2, h / 32),
                (h, i / 2, i / 32),
                true,
                EPILOGUE_TILE_M,
            )
            .unwrap();
            let (w1, w1s, w2, w2s) = (
                s.clone_htod(&w1).unwrap(),
                s.clone_htod(&w1s).unwrap(),
                s.clone_htod(&w2).unwrap(),
                s.clone_htod(&w2s).unwrap(),
            );
            // Activations: bf16 as they are, or MX fp8 with 128x4-interleaved scales.
            let hs_bf16 = s.clone_htod(&to_bf16(&c.hidden)).unwrap();
            let (hq, hs) = moe_oracle::quantize_mxfp8(&c.hidden, t, h).unwrap();
            let hq_dev = s.clone_htod(&hq).unwrap();
            let hs_dev = s
                .clone_htod(&interleave_scales(&hs, t, h / 32).unwrap())
                .unwrap();
            let hidden_states = || {
                if mx_act {
                    Fp4Activations::MxE4m3 {
                        data: hq_dev.as_view(),
                        scale: hs_dev.as_view(),
                    }
                } else {
                    Fp4Activations::Bf16(hs_bf16.as_view())
                }
            };
            let rounding = if mx_act {
                c.hidden = moe_oracle::dequantize_mxfp8(&hq, &hs).unwrap();
                ActivationRounding::MxFp8
            } else {
                ActivationRounding::Bf16
            };
            // Unit output scales: upstream's test computes exactly these for both modes
            // (ue8m0 scales carry no global scale).
            let ones = s.clone_htod(&vec![1f32; el]).unwrap();
            let got = run_fp4(
                &g,
                &c,
                &name,
                &hidden_states,
                Fp4Weights::Mxfp4 {
                    gemm1: w1.as_view(),
                    gemm1_scale: w1s.as_view(),
                    gemm2: w2.as_view(),
                    gemm2_scale: w2s.as_view(),
                },
                [ones.as_view(), ones.as_view(), ones.as_view()],
            );
            check(&name, &c.reference(false, rounding), &got, 0.92);
        }
    }
}

/// Decode-sized bf16 calls (1-8 tokens) at a Qwen3-like hidden and intermediate size: the
/// bf16 launcher's GEMM intermediates are then far below 128 KiB, where the shipped kernels'
/// TMA reads past them (upstream 2fb785c19); our scratch allocator pads every upstream tensor
/// (flashinfer-sys/csrc/scratch.h, tested on the CPU in flashinfer-sys).
#[test]
fn bf16_moe_at_decode_batch_sizes() {
    let Some(g) = sm100("fused_sm100::bf16_moe_at_decode_batch_sizes") else {
        return;
    };
    let opts = MoeOptions::new(WeightLayout::BlockMajorK);
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 16, 4);
    for t in [1, 2, 3, 4, 8] {
        let name = format!("bf16 decode T={t} hidden 2048 intermediate 768");
        let s = Shape {
            num_tokens: t,
            hidden_size: 2048,
            intermediate_size: 768,
        };
        let c = Case::new(cfg, s, 4000 + t as u64);
        let got = bf16_run(&g, &c, &opts, &name);
        let want = c.reference(false, ActivationRounding::Bf16);
        check(&name, &want, &got, 0.925);
    }
}

/// With fp32 routing logits (DeepSeek-V3) and `do_finalize = false`, the expert weights handed
/// back are bf16, as the kernels write them (upstream 2e1742a89, our patch 0005: 0.6.13
/// labelled them fp32).
#[test]
fn unfinalized_bf16_moe_hands_back_bf16_expert_weights_for_fp32_logits() {
    let Some(g) =
        sm100("fused_sm100::unfinalized_bf16_moe_hands_back_bf16_expert_weights_for_fp32_logits")
    else {
        return;
    };
    let s = &g.stream;
    let cfg = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 2.5,
        },
        64,
        4,
    );
    let c = Case::new(cfg, shape(20), 5);
    assert!(!c.bf16_logits, "DeepSeek-V3 cases route fp32 logits");
    let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
    let (w1, w2) = shuffle_expert_weights(
        &to_bf16(&c.w.w1),
        &to_bf16(&c.w.w2),
        64,
        (2 * i, h),
        (h, i),
        true,
        EPILOGUE_TILE_M,
        Some(64),
    )
    .unwrap();
    let (hs, w1, w2) = (
        s.clone_htod(&to_bf16(&c.hidden)).unwrap(),
        s.clone_htod(&w1).unwrap(),
        s.clone_htod(&w2).unwrap(),
    );
    let dr = DeviceRouting::upload(s, &c);
    let weights = Bf16Weights {
        gemm1_weights: w1.as_view(),
        gemm2_weights: w2.as_view(),
        swiglu: SwigluParams::default(),
    };
    let inputs = Bf16Inputs {
        hidden_states: hs.as_view(),
        gemm1_lora_delta: None,
    };
    let mut opts = MoeOptions::new(WeightLayout::BlockMajorK);
    opts.do_finalize = false;
    let mut out = s.alloc_zeros::<bf16>(20 * h).unwrap();
    // The one-shot entry point: builds the layer and calls it once.
    let parts = trtllm_bf16_moe(
        s,
        &c.config(opts),
        weights,
        c.batch(dr.routing(), inputs),
        &mut out.as_view_mut(),
        None,
    )
    .unwrap()
    .expect("unfinalized outputs");
    let w = &parts.tensors()[1];
    assert_eq!(w.shape, vec![20, 4], "expert weights [T, K]");
    assert_eq!(
        w.dtype,
        flashinfer_sys::fi_dtype::FI_DTYPE_BF16,
        "expert weights are bf16 whatever the logits' dtype"
    );
    s.synchronize().unwrap();
    let mut host = vec![bf16::ZERO; 20 * 4];
    // SAFETY: `w.ptr` holds 20 x 4 bf16 on this context's device while `parts` lives.
    unsafe { flashinfer_rs::cudarc::driver::result::memcpy_dtoh_sync(&mut host, w.ptr) }.unwrap();
    let got: Vec<f32> = host.iter().map(|x| x.to_f32()).collect();
    for (g, w) in got.iter().zip(&c.weights) {
        assert!(
            (g - w).abs() <= 1e-2 * w.abs() + 1e-3,
            "weights {got:?} vs {:?}",
            c.weights
        );
    }
}

#[test]
fn unfinalized_bf16_moe_hands_back_per_expert_outputs() {
    let Some(g) = sm100("fused_sm100::unfinalized_bf16_moe_hands_back_per_expert_outputs") else {
        return;
    };
    let s = &g.stream;
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 64, 4);
    let c = Case::new(cfg, shape(20), 3);
    let (h, i) = (c.shape.hidden_size, c.shape.intermediate_size);
    let (w1, w2) = shuffle_expert_weights(
        &to_bf16(&c.w.w1),
        &to_bf16(&c.w.w2),
        64,
        (2 * i, h),
        (h, i),
        true,
        EPILOGUE_TILE_M,
        Some(64),
    )
    .unwrap();
    let (hs, w1, w2) = (
        s.clone_htod(&to_bf16(&c.hidden)).unwrap(),
        s.clone_htod(&w1).unwrap(),
        s.clone_htod(&w2).unwrap(),
    );
    let dr = DeviceRouting::upload(s, &c);
    let weights = Bf16Weights {
        gemm1_weights: w1.as_view(),
        gemm2_weights: w2.as_view(),
        swiglu: SwigluParams::default(),
    };
    let inputs = Bf16Inputs {
        hidden_states: hs.as_view(),
        gemm1_lora_delta: None,
    };
    let mut opts = MoeOptions::new(WeightLayout::BlockMajorK);
    opts.do_finalize = false;
    let mut out = s.alloc_zeros::<bf16>(20 * h).unwrap();
    // The one-shot entry point: builds the layer and calls it once.
    let parts = trtllm_bf16_moe(
        s,
        &c.config(opts),
        weights,
        c.batch(dr.routing(), inputs),
        &mut out.as_view_mut(),
        None,
    )
    .unwrap()
    .expect("unfinalized outputs");
    let t = parts.tensors();
    assert_eq!(t.len(), 3, "{t:?}");
    assert_eq!(t[0].shape.len(), 2);
    assert_eq!(t[0].shape[1], h as i64, "gemm2_output [padded, hidden]");
    assert!(
        t[0].shape[0] >= 20 * 4,
        "padded rows hold every routed pair"
    );
    assert_eq!(t[1].shape, vec![20, 4], "expert weights [T, K]");
    assert_eq!(t[2].shape, vec![80], "expanded_idx_to_permuted_idx [T * K]");
    assert!(t.iter().all(|x| x.ptr != 0));
    s.synchronize().unwrap();
}

#[test]
fn a_captured_bf16_moe_replays_with_fresh_logits() {
    let Some(g) = sm100("fused_sm100::a_captured_bf16_moe_replays_with_fresh_logits") else {
        return;
    };
    let s = &g.stream;
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 64, 4);
    let t = 64;
    let c = Case::new(cfg, shape(t), 11);
    let (h, i, k) = (c.shape.hidden_size, c.shape.intermediate_size, 4);
    let (w1, w2) = shuffle_expert_weights(
        &to_bf16(&c.w.w1),
        &to_bf16(&c.w.w2),
        64,
        (2 * i, h),
        (h, i),
        true,
        EPILOGUE_TILE_M,
        Some(64),
    )
    .unwrap();
    let (hs, w1, w2) = (
        s.clone_htod(&to_bf16(&c.hidden)).unwrap(),
        s.clone_htod(&w1).unwrap(),
        s.clone_htod(&w2).unwrap(),
    );
    let mut logits = s.clone_htod(&to_bf16(&c.logits)).unwrap();
    let mut out = s.alloc_zeros::<bf16>(t * h).unwrap();
    let mut replay = s.clone_htod(&vec![SENTINEL; (t + SPARE_ROWS) * k]).unwrap();
    let opts = MoeOptions::new(WeightLayout::BlockMajorK);
    let weights = Bf16Weights {
        gemm1_weights: w1.as_view(),
        gemm2_weights: w2.as_view(),
        swiglu: SwigluParams::default(),
    };
    let moe = FusedMoe::<Bf16>::new(c.config(opts), weights).unwrap();
    let call =
        |logits: &CudaSlice<bf16>, out: &mut CudaSlice<bf16>, replay: &mut CudaSlice<i16>| {
            let routing = MoeRoutingInput::Logits {
                logits: logits.into(),
                bias: None,
            };
            let inputs = Bf16Inputs {
                hidden_states: hs.as_view(),
                gemm1_lora_delta: None,
            };
            let mut view = ReplayView::from_slice(replay, k).unwrap();
            moe.forward(
                s,
                c.batch(routing, inputs),
                &mut out.as_view_mut(),
                Some(&mut view),
            )
            .unwrap();
        };
    // Eager first: cubins load and the scratch pool warms up outside the capture.
    call(&logits, &mut out, &mut replay);
    s.synchronize().unwrap();
    unsafe { g.ctx.disable_event_tracking() };
    s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    call(&logits, &mut out, &mut replay);
    let graph = s
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");
    for n in 0..5u64 {
        let fresh = Case::new(cfg, shape(t), 1000 + n);
        s.memcpy_htod(&to_bf16(&fresh.logits), &mut logits).unwrap();
        graph.launch().unwrap();
        let got: Vec<f32> = s
            .clone_dtoh(&out)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let rep = s.clone_dtoh(&replay).unwrap();
        let want_ids: Vec<i16> = fresh.ids.iter().map(|&x| x as i16).collect();
        assert_eq!(&rep[..t * k], &want_ids[..], "graph replay {n}: ids");
        assert!(
            rep[t * k..].iter().all(|&x| x == SENTINEL),
            "graph replay {n}: spare rows"
        );
        // Same weights and hidden states as `c`; the fresh routing decides.
        let want = moe_oracle::moe(
            &c.problem(false),
            &c.hidden,
            &fresh.ids,
            &fresh.weights,
            &c.w,
            ActivationRounding::Bf16,
        )
        .unwrap();
        check(&format!("graph replay {n}"), &want, &got, 0.925);
    }
    unsafe { g.ctx.enable_event_tracking() };
}
