//! The fp8 per-tensor Hopper layer (`CutlassMoe::new_fp8`, feature `sm90-moe-fp8`) against the
//! CPU reference MoE (`fused::oracle::moe`, upstream's `run_moe_dequant`) on the operands the
//! kernels see: weights quantised per expert (`prepare::fp8_per_expert`) and dequantised,
//! hidden states quantised with the static input scale (`e4m3(x * (1 / a1)) * a1`,
//! saturating), GEMM 1's outputs rounded to bf16 (what the fp8 GEMM writes) and the SwiGLU
//! output quantised with `1 / a2` (`ActivationRounding::Fp8PerTensorBf16Gemm1`). Left: the
//! order of f32 sums, which can still move an intermediate value across a bf16 or e4m3 rounding
//! boundary (one e4m3 step) now and then, and the fp8 GEMMs' fast accumulation (fewer bits
//! than f32 inside the tensor cores); hence two criteria, on each token's outputs over its
//! routing weights' magnitude (`fp8_check`): 99% within the bf16 layer's tolerance and every
//! one within four times it. (Unscaled and without GEMM 1's bf16 rounding modelled, 2-5% of the
//! outputs of TopK-routed layers, whose weights are raw logits, and of one Sigmoid-routed call
//! were outside the first on an H100: 102 of 111 cases passed.)
//! - every routing method x token counts {1, 7, 64, 257, 2048} x 64 and 128 experts, replay
//!   ids equal to the oracle's, spare rows untouched, bits equal with and without replay (at
//!   one token through the decode kernels, the others through the grouped GEMMs);
//! - the decode kernels forced onto 1-64 tokens, a Qwen3-sized layer and an expert-parallel
//!   rank;
//! - hidden states past the input scale's range (saturated at ±448 codes);
//! - every tactic of the fp8 GEMMs, fixed for every call;
//! - expert parallelism: four ranks each over their own experts;
//! - a CUDA graph of three layers replayed with fresh inputs equals eager calls (grouped GEMMs
//!   and decode kernels);
//! - bad scales (lengths, zero, negative, NaN, infinite, subnormal) refused with typed errors.
use flashinfer_rs::cudarc::driver::{CudaSlice, CudaView};
use flashinfer_rs::cutlass::prepare::fp8_per_expert;
use flashinfer_rs::cutlass::{
    CutlassFp8Scales, CutlassMoe, CutlassMoeConfig, CutlassSchedule, CutlassWeights,
};
use flashinfer_rs::fused::oracle::{self as moe_oracle, ActivationRounding, ExpertWeights};
use flashinfer_rs::fused::E4m3;
use flashinfer_rs::routing::oracle::SplitMix64;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::Error;

use crate::common::{gpu, Gpu};
use crate::cutlass_moe::layer_here;
use crate::cutlass_moe::on_hopper::{
    assert_batch_invariant, capture_store_records_the_routing, case, config, forward,
    graph_of_layers, graph_routing, reference_of, report, tactic_pairs, to_f32, upload, values,
    ATOL, BATCH_TOKENS, CAPTURE_SHAPE, CAPTURE_TOKENS, GRAPH_SIZES, RTOL,
};
use crate::degenerate::one_per_method;
use crate::routing::{CaseData, DeviceInputs};

/// fp8 weights of `local` experts: the device codes, their scales (one per expert and GEMM, or
/// one per 128x128 block: cutlass_moe_fp8_blocks), and the dequantised values the reference
/// multiplies.
pub(crate) struct Fp8Weights {
    pub(crate) host: ExpertWeights,
    pub(crate) fc1: CudaSlice<E4m3>,
    pub(crate) fc2: CudaSlice<E4m3>,
    pub(crate) fc1_scales: Vec<f32>,
    pub(crate) fc2_scales: Vec<f32>,
}

