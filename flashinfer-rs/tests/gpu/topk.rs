//! flashinfer-rs's own top-k router (`TopKRouter`) on the GPU against the CPU oracle
//! (`oracle::route_topk`: the models' reference routers, bias as given): the routing matrix
//! (every method, every (experts, top-k) of `routing::matrix`, token counts 1..16384, fp32 and
//! bf16 logits, every input regime), the numeric edges (sigmoid underflow, GLM-5-like biases,
//! NaN and infinities), the benchmark models at large batches (65536 tokens, and each lane
//! count of the large-batch kernel), a CUDA graph replay, a call that routes the previous
//! call's output (programmatic dependent launch), a token's routing the same bits whatever its
//! batch's size (and so whichever kernel routes it); and DeepSeekV2, which only this router
//! has (`deepseek_v2_configs`).
//! Every case runs with and without a replay buffer, and the outputs must be bit-identical.
use flashinfer_rs::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashinfer_rs::cudarc::driver::CudaSlice;
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::{self, Regime};
use flashinfer_rs::routing::{RouteInput, RoutingConfig, RoutingMethod, TopKOutputs, TopKRouter};
use flashinfer_rs::ReplayView;

use crate::common::{env_list, gpu, report, Gpu};
use crate::degenerate::{one_per_method, sigmoid_gated, special_logits, PATTERNS};
use crate::models;
use crate::routing::{
    case_data_for, cases_in_parallel, label, matrix, methods_for, weight_matches, CaseData,
    DeviceInputs, REGIMES, SENTINEL, SPARE_ROWS, TOKENS,
};

/// What one top-k call wrote, downloaded.
#[derive(PartialEq)]
struct Outcome {
    /// The whole replay buffer (spare rows included), when one was passed.
    replay: Option<Vec<i16>>,
    ids: Vec<i32>,
    weights_f32: Vec<u32>,
    weights_bf16: Vec<u16>,
}

fn run(
    g: &Gpu,
    router: &TopKRouter,
    inputs: &DeviceInputs,
    tokens: usize,
    with_replay: bool,
) -> Result<Outcome, String> {
    let s = &g.stream;
    let k = router.config().top_k as usize;
    let n = tokens * k;
    let mut ids = s.clone_htod(&vec![-7i32; n.max(1)]).unwrap();
    let mut wf = s.alloc_zeros::<f32>(n.max(1)).unwrap();
    let mut wb = s.alloc_zeros::<bf16>(n.max(1)).unwrap();
    let mut replay = s
        .clone_htod(&vec![SENTINEL; (tokens + SPARE_ROWS) * k])
        .unwrap();
    let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
    let mut out = TopKOutputs {
        ids: Some(ids.as_view_mut()),
        weights_f32: Some(wf.as_view_mut()),
        weights_bf16: Some(wb.as_view_mut()),
    };
    router
        .route(
            s,
            &inputs.input(tokens),
            &mut out,
            with_replay.then_some(&mut view),
        )
        .map_err(|e| format!("route failed: {e}"))?;
    Ok(Outcome {
        replay: with_replay.then(|| s.clone_dtoh(&replay).unwrap()),
        ids: s.clone_dtoh(&ids).unwrap()[..n].to_vec(),
        weights_f32: s.clone_dtoh(&wf).unwrap()[..n]
            .iter()
            .map(|w| w.to_bits())
            .collect(),
        weights_bf16: s.clone_dtoh(&wb).unwrap()[..n]
            .iter()
            .map(|w| w.to_bits())
            .collect(),
    })
}

