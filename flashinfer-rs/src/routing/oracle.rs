//! A CPU reference for every routing method: what the kernels must choose, in the order they
//! must choose it, and the weights they must give.
//!
//! Rules, as FlashInfer 0.6.13 implements them (and its own Python references check):
//! - experts are taken in descending key order; equal keys go to the smaller expert index;
//! - ids are global expert ids in `[0, num_experts)`, whatever the local expert range;
//! - grouped DeepSeekV3 rounds the bias to bf16 before adding it (its kernel does);
//! - keys and weights are computed in f64 here, so agreement with the kernels (which use f32
//!   and fast-math sigmoid/exp) is exact only where neighbouring keys are clearly apart:
//!   [`selection_margin`] says how far apart they are, and [`separated_logits`] makes logits
//!   whose margins are wide, so that a correct kernel cannot fail a test on a near-tie.

use half::bf16;

use super::method::{RoutingConfig, RoutingMethod};

/// The reference routing of `num_tokens` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// `[num_tokens, top_k]` chosen expert ids, best first.
    pub ids: Vec<i16>,
    /// `[num_tokens, top_k]` weights of the chosen experts (before bf16 rounding).
    pub weights: Vec<f32>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The bias as the kernels add it: rounded to bf16 by the grouped DeepSeekV3 kernel.
fn effective_bias(method: &RoutingMethod, bias: Option<&[f32]>, e: usize) -> Vec<f64> {
    match bias {
        None => vec![0.0; e],
        Some(b) if method.is_grouped() => b.iter().map(|&x| bf16::from_f32(x).to_f64()).collect(),
        Some(b) => b.iter().map(|&x| x as f64).collect(),
    }
}