fn dequantise(codes: &[E4m3], scales: &[f32]) -> Vec<f32> {
    let block = codes.len() / scales.len();
    codes
        .iter()
        .enumerate()
        .map(|(n, c)| c.to_f32() * scales[n / block])
        .collect()
}

/// One GEMM's quantised weights: the codes, their scales and the values they stand for.
pub(crate) type Quantised = (Vec<E4m3>, Vec<f32>, Vec<f32>);

/// Random weights of `local` experts (scaled so every GEMM output stays O(1)), each GEMM's
/// `[local, rows, cols]` quantised by `quantise(weights, rows, cols)`.
pub(crate) fn random_weights(
    g: &Gpu,
    local: usize,
    h: usize,
    i: usize,
    seed: u64,
    quantise: impl Fn(&[f32], usize, usize) -> Quantised,
) -> Fp8Weights {
    let mut rng = SplitMix64(seed);
    let w1 = values(&mut rng, local * 2 * i * h, 2.0 / (h as f32).sqrt());
    let w2 = values(&mut rng, local * h * i, 2.0 / (i as f32).sqrt());
    Fp8Weights::upload(g, quantise(&w1, 2 * i, h), quantise(&w2, h, i))
}

/// Weights of `local` experts quantised with one scale per expert and GEMM.
fn fp8_weights(g: &Gpu, local: usize, h: usize, i: usize, seed: u64) -> Fp8Weights {
    random_weights(g, local, h, i, seed, |w, _, _| {
        let (codes, scales) = fp8_per_expert(w, local).unwrap();
        let values = dequantise(&codes, &scales);
        (codes, scales, values)
    })
}

/// The activation scales: `a1` for the hidden states, `a2` for the SwiGLU output.
#[derive(Clone, Copy)]
struct Inputs {
    a1: f32,
    a2: f32,
}

/// Hidden states in [-1, 1) fill e4m3's range; the SwiGLU outputs of these weights stay
/// within a few units.
const FITTING: Inputs = Inputs {
    a1: 1.0 / 448.0,
    a2: 4.0 / 448.0,
};

impl Fp8Weights {
    /// GEMM 1's and GEMM 2's quantised weights, the codes uploaded.
    pub(crate) fn upload(g: &Gpu, fc1: Quantised, fc2: Quantised) -> Fp8Weights {
        let ((q1, fc1_scales, w1), (q2, fc2_scales, w2)) = (fc1, fc2);
        Fp8Weights {
            host: ExpertWeights { w1, w2 },
            fc1: g.stream.clone_htod(&q1).unwrap(),
            fc2: g.stream.clone_htod(&q2).unwrap(),
            fc1_scales,
            fc2_scales,
        }
    }

    pub(crate) fn views(&self) -> CutlassWeights<CudaView<'_, E4m3>> {
        CutlassWeights {
            fc1: self.fc1.as_view(),
            fc2: self.fc2.as_view(),
        }
    }

    fn scales(&self, a: Inputs) -> CutlassFp8Scales {
        CutlassFp8Scales {
            fc1_weights: self.fc1_scales.clone(),
            fc2_weights: self.fc2_scales.clone(),
            fc1_input: a.a1,
            fc2_input: a.a2,
        }
    }

    /// Rank `rank`'s `per` experts (and their scales, however many each has).
    pub(crate) fn rank_slice(
        &self,
        g: &Gpu,
        rank: usize,
        per: usize,
        h: usize,
        i: usize,
    ) -> Fp8Weights {
        let (n1, n2) = (per * 2 * i * h, per * h * i);
        let experts = self.host.w2.len() / (h * i);
        let (s1, s2) = (
            self.fc1_scales.len() / experts * per,
            self.fc2_scales.len() / experts * per,
        );
        let codes = |d: &CudaSlice<E4m3>, n: usize| {
            let all = g.stream.clone_dtoh(d).unwrap();
            g.stream.clone_htod(&all[rank * n..(rank + 1) * n]).unwrap()
        };
        Fp8Weights {
            host: ExpertWeights {
                w1: self.host.w1[rank * n1..(rank + 1) * n1].to_vec(),
                w2: self.host.w2[rank * n2..(rank + 1) * n2].to_vec(),
            },
            fc1: codes(&self.fc1, n1),
            fc2: codes(&self.fc2, n2),
            fc1_scales: self.fc1_scales[rank * s1..(rank + 1) * s1].to_vec(),
            fc2_scales: self.fc2_scales[rank * s2..(rank + 1) * s2].to_vec(),
        }
    }
}