/// `None` when the outcome is the oracle's: ids (int32 and the replay view), fp32 weights
/// within bf16 rounding (NaN and infinities exactly), bf16 weights the fp32 ones rounded, and
/// the replay buffer's spare rows untouched.
fn compare(cfg: &RoutingConfig, d: &CaseData, got: &Outcome) -> Option<String> {
    let k = cfg.top_k as usize;
    let t = d.tokens;
    if let Some(replay) = &got.replay {
        if replay[t * k..].iter().any(|&x| x != SENTINEL) {
            return Some("a row past num_tokens was written".into());
        }
        if replay[..t * k]
            .iter()
            .zip(&got.ids)
            .any(|(&a, &b)| i32::from(a) != b)
        {
            return Some("the replay ids differ from the int32 ids".into());
        }
    }
    let bad_bf16 = got
        .weights_f32
        .iter()
        .zip(&got.weights_bf16)
        .position(|(&f, &b)| {
            let (f, b) = (bf16::from_f32(f32::from_bits(f)), bf16::from_bits(b));
            // NaN payloads may differ between the device's and `half`'s rounding.
            f.to_bits() != b.to_bits() && !(f.is_nan() && b.is_nan())
        });
    if let Some(i) = bad_bf16 {
        return Some(format!(
            "bf16 weight {i} is not the fp32 weight rounded: {} vs {}",
            bf16::from_bits(got.weights_bf16[i]),
            f32::from_bits(got.weights_f32[i])
        ));
    }
    let bad: Vec<usize> = (0..t)
        .filter(|&r| {
            (r * k..(r + 1) * k).any(|i| {
                got.ids[i] != i32::from(d.want.ids[i])
                    || !weight_matches(f32::from_bits(got.weights_f32[i]), d.want.weights[i])
            })
        })
        .collect();
    let &first = bad.first()?;
    let span = first * k..(first + 1) * k;
    let w: Vec<f32> = got.weights_f32[span.clone()]
        .iter()
        .map(|&b| f32::from_bits(b))
        .collect();
    Some(format!(
        "{} of {t} tokens differ (tokens {:?}{}); token {first}: ids {:?} weights {w:?}, oracle ids {:?} weights {:?}",
        bad.len(),
        &bad[..bad.len().min(16)],
        if bad.len() > 16 { ", ..." } else { "" },
        &got.ids[span.clone()],
        &d.want.ids[span.clone()],
        &d.want.weights[span],
    ))
}

/// Routes `d` with and without a replay buffer; `None` when both are the oracle's and
/// bit-identical.
fn verdict(g: &Gpu, router: &TopKRouter, d: &CaseData) -> Option<String> {
    let inputs = DeviceInputs::upload(&g.stream, d);
    match (
        run(g, router, &inputs, d.tokens, true),
        run(g, router, &inputs, d.tokens, false),
    ) {
        (Ok(with), Ok(without)) => compare(router.config(), d, &with).or_else(|| {
            (with.ids != without.ids
                || with.weights_f32 != without.weights_f32
                || with.weights_bf16 != without.weights_bf16)
                .then(|| "outputs differ with and without replay".to_string())
        }),
        (Err(e), _) | (_, Err(e)) => Some(e),
    }
}

/// Every config of `configs` x `tokens` x applicable regime x logits dtype.
fn run_matrix(
    g: &Gpu,
    test: &str,
    configs: &[RoutingConfig],
    tokens: &[usize],
    regimes: &[Regime],
) {
    let (mut passed, mut failures) = (0usize, Vec::new());
    for (ci, cfg) in configs.iter().enumerate() {
        let router = TopKRouter::new(*cfg).unwrap();
        for (ri, &regime) in regimes.iter().enumerate() {
            if !regime.applies_to(&cfg.method) {
                continue;
            }
            let data = cases_in_parallel(
                oracle::route_topk,
                cfg,
                regime,
                tokens,
                (ci * 4 + ri) as u64,
                7,
            );
            for d in &data {
                match verdict(g, &router, d) {
                    None => passed += 1,
                    Some(why) => failures.push(format!("{}: {why}", label(cfg, regime, d))),
                }
            }
        }
    }
    report(test, passed, failures);
}

