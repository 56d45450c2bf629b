//! Routing on the GPU against the CPU oracle: every method, every kernel tier, both logit
//! dtypes, with and without replay, with and without PDL.
use std::sync::Arc;

use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::{self, Regime, Routed};
use flashinfer_rs::routing::{
    Logits, RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod,
};
use flashinfer_rs::ReplayView;

use crate::common::{env_list, gpu, Gpu};

/// Token counts that reach every kernel tier (block <= 4, dyn-block <= 16, cluster <= 256,
/// then histogram / cooperative multi-kernel paths). `FLASHINFER_RS_ROUTING_TOKENS` overrides
/// them (the sanitizer script runs a reduced set).
pub const TOKENS: [usize; 13] = [1, 3, 4, 5, 16, 17, 64, 255, 256, 257, 1024, 4096, 16384];
const EXPERTS: [u32; 7] = [8, 64, 128, 256, 384, 512, 2048];
const TOP_K: [u32; 5] = [1, 2, 4, 8, 22];
/// Rows past `num_tokens` in every replay buffer; they must keep this value.
pub const SENTINEL: i16 = -1;
pub const SPARE_ROWS: usize = 3;

/// Every method the matrix runs at `e` experts.
pub fn methods_for(e: u32) -> Vec<RoutingMethod> {
    let mut m = vec![
        RoutingMethod::Default,
        RoutingMethod::Renormalize,
        RoutingMethod::RenormalizeNaive,
        RoutingMethod::TopK,
        RoutingMethod::Llama4,
        RoutingMethod::SigmoidRenorm {
            norm_topk_prob: true,
        },
        RoutingMethod::SigmoidRenorm {
            norm_topk_prob: false,
        },
        RoutingMethod::Sigmoid,
        RoutingMethod::MiniMax2 {
            routed_scaling_factor: 1.5,
        },
        RoutingMethod::DeepSeekV3 {
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 2.5,
        },
    ];
    // Grouped DeepSeekV3 where the experts split into <= 8 groups of <= 32.
    let grouped = match e {
        8 => Some((4, 2)),
        64 | 128 | 256 => Some((8, 4)),
        _ => None,
    };
    if let Some((n_group, topk_group)) = grouped {
        m.push(RoutingMethod::DeepSeekV3 {
            n_group,
            topk_group,
            routed_scaling_factor: 2.5,
        });
    }
    m
}

/// Every (config) of the matrix that the method supports.
pub fn matrix() -> Vec<RoutingConfig> {
    let mut out = Vec::new();
    for e in EXPERTS {
        for method in methods_for(e) {
            for k in TOP_K {
                let cfg = RoutingConfig::new(method, e, k);
                if cfg.validate().is_ok() {
                    out.push(cfg);
                }
            }
        }
    }
    out
}

/// Every input regime of the oracle's generators.
pub const REGIMES: [Regime; 4] = [
    Regime::Separated,
    Regime::LargeBias,
    Regime::Underflow,
    Regime::Extreme,
];

/// An oracle entry point: `oracle::route` (upstream's kernels) or `oracle::route_topk`.
pub type Oracle =
    fn(&RoutingConfig, &[f32], Option<&[f32]>, usize) -> flashinfer_rs::Result<Routed>;

/// Host data of one case: logits (as f32 values; bf16-exact when `bf16`), bias (bf16-exact
/// when `bf16_bias`, uploaded as bf16 then), oracle.
pub struct CaseData {
    pub tokens: usize,
    pub bf16: bool,
    pub bf16_bias: bool,
    pub logits: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub want: Routed,
}

impl CaseData {
    /// A case from given host data; the oracle's routing of it for upstream's kernels.
    pub fn new(
        cfg: &RoutingConfig,
        tokens: usize,
        bf16: bool,
        logits: Vec<f32>,
        bias: Option<Vec<f32>>,
        bf16_bias: bool,
    ) -> CaseData {
        Self::with_oracle(cfg, tokens, bf16, logits, bias, bf16_bias, oracle::route)
    }

    /// A case from given host data, routed by `route` (an oracle entry point).
    pub fn with_oracle(
        cfg: &RoutingConfig,
        tokens: usize,
        bf16: bool,
        logits: Vec<f32>,
        bias: Option<Vec<f32>>,
        bf16_bias: bool,
        route: Oracle,
    ) -> CaseData {
        let bias = bias.map(|b| {
            b.into_iter()
                .map(|x| {
                    if bf16_bias {
                        bf16::from_f32(x).to_f32()
                    } else {
                        x
                    }
                })
                .collect::<Vec<f32>>()
        });
        let want = route(cfg, &logits, bias.as_deref(), tokens).unwrap();
        CaseData {
            tokens,
            bf16,
            bf16_bias,
            logits,
            bias,
            want,
        }
    }
}