/// An fp8 layer for this machine: `Some` where it runs; else the refusal is checked (the
/// bf16 layer's, or KernelsNotBuilt in a build without sm90-moe-fp8) and `None` returned.
fn fp8_layer_here<'w>(
    g: &Gpu,
    cfg: CutlassMoeConfig,
    w: &'w Fp8Weights,
    a: Inputs,
    test: &str,
) -> Option<CutlassMoe<CudaView<'w, E4m3>>> {
    fp8_here(
        g,
        cfg,
        w,
        test,
        CutlassMoe::new_fp8(cfg, w.views(), &w.scales(a)),
    )
}

/// `made`, an fp8 layer of `w`'s weights: `Some` where it runs; else the refusal is checked
/// (off Hopper the bf16 layer is refused the same way, which layer_here checks; in a build
/// without sm90-moe-fp8 it answers KernelsNotBuilt) and `None` returned.
pub(crate) fn fp8_here<'w>(
    g: &Gpu,
    cfg: CutlassMoeConfig,
    w: &Fp8Weights,
    test: &str,
    made: flashinfer_rs::Result<CutlassMoe<CudaView<'w, E4m3>>>,
) -> Option<CutlassMoe<CudaView<'w, E4m3>>> {
    match made {
        Ok(layer) => {
            assert!(flashinfer_rs::build_info().cutlass_moe_fp8);
            Some(layer)
        }
        Err(e) => {
            let probe = |n| upload(g, &vec![0.0; n]);
            let (fc1, fc2) = (probe(w.fc1.len()), probe(w.fc2.len()));
            let bf16_weights = CutlassWeights {
                fc1: fc1.as_view(),
                fc2: fc2.as_view(),
            };
            layer_here(cfg, bf16_weights, test)?;
            panic!("{test}: the bf16 layer runs here but the fp8 one was refused: {e:?}")
        }
    }
}

/// The reference output of `d` (its oracle routing) on the fp8 operands, over the local
/// experts.
fn reference(
    cfg: &CutlassMoeConfig,
    d: &CaseData,
    x: &[f32],
    w: &ExpertWeights,
    a: Inputs,
) -> Vec<f32> {
    // As the kernel: x times the reciprocal scale, rounded to e4m3 (saturating).
    let quant = 1.0 / a.a1;
    let xq: Vec<f32> = x
        .iter()
        .map(|&v| E4m3::from_f32(v * quant).to_f32() * a.a1)
        .collect();
    let ids: Vec<usize> = d.want.ids.iter().map(|&e| e as usize).collect();
    let rounding = ActivationRounding::Fp8PerTensorBf16Gemm1 { scale: 1.0 / a.a2 };
    reference_of(cfg, d.tokens, &xq, &ids, &d.want.weights, w, rounding)
}

