//! Routing at the numeric edges real models reach, against the oracle (which follows the
//! models' reference routers there): sigmoid underflow, GLM-5-like correction biases, NaN and
//! infinite logits. Each of the first two fails on FlashInfer 0.6.13 as released and passes
//! with our patches (flashinfer-sys/vendor/patches/0002-0004, 0006; `bash scripts/gpu-pack.sh released`
//! builds the released variant for that comparison).
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::{self, Regime, SplitMix64};
use flashinfer_rs::routing::{Router, RoutingBuffers, RoutingConfig, RoutingMethod};

use crate::common::{env_list, gpu, report, Gpu};
use crate::routing::{label, verdict, CaseData};

/// Token counts through every kernel tier (block, dyn-block, cluster, histogram, coop), and
/// the 1 / 7 / 64 / 1000 / 5000 where the defects were seen. `FLASHINFER_RS_ROUTING_TOKENS`
/// overrides them (the sanitizer runs use fewer).
pub const TOKENS: [usize; 11] = [1, 3, 7, 16, 17, 64, 255, 257, 1000, 4096, 5000];

fn deepseek(n_group: u32, topk_group: u32, scale: f32) -> RoutingMethod {
    RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        routed_scaling_factor: scale,
    }
}

/// The sigmoid-gated models: DeepSeek-V3 (grouped), GLM-4.5 (160 experts) and GLM-5 (256)
/// and Kimi-K2 (384) without groups, MiniMax-M2, and the largest ungrouped tier.
pub fn sigmoid_gated() -> Vec<RoutingConfig> {
    vec![
        RoutingConfig::new(deepseek(8, 4, 2.5), 256, 8),
        RoutingConfig::new(deepseek(1, 1, 2.5), 160, 8),
        RoutingConfig::new(deepseek(1, 1, 2.5), 256, 8),
        RoutingConfig::new(deepseek(1, 1, 2.827), 384, 8),
        RoutingConfig::new(deepseek(1, 1, 1.0), 1024, 22),
        RoutingConfig::new(
            RoutingMethod::MiniMax2 {
                routed_scaling_factor: 1.0,
            },
            256,
            8,
        ),
    ]
}

/// Runs every config x token count x logits dtype x bias dtype of `regime`; every case must
/// equal the oracle (weights finite where it says so), with and without replay and PDL.
fn run_regime(g: &Gpu, regime: Regime, test: &str) {
    let tokens = env_list("FLASHINFER_RS_ROUTING_TOKENS", &TOKENS);
    let max = *tokens.iter().max().unwrap();
    let (mut passed, mut failures) = (0usize, Vec::new());
    for (ci, cfg) in sigmoid_gated().iter().enumerate() {
        let router = Router::new(*cfg).unwrap();
        let no_pdl = Router::new(cfg.with_pdl(!cfg.use_pdl)).unwrap();
        let mut buffers = RoutingBuffers::new(&g.stream, cfg, max).unwrap();
        for &t in &tokens {
            for (bf16_logits, bf16_bias) in [(false, false), (true, false), (false, true)] {
                let seed = (ci * 10_000 + t) as u64 * 4 + 2 * bf16_logits as u64 + bf16_bias as u64;
                let (logits, bias) =
                    oracle::regime_logits(cfg, regime, t, bf16_logits, seed).unwrap();
                let d = CaseData::new(cfg, t, bf16_logits, logits, bias, bf16_bias);
                assert!(
                    d.want.weights.iter().all(|w| w.is_finite()),
                    "the oracle gives finite weights in {regime:?}"
                );
                match verdict(g, &router, &no_pdl, &mut buffers, &d) {
                    None => passed += 1,
                    Some(why) => failures.push(format!("{}: {why}", label(cfg, regime, &d))),
                }
            }
        }
    }
    report(test, passed, failures);
}

#[test]
fn deepseek_weights_at_sigmoid_underflow_are_zero_not_nan() {
    let test = "degenerate::deepseek_weights_at_sigmoid_underflow_are_zero_not_nan";
    let Some(g) = gpu(test) else {
        return;
    };
    run_regime(&g, Regime::Underflow, test);
}