/// Host work (logits + oracle) of one config and regime at every token count, fp32 and bf16
/// logits, in parallel threads. Seeds: `((case * 100_000 + t) * 2 + bf16) + salt`.
pub fn cases_in_parallel(
    route: Oracle,
    cfg: &RoutingConfig,
    regime: Regime,
    tokens: &[usize],
    case: u64,
    salt: u64,
) -> Vec<CaseData> {
    std::thread::scope(|s| {
        let handles: Vec<_> = tokens
            .iter()
            .flat_map(|&t| [false, true].map(|bf| (t, bf)))
            .map(|(t, bf)| {
                let seed = (case * 100_000 + t as u64) * 2 + bf as u64 + salt;
                s.spawn(move || case_data_for(route, cfg, regime, t, bf, seed))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A case of `regime` (see [`oracle::regime_logits`]), bias in fp32, routed by `route`.
pub fn case_data_for(
    route: Oracle,
    cfg: &RoutingConfig,
    regime: Regime,
    tokens: usize,
    bf16: bool,
    seed: u64,
) -> CaseData {
    let (logits, bias) = oracle::regime_logits(cfg, regime, tokens, bf16, seed).unwrap();
    CaseData::with_oracle(cfg, tokens, bf16, logits, bias, false, route)
}

/// Device copies of a case's inputs.
pub struct DeviceInputs {
    logits_f32: Option<CudaSlice<f32>>,
    logits_bf16: Option<CudaSlice<bf16>>,
    bias_f32: Option<CudaSlice<f32>>,
    bias_bf16: Option<CudaSlice<bf16>>,
}

impl DeviceInputs {
    pub fn upload(stream: &Arc<CudaStream>, d: &CaseData) -> DeviceInputs {
        let (logits_f32, logits_bf16) = if d.bf16 {
            let v: Vec<bf16> = d.logits.iter().map(|&x| bf16::from_f32(x)).collect();
            (None, Some(stream.clone_htod(&v).unwrap()))
        } else {
            (Some(stream.clone_htod(&d.logits).unwrap()), None)
        };
        let (bias_f32, bias_bf16) = match &d.bias {
            Some(b) if d.bf16_bias => {
                let v: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
                (None, Some(stream.clone_htod(&v).unwrap()))
            }
            Some(b) => (Some(stream.clone_htod(b).unwrap()), None),
            None => (None, None),
        };
        DeviceInputs {
            logits_f32,
            logits_bf16,
            bias_f32,
            bias_bf16,
        }
    }

    /// Copies `d`'s logits over these (same shape and dtype), stream-ordered: graph replays
    /// read them from the same address.
    pub fn overwrite_logits(&mut self, stream: &Arc<CudaStream>, d: &CaseData) {
        match (&mut self.logits_f32, &mut self.logits_bf16) {
            (Some(l), _) => stream.memcpy_htod(&d.logits, l).unwrap(),
            (_, Some(l)) => {
                let v: Vec<bf16> = d.logits.iter().map(|&x| bf16::from_f32(x)).collect();
                stream.memcpy_htod(&v, l).unwrap()
            }
            _ => unreachable!(),
        }
    }

    pub fn input(&self, tokens: usize) -> RouteInput<'_> {
        let logits: Logits<'_> = match (&self.logits_f32, &self.logits_bf16) {
            (Some(l), _) => l.into(),
            (_, Some(l)) => l.into(),
            _ => unreachable!(),
        };
        let bias = match (&self.bias_f32, &self.bias_bf16) {
            (Some(b), _) => Some(b.into()),
            (_, Some(b)) => Some(b.into()),
            _ => None,
        };
        RouteInput {
            logits,
            bias,
            num_tokens: tokens,
        }
    }
}

/// What one routing call produced, downloaded.
#[derive(PartialEq)]
pub struct Outcome {
    /// The caller's whole replay buffer (spare rows included), when one was passed.
    pub replay: Option<Vec<i16>>,
    /// The ids of rows `[0, tokens)`: from the replay buffer, or `RoutingBuffers::topk_ids`.
    pub ids: Vec<i16>,
    pub weights: Vec<u16>,
    pub permuted_size: i32,
}

pub fn run(
    g: &Gpu,
    router: &Router,
    buffers: &mut RoutingBuffers,
    inputs: &DeviceInputs,
    tokens: usize,
    with_replay: bool,
) -> Result<Outcome, String> {
    let k = router.config().top_k as usize;
    let mut replay = g
        .stream
        .clone_htod(&vec![SENTINEL; (tokens + SPARE_ROWS) * k])
        .unwrap();
    let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
    router
        .route(
            &g.stream,
            &inputs.input(tokens),
            buffers,
            with_replay.then_some(&mut view),
        )
        .map_err(|e| format!("route failed: {e}"))?;
    check_permutation(g, router.config(), buffers, tokens)?;
    let weights: Vec<bf16> = g
        .stream
        .clone_dtoh(&buffers.topk_weights().slice(0..tokens * k))
        .unwrap();
    let permuted_size = g.stream.clone_dtoh(buffers.permuted_idx_size()).unwrap()[0];
    let replay = with_replay.then(|| g.stream.clone_dtoh(&replay).unwrap());
    let ids = match &replay {
        Some(r) => r[..tokens * k].to_vec(),
        None => g
            .stream
            .clone_dtoh(&buffers.topk_ids().slice(0..tokens * k))
            .unwrap(),
    };
    Ok(Outcome {
        replay,
        ids,
        weights: weights.iter().map(|w| w.to_bits()).collect(),
        permuted_size,
    })
}

/// The permutation the fused GEMMs consume: every (token, k) sits in a padded slot below
/// `permuted_idx_size` that maps back to the token.
/// The permutation of a call: every (token, k) has its own slot, which maps back to the token,
/// and every other slot below `permuted_idx_size` (tile padding) is -1.
fn check_permutation(
    g: &Gpu,
    cfg: &RoutingConfig,
    b: &RoutingBuffers,
    tokens: usize,
) -> Result<(), String> {
    let k = cfg.top_k as usize;
    let e2p = g
        .stream
        .clone_dtoh(&b.expanded_idx_to_permuted_idx().slice(0..tokens * k))
        .unwrap();
    let p2t = g.stream.clone_dtoh(b.permuted_idx_to_token_idx()).unwrap();
    let size = g.stream.clone_dtoh(b.permuted_idx_size()).unwrap()[0];
    if (size as usize) < tokens * k || size as usize > p2t.len() {
        return Err(format!(
            "permuted_idx_size {size} outside [{}, {}]",
            tokens * k,
            p2t.len()
        ));
    }
    let mut seen = vec![false; size as usize];
    for (x, &p) in e2p.iter().enumerate() {
        if p < 0 || p >= size || seen[p as usize] || p2t[p as usize] != (x / k) as i32 {
            return Err(format!(
                "expanded idx {x} -> slot {p} is not a unique slot of token {}",
                x / k
            ));
        }
        seen[p as usize] = true;
    }
    // The padding slots of each expert's tile (upstream's initRoutingTilePadding, 0.7.1): -1,
    // never a stale token of an earlier call (the buffers are reused across calls here, larger
    // batches first in some matrices).
    if let Some(slot) = (0..size as usize).find(|&s| !seen[s] && p2t[s] != -1) {
        return Err(format!(
            "padding slot {slot} of {size} holds {} instead of -1",
            p2t[slot]
        ));
    }
    Ok(())
}

/// Whether a kernel's bf16 weight is the oracle's: NaN exactly where the oracle has NaN, an
/// infinity exactly where it has that infinity, else within bf16 rounding.
pub fn weight_matches(got: f32, want: f32) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= 5e-3 + 1e-2 * want.abs()
}

/// Compares a kernel outcome with the oracle; `None` when they agree, else how many tokens
/// differ, which (the first 16) and the first difference in full.
pub fn compare(cfg: &RoutingConfig, d: &CaseData, got: &Outcome) -> Option<String> {
    let k = cfg.top_k as usize;
    let t = d.tokens;
    if let Some(replay) = &got.replay {
        if replay[t * k..].iter().any(|&x| x != SENTINEL) {
            return Some("a row past num_tokens was written".into());
        }
    }
    let row = |v: &[i16], r: usize| v[r * k..(r + 1) * k].to_vec();
    let weights = |r: usize| -> Vec<f32> {
        got.weights[r * k..(r + 1) * k]
            .iter()
            .map(|&w| bf16::from_bits(w).to_f32())
            .collect()
    };
    let bad: Vec<usize> = (0..t)
        .filter(|&r| {
            row(&got.ids, r) != row(&d.want.ids, r)
                || weights(r)
                    .iter()
                    .zip(&d.want.weights[r * k..(r + 1) * k])
                    .any(|(&w, &want)| !weight_matches(w, want))
        })
        .collect();
    let &first = bad.first()?;
    Some(format!(
        "{} of {t} tokens differ (tokens {:?}{}); token {first}: ids {:?} weights {:?}, oracle ids {:?} weights {:?}",
        bad.len(),
        &bad[..bad.len().min(16)],
        if bad.len() > 16 { ", ..." } else { "" },
        row(&got.ids, first),
        weights(first),
        row(&d.want.ids, first),
        &d.want.weights[first * k..(first + 1) * k],
    ))
}

pub fn label(cfg: &RoutingConfig, regime: Regime, d: &CaseData) -> String {
    format!(
        "{:?} E={} K={} T={} {regime:?} logits {}{}",
        cfg.method,
        cfg.num_experts,
        cfg.top_k,
        d.tokens,
        if d.bf16 { "bf16" } else { "f32" },
        match (&d.bias, d.bf16_bias) {
            (None, _) => "",
            (Some(_), true) => " bias bf16",
            (Some(_), false) => " bias f32",
        }
    )
}

/// Routes `d` with and without replay and with PDL flipped, and checks all three against the
/// oracle and each other; `None` when everything agrees.
pub fn verdict(
    g: &Gpu,
    router: &Router,
    no_pdl: &Router,
    buffers: &mut RoutingBuffers,
    d: &CaseData,
) -> Option<String> {
    let cfg = router.config();
    let inputs = DeviceInputs::upload(&g.stream, d);
    let with = run(g, router, buffers, &inputs, d.tokens, true);
    let without = run(g, router, buffers, &inputs, d.tokens, false);
    let other_pdl = run(g, no_pdl, buffers, &inputs, d.tokens, true);
    match (with, without, other_pdl) {
        (Ok(with), Ok(without), Ok(other_pdl)) => compare(cfg, d, &with)
            .or_else(|| {
                (with.ids != without.ids
                    || with.weights != without.weights
                    || with.permuted_size != without.permuted_size)
                    .then(|| "outputs differ with and without replay".to_string())
            })
            .or_else(|| {
                (with != other_pdl).then(|| "outputs differ with and without PDL".to_string())
            }),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Some(e),
    }
}

#[test]
fn every_method_and_tier_matches_the_oracle() {
    let Some(g) = gpu("every_method_and_tier_matches_the_oracle") else {
        return;
    };
    // FLASHINFER_RS_ROUTING_SHARD=i/n runs every n-th config from the i-th: the sanitizers
    // split the matrix over several runs this way.
    let shard = std::env::var("FLASHINFER_RS_ROUTING_SHARD").ok().map(|v| {
        let (i, n) = v.split_once('/').expect("FLASHINFER_RS_ROUTING_SHARD=i/n");
        let (i, n): (usize, usize) = (i.parse().unwrap(), n.parse().unwrap());
        assert!(i < n, "shard {i} of {n}");
        (i, n)
    });
    let configs: Vec<_> = matrix()
        .into_iter()
        .enumerate()
        .filter(|(ci, _)| shard.is_none_or(|(i, n)| ci % n == i))
        .map(|(_, c)| c)
        .collect();
    let tokens = env_list("FLASHINFER_RS_ROUTING_TOKENS", &TOKENS);
    let (mut passed, mut failures) = (0usize, Vec::new());
    for (ci, cfg) in configs.iter().enumerate() {
        let router = Router::new(*cfg).unwrap();
        let no_pdl = Router::new(cfg.with_pdl(!cfg.use_pdl)).unwrap();
        let mut buffers =
            RoutingBuffers::new(&g.stream, cfg, *tokens.iter().max().unwrap()).unwrap();
        for (ri, regime) in REGIMES.into_iter().enumerate() {
            if !regime.applies_to(&cfg.method) {
                continue;
            }
            let data =
                cases_in_parallel(oracle::route, cfg, regime, &tokens, (ci * 4 + ri) as u64, 0);
            for d in &data {
                match verdict(&g, &router, &no_pdl, &mut buffers, d) {
                    None => passed += 1,
                    Some(why) => failures.push(format!("{}: {why}", label(cfg, regime, d))),
                }
            }
        }
    }
    eprintln!(
        "routing matrix: {} configs x their regimes x {} token counts x 2 dtypes: {passed} passed, {} failed",
        configs.len(),
        tokens.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