/// The fp8 criteria (module doc) on each token's outputs over its routing weights' magnitude
/// `max(1, sum |w|)`: an expert's rounding errors reach the output times its weight, and
/// TopK's weights (raw logits) and Sigmoid's (each near 1) add up to several. So the absolute
/// part of the tolerance scales with it: `|ref - out| <= m (atol) + rtol |out|`. The largest
/// scaled error, for the log.
pub(crate) fn fp8_check(
    want: &[f32],
    got: &[f32],
    weights: &[f32],
    top_k: usize,
) -> Result<f32, String> {
    let hidden = want.len() / (weights.len() / top_k).max(1);
    let magnitude = |n: usize| {
        let t = n / hidden;
        let sum: f32 = weights[t * top_k..(t + 1) * top_k]
            .iter()
            .map(|w| w.abs())
            .sum();
        sum.max(1.0)
    };
    let scaled = |v: &[f32]| -> Vec<f32> {
        v.iter()
            .enumerate()
            .map(|(n, x)| x / magnitude(n))
            .collect()
    };
    let (want, got) = (scaled(want), scaled(got));
    moe_oracle::check_accuracy(&want, &got, ATOL, RTOL, 0.99)?;
    moe_oracle::check_accuracy(&want, &got, 4.0 * ATOL, 4.0 * RTOL, 1.0)?;
    Ok(want
        .iter()
        .zip(&got)
        .map(|(w, g)| (w - g).abs())
        .fold(0.0, f32::max))
}

/// The fp8 tests' cases on one GPU (per-tensor and block scale): how many passed, why the
/// others failed, and the largest scaled error of the passes (for the log).
pub(crate) struct Tally<'g> {
    g: &'g Gpu,
    passed: usize,
    failures: Vec<String>,
    worst: f32,
}

impl<'g> Tally<'g> {
    pub(crate) fn new(g: &'g Gpu) -> Self {
        Tally {
            g,
            passed: 0,
            failures: Vec::new(),
            worst: 0.0,
        }
    }

    /// One case: `d`'s routing and hidden states `x` through `layer` (scales `a`, dequantised
    /// weights `w`) against the reference; failures are named by `label`.
    fn case(
        &mut self,
        layer: &CutlassMoe<CudaView<'_, E4m3>>,
        w: &ExpertWeights,
        a: Inputs,
        d: &CaseData,
        x: &[f32],
        label: impl FnOnce() -> String,
    ) {
        let want = reference(&layer.config(), d, x, w, a);
        self.against(layer, d, x, &want, label);
    }

    /// One case against the reference output `want`.
    pub(crate) fn against(
        &mut self,
        layer: &CutlassMoe<CudaView<'_, E4m3>>,
        d: &CaseData,
        x: &[f32],
        want: &[f32],
        label: impl FnOnce() -> String,
    ) {
        match verdict(self.g, layer, d, x, want) {
            Ok(e) => {
                self.passed += 1;
                self.worst = self.worst.max(e);
            }
            Err(why) => self.failures.push(format!("{}: {why}", label())),
        }
    }

    pub(crate) fn report(self, test: &str) {
        eprintln!("{test}: largest |reference - output| {}", self.worst);
        report(test, self.passed, self.failures);
    }
}

/// One case on `layer`: with and without replay. The largest scaled error when it passes.
fn verdict(
    g: &Gpu,
    layer: &CutlassMoe<CudaView<'_, E4m3>>,
    d: &CaseData,
    x: &[f32],
    want: &[f32],
) -> Result<f32, String> {
    let mut ws = layer.workspace(&g.stream).unwrap();
    let xd = upload(g, x);
    let inputs = DeviceInputs::upload(&g.stream, d);
    let with = forward(g, layer, &mut ws, &inputs, &xd, d.tokens, true).unwrap();
    let without = forward(g, layer, &mut ws, &inputs, &xd, d.tokens, false).unwrap();
    if with.output != without.output {
        return Err("output differs with and without replay".into());
    }
    let k = layer.config().routing.top_k as usize;
    let replay = with.replay.as_ref().unwrap();
    if replay[d.tokens * k..]
        .iter()
        .any(|&v| v != crate::routing::SENTINEL)
    {
        return Err("a replay row past num_tokens was written".into());
    }
    if replay[..d.tokens * k] != d.want.ids[..] {
        return Err("replay ids differ from the oracle's".into());
    }
    fp8_check(want, &to_f32(&with.output), &d.want.weights, k)
}