/// Selection key of every expert of one token.
fn keys(method: &RoutingMethod, row: &[f32], bias: &[f64]) -> Vec<f64> {
    match method {
        RoutingMethod::Default => {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
            let exps: Vec<f64> = row.iter().map(|&x| (x as f64 - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|x| x / sum).collect()
        }
        RoutingMethod::Renormalize
        | RoutingMethod::RenormalizeNaive
        | RoutingMethod::TopK
        | RoutingMethod::Llama4 => row.iter().map(|&x| x as f64).collect(),
        RoutingMethod::SigmoidRenorm { .. } | RoutingMethod::Sigmoid => {
            row.iter().map(|&x| sigmoid(x as f64)).collect()
        }
        RoutingMethod::DeepSeekV3 { .. } | RoutingMethod::MiniMax2 { .. } => row
            .iter()
            .zip(bias)
            .map(|(&x, b)| sigmoid(x as f64) + b)
            .collect(),
    }
}

/// `a` ranks before `b`: larger key, then smaller index.
fn better(a: (f64, usize), b: (f64, usize)) -> bool {
    a.0 > b.0 || (a.0 == b.0 && a.1 < b.1)
}

/// The best `n` of `candidates` (key, index), best first.
fn top_n(candidates: impl Iterator<Item = (f64, usize)>, n: usize) -> Vec<(f64, usize)> {
    let mut top: Vec<(f64, usize)> = Vec::with_capacity(n + 1);
    for c in candidates {
        if top.len() == n && !better(c, *top.last().unwrap()) {
            continue;
        }
        let pos = top.iter().position(|&t| better(c, t)).unwrap_or(top.len());
        top.insert(pos, c);
        top.truncate(n);
    }
    top
}

/// (key, index) of an expert or a group.
type Ranked = Vec<(f64, usize)>;

/// Group scores (sum of each group's two best keys) and the kept groups, best first.
fn kept_groups(keys: &[f64], n_group: usize, topk_group: usize) -> (Ranked, Ranked) {
    let per = keys.len() / n_group;
    let scores: Vec<(f64, usize)> = (0..n_group)
        .map(|g| {
            let best = top_n((g * per..(g + 1) * per).map(|i| (keys[i], i)), 2);
            (best.iter().map(|b| b.0).sum::<f64>(), g)
        })
        .collect();
    let kept = top_n(scores.iter().copied(), topk_group);
    (scores, kept)
}

/// Experts eligible for one token's top-k (all of them, or those of the kept groups).
fn eligible(method: &RoutingMethod, keys: &[f64]) -> Vec<usize> {
    match *method {
        RoutingMethod::DeepSeekV3 {
            n_group,
            topk_group,
            ..
        } if n_group > 1 => {
            let per = keys.len() / n_group as usize;
            let (_, kept) = kept_groups(keys, n_group as usize, topk_group as usize);
            let mut experts: Vec<usize> = kept
                .iter()
                .flat_map(|&(_, g)| g * per..(g + 1) * per)
                .collect();
            experts.sort_unstable();
            experts
        }
        _ => (0..keys.len()).collect(),
    }
}

/// The weights of the chosen experts, from their logits and keys.
fn weights(method: &RoutingMethod, row: &[f32], chosen: &[(f64, usize)]) -> Vec<f32> {
    let logit = |i: usize| row[i] as f64;
    let w: Vec<f64> = match *method {
        RoutingMethod::Default => chosen.iter().map(|c| c.0).collect(),
        RoutingMethod::Renormalize | RoutingMethod::RenormalizeNaive => {
            let max = chosen
                .iter()
                .map(|c| logit(c.1))
                .fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = chosen.iter().map(|c| (logit(c.1) - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            exps.iter().map(|x| x / sum).collect()
        }
        RoutingMethod::TopK => chosen.iter().map(|c| logit(c.1)).collect(),
        RoutingMethod::Llama4 => chosen.iter().map(|c| sigmoid(logit(c.1))).collect(),
        RoutingMethod::Sigmoid => chosen.iter().map(|c| sigmoid(logit(c.1))).collect(),
        RoutingMethod::SigmoidRenorm { norm_topk_prob } => {
            let s: Vec<f64> = chosen.iter().map(|c| sigmoid(logit(c.1))).collect();
            if norm_topk_prob {
                let sum: f64 = s.iter().sum();
                s.iter().map(|x| x / sum.max(1e-20)).collect()
            } else {
                s
            }
        }
        RoutingMethod::DeepSeekV3 {
            routed_scaling_factor,
            ..
        } => {
            let s: Vec<f64> = chosen.iter().map(|c| sigmoid(logit(c.1))).collect();
            let sum: f64 = s.iter().sum();
            s.iter()
                .map(|x| x * routed_scaling_factor as f64 / sum)
                .collect()
        }
        RoutingMethod::MiniMax2 {
            routed_scaling_factor,
        } => {
            let s: Vec<f64> = chosen.iter().map(|c| sigmoid(logit(c.1))).collect();
            let sum: f64 = s.iter().sum();
            s.iter()
                .map(|x| x * routed_scaling_factor as f64 / (sum + 1e-20))
                .collect()
        }
    };
    w.into_iter().map(|x| x as f32).collect()
}

/// Routes one token: its chosen (key, expert) pairs, best first.
fn route_row(cfg: &RoutingConfig, row: &[f32], bias: &[f64]) -> Vec<(f64, usize)> {
    let k = keys(&cfg.method, row, bias);
    let pool = eligible(&cfg.method, &k);
    top_n(pool.into_iter().map(|i| (k[i], i)), cfg.top_k as usize)
}

/// The reference routing of the first `num_tokens` rows of `logits` (`[T, E]` row-major; pass
/// bf16 logits as their exact f32 values). `bias` is `[E]`, for the methods that take one.
pub fn route(
    cfg: &RoutingConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    num_tokens: usize,
) -> Routed {
    let e = cfg.num_experts as usize;
    let k = cfg.top_k as usize;
    assert!(
        logits.len() >= num_tokens * e,
        "logits hold fewer than num_tokens rows"
    );
    let bias = effective_bias(&cfg.method, bias, e);
    let mut out = Routed {
        ids: Vec::with_capacity(num_tokens * k),
        weights: Vec::with_capacity(num_tokens * k),
    };
    for row in logits.chunks_exact(e).take(num_tokens) {
        let chosen = route_row(cfg, row, &bias);
        out.ids.extend(chosen.iter().map(|c| c.1 as i16));
        out.weights.extend(weights(&cfg.method, row, &chosen));
    }
    out
}

/// How clearly one token's routing is decided: the smallest gap between neighbouring chosen
/// keys, between the last chosen and the best unchosen eligible key, and (grouped DeepSeekV3)
/// between the last kept and the best dropped group score. `f64::INFINITY` when nothing could
/// be confused.
pub fn selection_margin(cfg: &RoutingConfig, row: &[f32], bias: Option<&[f32]>) -> f64 {
    let e = cfg.num_experts as usize;
    let bias = effective_bias(&cfg.method, bias, e);
    let k = keys(&cfg.method, row, &bias);
    let pool = eligible(&cfg.method, &k);
    let ranked = top_n(pool.iter().map(|&i| (k[i], i)), cfg.top_k as usize + 1);
    let mut margin = ranked
        .windows(2)
        .map(|w| w[0].0 - w[1].0)
        .fold(f64::INFINITY, f64::min);
    if let RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        ..
    } = cfg.method
    {
        if n_group > 1 && topk_group < n_group {
            let (scores, _) = kept_groups(&k, n_group as usize, topk_group as usize);
            let ranked = top_n(scores.into_iter(), topk_group as usize + 1);
            let (last_kept, first_dropped) = (
                ranked[topk_group as usize - 1].0,
                ranked[topk_group as usize].0,
            );
            margin = margin.min(last_kept - first_dropped);
        }
    }
    margin
}

/// Smallest [`selection_margin`] that [`separated_logits`] guarantees, in key units.
pub const SEPARATION: f64 = 2e-3;

/// Logits (and a bias where the method takes one) whose every token is routed with a margin of
/// at least [`SEPARATION`], so that kernels with fast-math sigmoid/exp and bf16 rounding
/// must agree with [`route`].
///
/// Per token, a random `top_k + 1` experts (chosen inside random "kept" groups for grouped
/// DeepSeekV3) get logits on a ladder with wide steps, the kept groups' other experts sit in a
/// middle band, and everything else in a low band. When `bf16_logits` is set the values are
/// rounded to bf16 (the caller uploads them as bf16). Deterministic in `seed`.
pub fn separated_logits(
    cfg: &RoutingConfig,
    num_tokens: usize,
    bf16_logits: bool,
    seed: u64,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let mut rng = SplitMix64(seed);
    let bias: Option<Vec<f32>> = cfg.method.needs_bias().then(|| {
        (0..cfg.num_experts)
            .map(|_| (rng.unit() * 0.01) as f32)
            .collect()
    });
    let logits = separated_logits_for_bias(
        cfg,
        num_tokens,
        bf16_logits,
        rng.next_u64(),
        bias.as_deref(),
    );
    (logits, bias)
}

/// [`separated_logits`] for a given bias (values in `[0, 0.01)`), e.g. one captured in a graph.
pub fn separated_logits_for_bias(
    cfg: &RoutingConfig,
    num_tokens: usize,
    bf16_logits: bool,
    seed: u64,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let e = cfg.num_experts as usize;
    let k = cfg.top_k as usize;
    let mut rng = SplitMix64(seed);
    let round = |x: f32| {
        if bf16_logits {
            bf16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let mut logits = Vec::with_capacity(num_tokens * e);
    let mut perm: Vec<usize> = (0..e).collect();
    for _ in 0..num_tokens {
        for attempt in 0.. {
            let mut row = vec![0f32; e];
            // Which experts may be chosen: all, or the experts of `topk_group` random groups.
            let pool: Vec<usize> = match cfg.method {
                RoutingMethod::DeepSeekV3 {
                    n_group,
                    topk_group,
                    ..
                } if n_group > 1 => {
                    let per = e / n_group as usize;
                    let mut groups: Vec<usize> = (0..n_group as usize).collect();
                    rng.shuffle(&mut groups);
                    groups[..topk_group as usize]
                        .iter()
                        .flat_map(|&g| g * per..(g + 1) * per)
                        .collect()
                }
                _ => (0..e).collect(),
            };
            rng.shuffle(&mut perm);
            let mut in_pool = vec![false; e];
            pool.iter().for_each(|&i| in_pool[i] = true);
            // Low band for everyone, middle band for the pool, then the ladder for k + 1.
            for (i, x) in row.iter_mut().enumerate() {
                *x = if in_pool[i] {
                    -2.5 + rng.unit() as f32
                } else {
                    -6.0 + 2.0 * rng.unit() as f32
                };
            }
            let ladder: Vec<usize> = perm
                .iter()
                .copied()
                .filter(|&i| in_pool[i])
                .take(k + 1)
                .collect();
            let step = 3.0 / (k as f32 + 1.0).max(4.0);
            for (r, &i) in ladder.iter().enumerate() {
                row[i] = 2.0 - step * r as f32 + 0.2 * step * rng.unit() as f32;
            }
            for x in row.iter_mut() {
                *x = round(*x);
            }
            if selection_margin(cfg, &row, bias) >= SEPARATION {
                logits.extend_from_slice(&row);
                break;
            }
            assert!(attempt < 1000, "cannot separate logits for {cfg:?}");
        }
    }
    logits
}

/// A small, fast, seedable generator (SplitMix64), enough for test data.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests;