#[test]
fn every_method_and_shape_matches_the_oracle() {
    let test = "topk::every_method_and_shape_matches_the_oracle";
    let Some(g) = gpu(test) else {
        return;
    };
    let tokens = env_list("FLASHINFER_RS_ROUTING_TOKENS", &TOKENS);
    run_matrix(&g, test, &matrix(), &tokens, &REGIMES);
}

/// fp32 rows of 257-384 experts take 12 slots a lane: three 4-value chunks (260 experts, whose
/// last chunks cover only some lanes; 300) or twelve single values (383: not whole chunks, no
/// vector loads). Every method that admits more than 256 experts (Renormalize,
/// RenormalizeNaive, MiniMax2, ungrouped DeepSeekV3: `validate` keeps them) at top-1, 8 and 22,
/// every regime, fp32 and bf16 logits (bf16 rows keep 16 slots), against the oracle. The
/// matrix's 384 reaches the whole-row case.
#[test]
fn rows_of_257_to_384_experts_match_the_oracle() {
    let test = "topk::rows_of_257_to_384_experts_match_the_oracle";
    let Some(g) = gpu(test) else {
        return;
    };
    let configs: Vec<RoutingConfig> = [260u32, 300, 383]
        .into_iter()
        .flat_map(|e| {
            methods_for(e)
                .into_iter()
                .flat_map(move |m| [1u32, 8, 22].map(move |k| RoutingConfig::new(m, e, k)))
        })
        .filter(|cfg| cfg.validate().is_ok())
        .collect();
    run_matrix(&g, test, &configs, &[1, 37, 4096], &REGIMES);
}

/// DeepSeekV2 (flashinfer-rs's own method, not in `matrix()`: upstream's routers refuse it):
/// DeepSeek-V2-Lite (64 experts, greedy, top 6), DeepSeek-V2 (160 experts, 8 groups, 3 kept,
/// top 6, scale 16), normalised and one-expert-per-group forms, and the largest shapes.
pub fn deepseek_v2_configs() -> Vec<RoutingConfig> {
    let v2 = |n_group, topk_group, scale, norm, e, k| {
        RoutingConfig::new(
            RoutingMethod::DeepSeekV2 {
                n_group,
                topk_group,
                routed_scaling_factor: scale,
                norm_topk_prob: norm,
            },
            e,
            k,
        )
    };
    vec![
        v2(1, 1, 1.0, false, 64, 6),   // DeepSeek-V2-Lite
        v2(8, 3, 16.0, false, 160, 6), // DeepSeek-V2
        v2(8, 3, 16.0, true, 160, 6),
        v2(1, 1, 2.5, true, 256, 8),
        v2(8, 4, 1.0, false, 256, 8),
        v2(8, 8, 1.0, true, 64, 8),
        v2(4, 1, 1.0, false, 8, 1),
        v2(8, 2, 1.0, false, 8, 2), // one expert per group
        v2(4, 2, 1.0, false, 12, 5),
    ]
}

#[test]
fn deepseek_v2_matches_the_oracle() {
    let test = "topk::deepseek_v2_matches_the_oracle";
    let Some(g) = gpu(test) else {
        return;
    };
    let tokens = env_list("FLASHINFER_RS_ROUTING_TOKENS", &TOKENS);
    run_matrix(&g, test, &deepseek_v2_configs(), &tokens, &REGIMES);
}

/// The benchmark models at large batches: 65536 tokens, and batches that give the large-batch
/// kernel (`topk_rows` in topk_router.cu: the bf16-keyed methods from 32 tokens an SM) each of
/// its lane counts on this device. It takes the fewest of 1, 2, 4, 8 lanes a token with
/// tokens x lanes >= 512 x SMs, so 64, 160, 300 and 520 tokens an SM give 8, 4, 2 and 1.
/// `FLASHINFER_RS_TOPK_LARGE_TOKENS` overrides the list.
#[test]
fn the_benchmark_models_match_the_oracle_at_large_batches() {
    let test = "topk::the_benchmark_models_match_the_oracle_at_large_batches";
    let Some(g) = gpu(test) else {
        return;
    };
    let sms = flashinfer_rs::device_info(&g.ctx).unwrap().sm_count as usize;
    let per_sm: Vec<usize> = [64, 160, 300, 520].iter().map(|n| n * sms).collect();
    let default: Vec<usize> = per_sm.into_iter().chain([65536]).collect();
    let configs: Vec<RoutingConfig> = models::bench_models().iter().map(|m| m.cfg).collect();
    let tokens = env_list("FLASHINFER_RS_TOPK_LARGE_TOKENS", &default);
    run_matrix(&g, test, &configs, &tokens, &[Regime::Separated]);
}