/// Every routing method x {64, 128} experts x {1, 7, 64, 257, 2048} tokens, then saturated
/// hidden states (input scale a quarter of their range) at 257 tokens.
#[test]
fn fp8_every_method_and_token_count_matches_the_reference() {
    let test = "cutlass_moe_fp8::fp8_every_method_and_token_count_matches_the_reference";
    let Some(g) = gpu(test) else { return };
    let (h, i) = (256, 128);
    let mut tally = Tally::new(&g);
    for (e, k) in [(64u32, 6u32), (128, 8)] {
        let w = fp8_weights(&g, e as usize, h, i, 500 + e as u64);
        let probe = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        if fp8_layer_here(&g, config(probe, h, i, 1), &w, FITTING, test).is_none() {
            return;
        }
        for (n, m) in one_per_method().into_iter().enumerate() {
            let k = if m.top_k == 1 { 1 } else { k };
            let routing = RoutingConfig::new(m.method, e, k);
            if flashinfer_rs::routing::TopKRouter::new(routing).is_err() {
                continue;
            }
            let cfg = config(routing, h, i, 2048);
            let layer = CutlassMoe::new_fp8(cfg, w.views(), &w.scales(FITTING)).unwrap();
            for t in [1, 7, 64, 257, 2048] {
                let seed = e as u64 * 1000 + n as u64 * 10 + t as u64;
                let d = case(&cfg.routing, t, seed);
                let x = values(&mut SplitMix64(seed ^ 0x5eed), t * h, 1.0);
                tally.case(&layer, &w.host, FITTING, &d, &x, || {
                    format!("{} E={e} K={k} T={t}", m.method.name())
                });
            }
        }
    }
    // Saturation: |x| up to 1 with a scale for 0.25: most codes clamp to ±448.
    let (e, k, t) = (64u32, 6u32, 257);
    let w = fp8_weights(&g, e as usize, h, i, 77);
    let tight = Inputs {
        a1: 0.25 / 448.0,
        ..FITTING
    };
    let cfg = config(
        RoutingConfig::new(RoutingMethod::Renormalize, e, k),
        h,
        i,
        t,
    );
    let layer = CutlassMoe::new_fp8(cfg, w.views(), &w.scales(tight)).unwrap();
    let d = case(&cfg.routing, t, 78);
    let x = values(&mut SplitMix64(79), t * h, 1.0);
    tally.case(&layer, &w.host, tight, &d, &x, || "saturated input".into());
    tally.report(test);
}

/// Every tactic of the fp8 GEMMs, fixed for every call (`CutlassSchedule::Tactics`), as
/// cutlass_moe's every_tactic_matches_the_reference does for bf16: GEMM 1's each with GEMM 2's
/// first and GEMM 2's each with GEMM 1's first, at 1, 37 and 300 tokens (mean rows per expert
/// 0.25, 9 and 75); an index past the last is refused.
#[test]
fn fp8_every_tactic_matches_the_reference() {
    let test = "cutlass_moe_fp8::fp8_every_tactic_matches_the_reference";
    let Some(g) = gpu(test) else { return };
    let (h, i, e, k) = (256, 128, 16u32, 4u32);
    let w = fp8_weights(&g, e as usize, h, i, 90);
    let cfg = config(
        RoutingConfig::new(RoutingMethod::Renormalize, e, k),
        h,
        i,
        300,
    );
    let Some(layer) = fp8_layer_here(&g, cfg, &w, FITTING, test) else {
        return;
    };
    let (t1, t2) = layer.tactics().unwrap();
    let (n1, n2) = (t1.len() as u32, t2.len() as u32);
    let fixed = |pair: (u32, u32)| {
        let schedule = CutlassSchedule::Tactics(pair.0, pair.1);
        CutlassMoe::fp8_with_schedule(cfg, w.views(), &w.scales(FITTING), schedule)
    };
    let mut tally = Tally::new(&g);
    for (a, c) in tactic_pairs(n1, n2) {
        let layer = fixed((a, c)).unwrap();
        for t in [1, 37, 300] {
            let seed = 910 + t as u64;
            let d = case(&cfg.routing, t, seed);
            let x = values(&mut SplitMix64(seed ^ 0x5eed), t * h, 1.0);
            tally.case(&layer, &w.host, FITTING, &d, &x, || {
                format!(
                    "tactics {a} ({}) / {c} ({}) T={t}",
                    t1[a as usize], t2[c as usize]
                )
            });
        }
    }
    for bad in [(n1, 0), (0, n2)] {
        match fixed(bad) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("{test}: tactics {bad:?} of {n1} x {n2}: {:?}", other.err()),
        }
    }
    tally.report(test);
}