#[test]
fn glm5_like_biases_weigh_by_the_unbiased_sigmoid_on_every_tier() {
    let test = "degenerate::glm5_like_biases_weigh_by_the_unbiased_sigmoid_on_every_tier";
    let Some(g) = gpu(test) else {
        return;
    };
    run_regime(&g, Regime::LargeBias, test);
}

/// One config per method (and both DeepSeekV3 paths) at sizes every method supports.
pub fn one_per_method() -> Vec<RoutingConfig> {
    let mut v: Vec<RoutingConfig> = [
        RoutingMethod::Default,
        RoutingMethod::Renormalize,
        RoutingMethod::RenormalizeNaive,
        RoutingMethod::TopK,
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
        deepseek(1, 1, 2.5),
        deepseek(8, 4, 2.5),
    ]
    .into_iter()
    .map(|m| RoutingConfig::new(m, 128, 8))
    .collect();
    v.push(RoutingConfig::new(RoutingMethod::Llama4, 128, 1));
    v
}

/// The special values a token of the NaN/inf test carries, by token index.
pub const PATTERNS: [&str; 7] = [
    "+NaN",
    "-NaN",
    "+inf",
    "-inf",
    "two +inf",
    "all -inf",
    "+NaN and -inf",
];

/// Separated logits with, per token, the special values of `PATTERNS[t % 7]` at random
/// experts (the other experts keep their values).
pub fn special_logits(
    cfg: &RoutingConfig,
    tokens: usize,
    bf16_logits: bool,
    seed: u64,
) -> Vec<f32> {
    let (mut logits, _) = oracle::separated_logits(cfg, tokens, bf16_logits, seed).unwrap();
    let e = cfg.num_experts as usize;
    let mut rng = SplitMix64(seed ^ 0x5eed);
    for (t, row) in logits.chunks_mut(e).enumerate() {
        let mut put = |x: f32| {
            let i = rng.below(e);
            row[i] = x;
        };
        match t % PATTERNS.len() {
            0 => put(f32::NAN),
            1 => put(-f32::NAN),
            2 => put(f32::INFINITY),
            3 => put(f32::NEG_INFINITY),
            4 => {
                put(f32::INFINITY);
                put(f32::INFINITY);
            }
            5 => row.fill(f32::NEG_INFINITY),
            _ => {
                put(f32::NAN);
                put(f32::NEG_INFINITY);
            }
        }
    }
    if bf16_logits {
        // Specials survive bf16 (NaN keeps its sign); the rest is bf16-exact already.
        for x in logits.iter_mut() {
            *x = bf16::from_f32(*x).to_f32();
        }
    }
    logits
}

#[test]
fn nan_and_infinite_logits_route_as_documented() {
    let test = "degenerate::nan_and_infinite_logits_route_as_documented";
    let Some(g) = gpu(test) else {
        return;
    };
    let (mut passed, mut failures) = (0usize, Vec::new());
    for (ci, cfg) in one_per_method().iter().enumerate() {
        let router = Router::new(*cfg).unwrap();
        let no_pdl = Router::new(cfg.with_pdl(!cfg.use_pdl)).unwrap();
        let mut buffers = RoutingBuffers::new(&g.stream, cfg, 5000).unwrap();
        for &t in &[1usize, 5, 7, 17, 300, 5000] {
            for bf16_logits in [false, true] {
                let seed = (ci * 10_000 + t) as u64 * 2 + bf16_logits as u64;
                let logits = special_logits(cfg, t, bf16_logits, seed);
                let bias = cfg.method.needs_bias().then(|| {
                    let mut rng = SplitMix64(seed);
                    (0..cfg.num_experts)
                        .map(|_| (rng.unit() * 0.01) as f32)
                        .collect()
                });
                let d = CaseData::new(cfg, t, bf16_logits, logits, bias, false);
                match verdict(&g, &router, &no_pdl, &mut buffers, &d) {
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