/// A token's routing does not depend on the size of its batch: the benchmark models' rows routed
/// in a batch of 40 tokens an SM (the large-batch kernel, `topk_rows`, where the keys are bf16
/// logits) and the same first 64 rows routed alone (the warp-per-token kernel, but at top-1)
/// give bit-identical ids and weights, and the large batch equals the oracle.
#[test]
fn a_tokens_routing_does_not_depend_on_its_batch_size() {
    let test = "topk::a_tokens_routing_does_not_depend_on_its_batch_size";
    let Some(g) = gpu(test) else {
        return;
    };
    let sms = flashinfer_rs::device_info(&g.ctx).unwrap().sm_count as usize;
    let (large, small) = (40 * sms, 64);
    let (mut passed, mut failures) = (0usize, Vec::new());
    for (ci, m) in models::bench_models().iter().enumerate() {
        let router = TopKRouter::new(m.cfg).unwrap();
        let k = m.cfg.top_k as usize;
        for regime in [Regime::Separated, Regime::Extreme] {
            if !regime.applies_to(&m.cfg.method) {
                continue;
            }
            let cases =
                cases_in_parallel(oracle::route_topk, &m.cfg, regime, &[large], ci as u64, 11);
            for d in &cases {
                let inputs = DeviceInputs::upload(&g.stream, d);
                let why = match (
                    run(&g, &router, &inputs, large, false),
                    run(&g, &router, &inputs, small, false),
                ) {
                    (Ok(all), Ok(first)) => compare(&m.cfg, d, &all).or_else(|| {
                        let n = small * k;
                        (all.ids[..n] != first.ids[..]
                            || all.weights_f32[..n] != first.weights_f32[..]
                            || all.weights_bf16[..n] != first.weights_bf16[..])
                            .then(|| format!("the first {small} rows differ from those of {large}"))
                    }),
                    (Err(e), _) | (_, Err(e)) => Some(e),
                };
                match why {
                    None => passed += 1,
                    Some(why) => failures.push(format!("{}: {why}", label(&m.cfg, regime, d))),
                }
            }
        }
    }
    report(test, passed, failures);
}

#[test]
fn sigmoid_underflow_and_large_biases_match_the_oracle() {
    let test = "topk::sigmoid_underflow_and_large_biases_match_the_oracle";
    let Some(g) = gpu(test) else {
        return;
    };
    let tokens = env_list("FLASHINFER_RS_ROUTING_TOKENS", &crate::degenerate::TOKENS);
    run_matrix(
        &g,
        test,
        &sigmoid_gated(),
        &tokens,
        &[Regime::Underflow, Regime::LargeBias],
    );
}