/// The expert-parallel tests' cases, for both fp8 formats: a layer of 128 experts (top-8,
/// hidden 256, intermediate 128) made by `weights(local, h, i, seed)`, split into four ranks of
/// 32; `run(config, the rank's weights, case, hidden states, rank)` on each rank's layer at 257
/// tokens. Nothing runs where `here` says the whole layer does not.
pub(crate) fn expert_parallel_cases(
    g: &Gpu,
    weights: impl Fn(usize, usize, usize, u64) -> Fp8Weights,
    here: impl FnOnce(CutlassMoeConfig, &Fp8Weights) -> bool,
    run: &mut impl FnMut(CutlassMoeConfig, &Fp8Weights, &CaseData, &[f32], usize),
) {
    let (e, k, h, i, t) = (128u32, 8u32, 256, 128, 257);
    let all = weights(e as usize, h, i, 11);
    let full = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
    if !here(config(full, h, i, t), &all) {
        return;
    }
    let d = case(&full, t, 12);
    let x = values(&mut SplitMix64(13), t * h, 1.0);
    let per = (e / 4) as usize;
    for rank in 0..4 {
        let w = all.rank_slice(g, rank, per, h, i);
        let routing = full.with_local_experts((rank * per) as u32, per as u32);
        run(config(routing, h, i, t), &w, &d, &x, rank);
    }
}

/// Four ranks of 32 experts each, every rank's output against the reference over its own
/// experts.
#[test]
fn fp8_expert_parallel_ranks_sum_only_their_experts() {
    let test = "cutlass_moe_fp8::fp8_expert_parallel_ranks_sum_only_their_experts";
    let Some(g) = gpu(test) else { return };
    let mut tally = Tally::new(&g);
    let weights = |local, h, i, seed| fp8_weights(&g, local, h, i, seed);
    let here = |cfg, w: &Fp8Weights| fp8_layer_here(&g, cfg, w, FITTING, test).is_some();
    expert_parallel_cases(&g, weights, here, &mut |cfg, w, d, x, rank| {
        let layer = CutlassMoe::new_fp8(cfg, w.views(), &w.scales(FITTING)).unwrap();
        tally.case(&layer, &w.host, FITTING, d, x, || format!("rank {rank}"));
    });
    tally.report(test);
}

/// `CutlassSchedule::BatchInvariant` on fp8 weights: the rows of calls on the first 1, 3, 7,
/// 64 and 257 tokens of a 300-token batch are bit for bit those of one call on all 300 (the
/// inputs' scale is static, so quantising them is per element too).
#[test]
fn fp8_batch_invariant_rows_do_not_depend_on_the_rest_of_the_batch() {
    let test = "cutlass_moe_fp8::fp8_batch_invariant_rows_do_not_depend_on_the_rest_of_the_batch";
    let Some(g) = gpu(test) else { return };
    let (h, i, t) = (512, 256, BATCH_TOKENS);
    let w = fp8_weights(&g, 128, h, i, 31);
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8);
    let cfg = config(routing, h, i, t);
    if fp8_layer_here(&g, cfg, &w, FITTING, test).is_none() {
        return;
    }
    let d = case(&routing, t, 32);
    let x = values(&mut SplitMix64(33), t * h, 1.0);
    let scales = w.scales(FITTING);
    let schedule = CutlassSchedule::BatchInvariant;
    let invariant = CutlassMoe::fp8_with_schedule(cfg, w.views(), &scales, schedule).unwrap();
    let fastest = CutlassMoe::new_fp8(cfg, w.views(), &scales).unwrap();
    assert_batch_invariant(&g, test, [&invariant, &fastest], &d, &x);
}

