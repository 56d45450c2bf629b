//! Routing on the GPU against the CPU oracle: every method, every kernel tier, both logit
//! dtypes, with and without replay, with and without PDL.
use std::sync::Arc;

use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::{self, Routed};
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
const SENTINEL: i16 = -1;
const SPARE_ROWS: usize = 3;

fn methods_for(e: u32) -> Vec<RoutingMethod> {
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

/// Host data of one case: logits (as f32 values; bf16-exact when `bf16`), bias, oracle.
pub struct CaseData {
    pub tokens: usize,
    pub bf16: bool,
    pub logits: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub want: Routed,
}

pub fn case_data(cfg: &RoutingConfig, tokens: usize, bf16: bool, seed: u64) -> CaseData {
    let (logits, bias) = oracle::separated_logits(cfg, tokens, bf16, seed);
    let want = oracle::route(cfg, &logits, bias.as_deref(), tokens);
    CaseData {
        tokens,
        bf16,
        logits,
        bias,
        want,
    }
}

/// Device copies of a case's inputs.
pub struct DeviceInputs {
    logits_f32: Option<CudaSlice<f32>>,
    logits_bf16: Option<CudaSlice<bf16>>,
    bias: Option<CudaSlice<f32>>,
}

impl DeviceInputs {
    pub fn upload(stream: &Arc<CudaStream>, d: &CaseData) -> DeviceInputs {
        let (logits_f32, logits_bf16) = if d.bf16 {
            let v: Vec<bf16> = d.logits.iter().map(|&x| bf16::from_f32(x)).collect();
            (None, Some(stream.clone_htod(&v).unwrap()))
        } else {
            (Some(stream.clone_htod(&d.logits).unwrap()), None)
        };
        let bias = d.bias.as_ref().map(|b| stream.clone_htod(b).unwrap());
        DeviceInputs {
            logits_f32,
            logits_bf16,
            bias,
        }
    }

    pub fn input(&self, tokens: usize) -> RouteInput<'_> {
        let logits: Logits<'_> = match (&self.logits_f32, &self.logits_bf16) {
            (Some(l), _) => l.into(),
            (_, Some(l)) => l.into(),
            _ => unreachable!(),
        };
        RouteInput {
            logits,
            bias: self.bias.as_ref().map(Into::into),
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
    Ok(())
}

/// Compares a kernel outcome with the oracle; `None` when they agree.
pub fn compare(cfg: &RoutingConfig, d: &CaseData, got: &Outcome) -> Option<String> {
    let k = cfg.top_k as usize;
    let t = d.tokens;
    if let Some(replay) = &got.replay {
        let (ids, tail) = replay.split_at(t * k);
        if let Some(row) =
            (0..t).find(|&r| ids[r * k..(r + 1) * k] != d.want.ids[r * k..(r + 1) * k])
        {
            return Some(format!(
                "token {row}: replay {:?}, oracle {:?}",
                &ids[row * k..(row + 1) * k],
                &d.want.ids[row * k..(row + 1) * k]
            ));
        }
        if tail.iter().any(|&x| x != SENTINEL) {
            return Some("a row past num_tokens was written".into());
        }
    }
    for (i, (&w, &want)) in got.weights.iter().zip(&d.want.weights).enumerate() {
        let w = bf16::from_bits(w).to_f32();
        let within = (w - want).abs() <= 5e-3 + 1e-2 * want.abs();
        if !within {
            return Some(format!(
                "weight [{}, {}] = {w}, oracle {want}",
                i / k,
                i % k
            ));
        }
    }
    None
}

fn label(cfg: &RoutingConfig, t: usize, bf16: bool) -> String {
    format!(
        "{:?} E={} K={} T={t} {}",
        cfg.method,
        cfg.num_experts,
        cfg.top_k,
        if bf16 { "bf16" } else { "f32" }
    )
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
        // Host work (logits + oracle) for all token counts of this config, in parallel.
        let data: Vec<CaseData> = std::thread::scope(|s| {
            let handles: Vec<_> = tokens
                .iter()
                .flat_map(|&t| [false, true].map(|bf| (t, bf)))
                .map(|(t, bf)| {
                    s.spawn(move || case_data(cfg, t, bf, (ci * 1000 + t) as u64 * 2 + bf as u64))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for d in &data {
            let name = label(cfg, d.tokens, d.bf16);
            let inputs = DeviceInputs::upload(&g.stream, d);
            let with = run(&g, &router, &mut buffers, &inputs, d.tokens, true);
            let without = run(&g, &router, &mut buffers, &inputs, d.tokens, false);
            let other_pdl = run(&g, &no_pdl, &mut buffers, &inputs, d.tokens, true);
            let verdict = match (with, without, other_pdl) {
                (Ok(with), Ok(without), Ok(other_pdl)) => compare(cfg, d, &with)
                    .or_else(|| {
                        (with.ids != without.ids
                            || with.weights != without.weights
                            || with.permuted_size != without.permuted_size)
                            .then(|| "outputs differ with and without replay".to_string())
                    })
                    .or_else(|| {
                        (with != other_pdl)
                            .then(|| "outputs differ with and without PDL".to_string())
                    }),
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Some(e),
            };
            match verdict {
                None => passed += 1,
                Some(why) => failures.push(format!("{name}: {why}")),
            }
        }
    }
    eprintln!(
        "routing matrix: {} configs x {} token counts x 2 dtypes: {passed} passed, {} failed",
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