#[test]
fn nan_and_infinite_logits_route_as_the_oracle_documents() {
    let test = "topk::nan_and_infinite_logits_route_as_the_oracle_documents";
    let Some(g) = gpu(test) else {
        return;
    };
    let (mut passed, mut failures) = (0usize, Vec::new());
    let configs = one_per_method()
        .into_iter()
        .chain(deepseek_v2_configs().into_iter().take(3));
    for (ci, cfg) in configs.enumerate() {
        let cfg = &cfg;
        let router = TopKRouter::new(*cfg).unwrap();
        for &t in &[1usize, 5, 7, 17, 300, 5000] {
            for bf16_logits in [false, true] {
                let seed = (ci * 10_000 + t) as u64 * 2 + bf16_logits as u64;
                let logits = special_logits(cfg, t, bf16_logits, seed);
                let bias = cfg.method.needs_bias().then(|| {
                    let mut rng = oracle::SplitMix64(seed);
                    (0..cfg.num_experts)
                        .map(|_| (rng.unit() * 0.01) as f32)
                        .collect()
                });
                let d = CaseData::with_oracle(
                    cfg,
                    t,
                    bf16_logits,
                    logits,
                    bias,
                    false,
                    oracle::route_topk,
                );
                match verdict(&g, &router, &d) {
                    None => passed += 1,
                    Some(why) => failures.push(format!(
                        "{} (token t carries PATTERNS[t % 7] of {PATTERNS:?}): {why}",
                        label(cfg, Regime::Separated, &d),
                    )),
                }
            }
        }
    }
    report(test, passed, failures);
}

/// A graph of one top-k call replayed over fresh logits: every replay equals the oracle.
#[test]
fn a_graphed_top_k_call_reruns_with_fresh_logits() {
    let test = "topk::a_graphed_top_k_call_reruns_with_fresh_logits";
    let Some(g) = gpu(test) else {
        return;
    };
    let s = &g.stream;
    for model in [models::deepseek_v3(), models::qwen3_30b_a3b()] {
        let cfg = model.cfg;
        let (t, k) = (1000usize, cfg.top_k as usize);
        let router = TopKRouter::new(cfg).unwrap();
        let first = case_data_for(oracle::route_topk, &cfg, Regime::Separated, t, false, 1);
        let mut inputs = DeviceInputs::upload(s, &first);
        let mut ids = s.alloc_zeros::<i32>(t * k).unwrap();
        let mut wf = s.alloc_zeros::<f32>(t * k).unwrap();
        let mut replay = s.clone_htod(&vec![SENTINEL; (t + SPARE_ROWS) * k]).unwrap();
        s.synchronize().unwrap();
        unsafe { g.ctx.disable_event_tracking() };
        s.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .unwrap();
        {
            let mut out = TopKOutputs {
                ids: Some(ids.as_view_mut()),
                weights_f32: Some(wf.as_view_mut()),
                weights_bf16: None,
            };
            let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
            router
                .route(s, &inputs.input(t), &mut out, Some(&mut view))
                .unwrap();
        }
        let graph = s
            .end_capture(CUgraphInstantiate_flags(0))
            .unwrap()
            .expect("a captured graph");
        for n in 0..5u64 {
            let fresh = case_data_for(
                oracle::route_topk,
                &cfg,
                Regime::Separated,
                t,
                false,
                100 + n,
            );
            inputs.overwrite_logits(s, &fresh);
            graph.launch().unwrap();
            let got = Outcome {
                replay: Some(s.clone_dtoh(&replay).unwrap()),
                ids: s.clone_dtoh(&ids).unwrap(),
                weights_f32: s
                    .clone_dtoh(&wf)
                    .unwrap()
                    .iter()
                    .map(|w| w.to_bits())
                    .collect(),
                // Not written by this call: the fp32 weights rounded, for `compare`.
                weights_bf16: s
                    .clone_dtoh(&wf)
                    .unwrap()
                    .iter()
                    .map(|&w| bf16::from_f32(w).to_bits())
                    .collect(),
            };
            if let Some(why) = compare(&cfg, &fresh, &got) {
                panic!("{}: graph replay {n}: {why}", model.name);
            }
        }
        unsafe { g.ctx.enable_event_tracking() };
        eprintln!("{test}: {}: 5 graph replays matched the oracle", model.name);
    }
}