/// The capture test's serving loop on an fp8 layer: every collected row (ids and weights) is
/// the oracle's routing of its step's logits.
#[test]
fn fp8_a_capture_store_records_the_routing_the_layers_used() {
    let test = "cutlass_moe_fp8::fp8_a_capture_store_records_the_routing_the_layers_used";
    let Some(g) = gpu(test) else { return };
    let (e, k, h, i) = CAPTURE_SHAPE;
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
    let w = fp8_weights(&g, e as usize, h, i, 60);
    let cfg = config(routing, h, i, CAPTURE_TOKENS);
    let Some(layer) = fp8_layer_here(&g, cfg, &w, FITTING, test) else {
        return;
    };
    capture_store_records_the_routing(&g, &layer, test);
}

/// Three fp8 layers chained in a CUDA graph, replayed with fresh inputs, at 57 tokens (grouped
/// GEMMs) and 3 (decode kernels).
#[test]
fn fp8_a_graph_of_layers_reruns_with_fresh_inputs() {
    let test = "cutlass_moe_fp8::fp8_a_graph_of_layers_reruns_with_fresh_inputs";
    let Some(g) = gpu(test) else { return };
    let (h, i) = GRAPH_SIZES;
    let ws: Vec<Fp8Weights> = (0..3).map(|l| fp8_weights(&g, 64, h, i, 40 + l)).collect();
    for t in [57, 3] {
        if fp8_layer_here(&g, config(graph_routing(), h, i, t), &ws[0], FITTING, test).is_none() {
            return;
        }
        let moes: Vec<_> = ws
            .iter()
            .map(|w| {
                let cfg = config(graph_routing(), h, i, t);
                CutlassMoe::new_fp8(cfg, w.views(), &w.scales(FITTING)).unwrap()
            })
            .collect();
        assert_eq!(moes[0].decode_max_tokens() >= t, t == 3);
        graph_of_layers(&g, test, t, &moes);
    }
}

/// The decode tests' cases, for both fp8 formats: `run(name, config, weights, tokens, seed)` on
/// token counts 1-64 (experts shared by many tokens) of a 16-expert layer of sizes `small`, on a
/// Qwen3-30B-A3B-sized layer at 1 and 4 tokens, on rank 2 of 4 of it at 3, and on rows of
/// DeepSeek-V3's hidden size (7168: more than one round of loads per lane in GEMM 1) at 1 and 3
/// tokens; `weights(local,
/// h, i, seed)` makes a layer's weights, `here` says whether such a layer runs on this machine
/// (else nothing runs).
pub(crate) fn decode_cases(
    g: &Gpu,
    small: (usize, usize),
    weights: impl Fn(usize, usize, usize, u64) -> Fp8Weights,
    here: impl FnOnce(CutlassMoeConfig, &Fp8Weights) -> bool,
    run: &mut impl FnMut(&str, CutlassMoeConfig, &Fp8Weights, usize, u64),
) {
    let (h, i) = small;
    let w = weights(16, h, i, 21);
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, 16, 4);
    if !here(config(routing, h, i, 64), &w) {
        return;
    }
    // Each token count of a layer, seeded `seed + tokens`.
    let mut each = |name: &str, cfg, w: &Fp8Weights, tokens: &[usize], seed: u64| {
        for &t in tokens {
            run(name, cfg, w, t, seed + t as u64);
        }
    };
    each(
        "16 experts",
        config(routing, h, i, 64),
        &w,
        &[1, 2, 3, 4, 7, 33, 64],
        22,
    );
    let (h, i) = (2048, 768);
    let qwen = weights(128, h, i, 23);
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8);
    each("Qwen3-sized", config(routing, h, i, 4), &qwen, &[1, 4], 24);
    let rank = qwen.rank_slice(g, 2, 32, h, i);
    let routing = routing.with_local_experts(64, 32);
    each("rank 2 of 4", config(routing, h, i, 4), &rank, &[3], 22);
    let (h, i) = (7168, 256);
    let wide = weights(8, h, i, 26);
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, 8, 2);
    each("hidden 7168", config(routing, h, i, 4), &wide, &[1, 3], 27);
}

