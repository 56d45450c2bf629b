//! DeepSeekV3 routing cross-checked against upstream's separate NoAuxTc router, built from
//! the same vendored tree: same experts, same order, same replay.
use flashinfer_rs::cudarc::driver::CudaSlice;
use flashinfer_rs::routing::oracle::{Regime, SplitMix64};
use flashinfer_rs::routing::{
    oracle, NoAuxTcOutputs, NoAuxTcRouter, RouteInput, Router, RoutingBuffers, RoutingConfig,
    RoutingMethod,
};
use flashinfer_rs::{Error, ReplayView};

use crate::common::{env_list, gpu, report, Gpu};
use crate::degenerate::{sigmoid_gated, special_logits, PATTERNS};
use crate::routing::{weight_matches, SENTINEL, SPARE_ROWS};

#[test]
fn deepseek_v3_agrees_with_upstreams_noaux_tc_router() {
    let Some(g) = gpu("deepseek_v3_agrees_with_upstreams_noaux_tc_router") else {
        return;
    };
    let mut cases = 0;
    for (e, n_group, topk_group, k) in [
        (256, 8, 4, 8),
        (256, 8, 4, 4),
        (128, 8, 4, 8),
        (64, 4, 2, 8),
        (384, 1, 1, 8),
        (256, 1, 1, 8),
    ] {
        let method = RoutingMethod::DeepSeekV3 {
            n_group,
            topk_group,
            routed_scaling_factor: 2.5,
        };
        let cfg = RoutingConfig::new(method, e, k);
        for tokens in [1usize, 5, 17, 256, 257, 4096] {
            let (logits, bias) =
                oracle::separated_logits(&cfg, tokens, false, e as u64 * 31 + tokens as u64)
                    .unwrap();
            let bias = bias.unwrap();
            let d_logits = g.stream.clone_htod(&logits).unwrap();
            let d_bias = g.stream.clone_htod(&bias).unwrap();
            let kk = k as usize;

            let router = Router::new(cfg).unwrap();
            let mut buffers = RoutingBuffers::new(&g.stream, &cfg, tokens).unwrap();
            let mut ours = g.stream.clone_htod(&vec![-1i16; tokens * kk]).unwrap();
            let input = RouteInput {
                logits: (&d_logits).into(),
                bias: Some((&d_bias).into()),
                num_tokens: tokens,
            };
            router
                .route(
                    &g.stream,
                    &input,
                    &mut buffers,
                    Some(&mut ReplayView::from_slice(&mut ours, kk).unwrap()),
                )
                .unwrap();

            let noaux = NoAuxTcRouter::new(cfg).unwrap();
            let theirs = run_noaux(&g, &noaux, &d_logits, &d_bias, tokens, true).unwrap();
            let (indices, theirs) = (theirs.ids, theirs.replay.unwrap());
            let ours = g.stream.clone_dtoh(&ours).unwrap();
            let want = oracle::route(&cfg, &logits, Some(&bias), tokens).unwrap();
            for t in 0..tokens {
                let row = t * kk..(t + 1) * kk;
                let mut a: Vec<i32> = ours[row.clone()].iter().map(|&x| x as i32).collect();
                let mut b: Vec<i32> = indices[row.clone()].to_vec();
                let mut c: Vec<i32> = theirs[row.clone()].iter().map(|&x| x as i32).collect();
                assert_eq!(
                    ours[row.clone()],
                    want.ids[row.clone()],
                    "{cfg:?} T={tokens} token {t}: ours vs oracle"
                );
                // NoAuxTc's output order is its own; compare as sets.
                a.sort_unstable();
                b.sort_unstable();
                c.sort_unstable();
                assert_eq!(
                    a, b,
                    "{cfg:?} T={tokens} token {t}: ours vs NoAuxTc indices"
                );
                assert_eq!(
                    b, c,
                    "{cfg:?} T={tokens} token {t}: NoAuxTc indices vs its replay"
                );
            }
            cases += 1;
        }
    }
    eprintln!("NoAuxTc cross-check: {cases} cases agreed");
}

/// What one NoAuxTc call wrote: ids, fp32 weights (as bits) and the whole replay buffer.
#[derive(PartialEq)]
struct NoAuxOutcome {
    ids: Vec<i32>,
    values: Vec<u32>,
    replay: Option<Vec<i16>>,
}

fn run_noaux(
    g: &Gpu,
    router: &NoAuxTcRouter,
    logits: &CudaSlice<f32>,
    bias: &CudaSlice<f32>,
    tokens: usize,
    with_replay: bool,
) -> Result<NoAuxOutcome, String> {
    let k = router.config().top_k as usize;
    let n = (tokens * k).max(1);
    let mut values = g.stream.clone_htod(&vec![f32::NAN; n]).unwrap();
    let mut indices = g.stream.clone_htod(&vec![-7i32; n]).unwrap();
    let mut replay = g
        .stream
        .clone_htod(&vec![SENTINEL; (tokens + SPARE_ROWS) * k])
        .unwrap();
    let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
    let input = RouteInput {
        logits: logits.into(),
        bias: Some(bias.into()),
        num_tokens: tokens,
    };
    router
        .route(
            &g.stream,
            &input,
            &mut NoAuxTcOutputs {
                ids: indices.as_view_mut(),
                weights_f32: values.as_view_mut(),
            },
            with_replay.then_some(&mut view),
        )
        .map_err(|e| format!("route failed: {e}"))?;
    Ok(NoAuxOutcome {
        ids: g.stream.clone_dtoh(&indices).unwrap()[..tokens * k].to_vec(),
        values: g.stream.clone_dtoh(&values).unwrap()[..tokens * k]
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        replay: with_replay.then(|| g.stream.clone_dtoh(&replay).unwrap()),
    })
}