/// Two top-k calls back to back on one stream, the second routing what the first wrote (its
/// fp32 weights as logits) with nothing between them: with `use_pdl` the second's grid may
/// start while the first drains, and must still read all of the first's output. 65536 tokens
/// (a first call long enough for an early start to show), PDL on and off, the first call's
/// output filled with NaN beforehand; each call against the oracle (`route_topk`), the
/// second's on what the first wrote. The first is MiniMax2 with GLM-5-like biases, which
/// select while the weights come from the un-biased sigmoids, so the weights are not in the
/// order of the keys and the second's choice is not simply the first columns (on the CPU
/// oracle: a different set of 8 for each of 1000 tokens).
#[test]
fn a_top_k_call_reading_the_previous_calls_output_waits_for_it() {
    let test = "topk::a_top_k_call_reading_the_previous_calls_output_waits_for_it";
    let Some(g) = gpu(test) else {
        return;
    };
    let s = &g.stream;
    let t = 65536usize;
    let method = RoutingMethod::MiniMax2 {
        routed_scaling_factor: 2.5,
    };
    let download = |ids: &CudaSlice<i32>, w: &CudaSlice<f32>| {
        let weights_f32: Vec<u32> = s
            .clone_dtoh(w)
            .unwrap()
            .iter()
            .map(|w| w.to_bits())
            .collect();
        Outcome {
            replay: None,
            ids: s.clone_dtoh(ids).unwrap(),
            // Not written by these calls: the fp32 weights rounded, for `compare`.
            weights_bf16: weights_f32
                .iter()
                .map(|&w| bf16::from_f32(f32::from_bits(w)).to_bits())
                .collect(),
            weights_f32,
        }
    };
    for use_pdl in [true, false] {
        let mut first = RoutingConfig::new(method, 256, 32);
        let mut second = RoutingConfig::new(RoutingMethod::Renormalize, 32, 8);
        first.use_pdl = use_pdl;
        second.use_pdl = use_pdl;
        let (r1, r2) = (
            TopKRouter::new(first).unwrap(),
            TopKRouter::new(second).unwrap(),
        );
        for seed in 0..3u64 {
            let d1 = case_data_for(
                oracle::route_topk,
                &first,
                Regime::LargeBias,
                t,
                false,
                40 + seed,
            );
            let inputs = DeviceInputs::upload(s, &d1);
            let mut ids1 = s.alloc_zeros::<i32>(t * 32).unwrap();
            let mut w1 = s.clone_htod(&vec![f32::NAN; t * 32]).unwrap();
            let mut ids2 = s.alloc_zeros::<i32>(t * 8).unwrap();
            let mut w2 = s.alloc_zeros::<f32>(t * 8).unwrap();
            s.synchronize().unwrap();
            // The two calls, nothing between them.
            {
                let mut out1 = TopKOutputs {
                    ids: Some(ids1.as_view_mut()),
                    weights_f32: Some(w1.as_view_mut()),
                    weights_bf16: None,
                };
                r1.route(s, &inputs.input(t), &mut out1, None).unwrap();
            }
            {
                let middle = RouteInput {
                    logits: (&w1).into(),
                    bias: None,
                    num_tokens: t,
                };
                let mut out2 = TopKOutputs {
                    ids: Some(ids2.as_view_mut()),
                    weights_f32: Some(w2.as_view_mut()),
                    weights_bf16: None,
                };
                r2.route(s, &middle, &mut out2, None).unwrap();
            }
            let got1 = download(&ids1, &w1);
            if let Some(why) = compare(&first, &d1, &got1) {
                panic!("use_pdl {use_pdl}, seed {seed}: the first call: {why}");
            }
            let written: Vec<f32> = got1
                .weights_f32
                .iter()
                .map(|&b| f32::from_bits(b))
                .collect();
            let d2 =
                CaseData::with_oracle(&second, t, false, written, None, false, oracle::route_topk);
            if let Some(why) = compare(&second, &d2, &download(&ids2, &w2)) {
                panic!("use_pdl {use_pdl}, seed {seed}: the second call: {why}");
            }
        }
        eprintln!("{test}: use_pdl {use_pdl}: 3 chained pairs of 65536 tokens matched the oracle");
    }
}