/// The decode kernels on fp8 weights, forced onto every call: odd token counts up to 64 (experts
/// shared by many tokens), a Qwen3-30B-A3B-sized layer, one expert-parallel rank of four, and
/// rows of DeepSeek-V3's hidden size (`decode_cases`).
#[test]
fn fp8_decode_kernels_match_the_reference() {
    let test = "cutlass_moe_fp8::fp8_decode_kernels_match_the_reference";
    let Some(g) = gpu(test) else { return };
    let mut tally = Tally::new(&g);
    let mut run = |name: &str, cfg: CutlassMoeConfig, w: &Fp8Weights, t: usize, seed: u64| {
        let layer = CutlassMoe::fp8_with_schedule(
            cfg,
            w.views(),
            &w.scales(FITTING),
            CutlassSchedule::DecodeUpTo(usize::MAX),
        )
        .unwrap();
        assert_eq!(layer.decode_max_tokens(), cfg.max_tokens);
        let d = case(&cfg.routing, t, seed);
        let x = values(&mut SplitMix64(seed ^ 0x5eed), t * cfg.hidden_size, 1.0);
        tally.case(&layer, &w.host, FITTING, &d, &x, || format!("{name} T={t}"));
    };
    // Not multiples of the loads' 512 and 32 x 16 columns.
    let weights = |local, h, i, seed| fp8_weights(&g, local, h, i, seed);
    let here = |cfg, w: &Fp8Weights| fp8_layer_here(&g, cfg, w, FITTING, test).is_some();
    decode_cases(&g, (320, 192), weights, here, &mut run);
    tally.report(test);
}

/// Scales the kernels cannot use are refused at construction.
#[test]
fn fp8_bad_scales_are_refused() {
    let test = "cutlass_moe_fp8::fp8_bad_scales_are_refused";
    let Some(g) = gpu(test) else { return };
    let (e, h, i) = (8u32, 64, 64);
    let w = fp8_weights(&g, e as usize, h, i, 5);
    let cfg = config(
        RoutingConfig::new(RoutingMethod::Renormalize, e, 2),
        h,
        i,
        4,
    );
    if fp8_layer_here(&g, cfg, &w, FITTING, test).is_none() {
        return;
    }
    let good = w.scales(FITTING);
    let bad = [
        CutlassFp8Scales {
            fc1_weights: vec![1.0; 7],
            ..good.clone()
        },
        CutlassFp8Scales {
            fc2_weights: vec![1.0; 9],
            ..good.clone()
        },
        CutlassFp8Scales {
            fc1_input: 0.0,
            ..good.clone()
        },
        CutlassFp8Scales {
            fc2_input: f32::NAN,
            ..good.clone()
        },
        CutlassFp8Scales {
            fc1_input: -1.0,
            ..good.clone()
        },
        CutlassFp8Scales {
            fc2_weights: vec![f32::INFINITY; 8],
            ..good.clone()
        },
        CutlassFp8Scales {
            fc1_weights: vec![1e-40; 8],
            ..good.clone()
        },
    ];
    for (n, s) in bad.iter().enumerate() {
        match CutlassMoe::new_fp8(cfg, w.views(), s) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("{test}: bad scales {n}: {other:?}"),
        }
    }
}