/// `None` when NoAuxTc routes `logits` as the oracle does (ids in order, weights within bf16
/// rounding, NaN where it has NaN), writes the same ids into the replay buffer and nothing
/// past its rows, and gives the same bits with and without replay.
fn noaux_verdict(
    g: &Gpu,
    router: &NoAuxTcRouter,
    logits: &[f32],
    bias: &[f32],
    tokens: usize,
    want: &oracle::Routed,
) -> Option<String> {
    let k = router.config().top_k as usize;
    let d_logits = g.stream.clone_htod(logits).unwrap();
    let d_bias = g.stream.clone_htod(bias).unwrap();
    let with = match run_noaux(g, router, &d_logits, &d_bias, tokens, true) {
        Ok(o) => o,
        Err(e) => return Some(e),
    };
    let without = match run_noaux(g, router, &d_logits, &d_bias, tokens, false) {
        Ok(o) => o,
        Err(e) => return Some(e),
    };
    let replay = with.replay.as_ref().unwrap();
    if replay[tokens * k..].iter().any(|&x| x != SENTINEL) {
        return Some("a replay row past num_tokens was written".into());
    }
    if replay[..tokens * k]
        .iter()
        .zip(&with.ids)
        .any(|(&r, &i)| i32::from(r) != i)
    {
        return Some("the replay ids differ from the int32 ids".into());
    }
    if with.ids != without.ids || with.values != without.values {
        return Some("outputs differ with and without replay".into());
    }
    let bad: Vec<usize> = (0..tokens)
        .filter(|&t| {
            (t * k..(t + 1) * k).any(|i| {
                with.ids[i] != i32::from(want.ids[i])
                    || !weight_matches(f32::from_bits(with.values[i]), want.weights[i])
            })
        })
        .collect();
    let &first = bad.first()?;
    let span = first * k..(first + 1) * k;
    let got_w: Vec<f32> = with.values[span.clone()]
        .iter()
        .map(|&b| f32::from_bits(b))
        .collect();
    Some(format!(
        "{} of {tokens} tokens differ (tokens {:?}); token {first}: ids {:?} weights {got_w:?}, \
         oracle ids {:?} weights {:?}",
        bad.len(),
        &bad[..bad.len().min(16)],
        &with.ids[span.clone()],
        &want.ids[span.clone()],
        &want.weights[span],
    ))
}

/// NoAuxTc at the numeric edges `degenerate.rs` routes the other routers through (sigmoid
/// underflow, GLM-5-like correction biases, NaN and infinite logits) and in the separated
/// regime, against the oracle as the models' reference gates compute it (DeepSeek-V3's
/// `MoEGate`, the fp32 bias added as given: `oracle::route_topk`), at every token count of
/// `degenerate::TOKENS`. Configurations NoAuxTc has no kernel for are refused at `new`.
#[test]
fn noaux_tc_matches_the_oracle_at_the_numeric_edges() {
    let test = "noaux::noaux_tc_matches_the_oracle_at_the_numeric_edges";
    let Some(g) = gpu(test) else {
        return;
    };
    let tokens = env_list("FLASHINFER_RS_ROUTING_TOKENS", &crate::degenerate::TOKENS);
    let (mut passed, mut refused, mut failures) = (0usize, 0usize, Vec::new());
    for (ci, cfg) in sigmoid_gated().iter().enumerate() {
        let router = match NoAuxTcRouter::new(*cfg) {
            Ok(r) => r,
            Err(Error::InvalidArgument { .. }) => {
                refused += 1;
                continue;
            }
            Err(e) => panic!("{test}: {cfg:?} refused with {e:?}"),
        };
        let label = |what: &str, t: usize| {
            format!(
                "{:?} E={} K={} T={t} {what}",
                cfg.method, cfg.num_experts, cfg.top_k
            )
        };
        for (ri, regime) in [Regime::Separated, Regime::Underflow, Regime::LargeBias]
            .into_iter()
            .enumerate()
        {
            for &t in &tokens {
                let seed = ((ci * 10 + ri) * 100_000 + t) as u64;
                let (logits, bias) = oracle::regime_logits(cfg, regime, t, false, seed).unwrap();
                let bias = bias.unwrap();
                let want = oracle::route_topk(cfg, &logits, Some(&bias), t).unwrap();
                match noaux_verdict(&g, &router, &logits, &bias, t, &want) {
                    None => passed += 1,
                    Some(why) => {
                        failures.push(format!("{}: {why}", label(&format!("{regime:?}"), t)))
                    }
                }
            }
        }
        for &t in &[1usize, 5, 7, 17, 300, 5000] {
            let seed = (ci * 100_000 + t) as u64 * 2 + 1;
            let logits = special_logits(cfg, t, false, seed);
            let mut rng = SplitMix64(seed);
            let bias: Vec<f32> = (0..cfg.num_experts)
                .map(|_| (rng.unit() * 0.01) as f32)
                .collect();
            let want = oracle::route_topk(cfg, &logits, Some(&bias), t).unwrap();
            match noaux_verdict(&g, &router, &logits, &bias, t, &want) {
                None => passed += 1,
                Some(why) => failures.push(format!(
                    "{} (token t carries PATTERNS[t % 7] of {PATTERNS:?}): {why}",
                    label("NaN/inf", t)
                )),
            }
        }
    }
    eprintln!("{test}: {refused} configs refused at new");
    report(test, passed, failures);
}
