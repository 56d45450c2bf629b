//! Choosing the next token: greedy, or temperature + top-p from the request's own random
//! stream (seeded by its `seed`), so a request's tokens never depend on its batch.

use flashinfer_rs::routing::oracle::SplitMix64;

/// How a request samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus mass in `(0, 1]`.
    pub top_p: f32,
    /// Seed of the request's random stream.
    pub seed: u64,
    /// Only the `top_k` most likely tokens (0: all).
    pub top_k: usize,
    /// Only tokens at least `min_p` times as likely as the most likely one (0: all).
    pub min_p: f32,
}

/// A request's sampler: its parameters and its own random stream.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    /// A sampler whose stream starts from `params.seed`.
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            rng: SplitMix64(params.seed),
        }
    }

    /// The next token from `logits` (`[vocab]`).
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        // One draw per token, whatever the distribution: the stream stays aligned.
        let u = self.rng.unit();
        let t = self.params.temperature as f64;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l as f64 - max) / t).exp()))
            .collect();
        let z: f64 = probs.iter().map(|p| p.1).sum();
        // Descending probability, ties to the smaller id: a total order, so deterministic.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        // vLLM's order: min-p over the whole distribution, then top-k, then top-p over what
        // they left (renormalised); each keeps a prefix of the sorted tokens.
        let floor = self.params.min_p.clamp(0.0, 1.0) as f64 * probs[0].1;
        let mut limit = probs.partition_point(|p| p.1 >= floor).max(1);
        if self.params.top_k > 0 {
            limit = limit.min(self.params.top_k);
        }
        let left = if limit == probs.len() {
            1.0
        } else {
            probs[..limit].iter().map(|p| p.1 / z).sum()
        };
        let top_p = self.params.top_p.clamp(0.0, 1.0) as f64 * left;
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &probs[..limit] {
            kept += 1;
            mass += p.1 / z;
            if mass >= top_p {
                break;
            }
        }
        let target = u * mass;
        let mut acc = 0.0;
        for p in &probs[..kept] {
            acc += p.1 / z;
            if acc > target {
                return p.0 as u32;
            }
        }
        probs[kept - 1].0 as u32
    }
}

/// A generated token's log-probability and the most likely tokens' at its position, under the
/// model's own distribution: the log-softmax of the raw logits, before temperature and top-p
/// (vLLM's default, `raw_logprobs`; what a trainer compares its own forward pass against).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token generated.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The most likely tokens and theirs, most likely first (ties: the smaller id first).
    pub top: Vec<(u32, f32)>,
}

/// `token`'s [`TokenLogprob`] in `logits` (`[vocab]`), with the `top` most likely tokens
/// (at most the vocabulary). Computed in f64; a NaN anywhere makes every log-probability NaN
/// (a model that produced one has no distribution to report).
pub fn logprobs(logits: &[f32], token: u32, top: usize) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let nan = logits.iter().any(|l| l.is_nan());
    let lse = if nan || max == f64::NEG_INFINITY {
        f64::NAN
    } else if max == f64::INFINITY {
        f64::INFINITY
    } else {
        max + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln()
    };
    let of = |i: usize| (logits[i] as f64 - lse) as f32;
    // The `top` best in one pass, kept sorted (at most 20 asked): no vocabulary-sized sort or
    // allocation on the scheduler's thread for each token.
    let first = |a: usize, b: usize| logits[b].total_cmp(&logits[a]).then(a.cmp(&b));
    let mut order: Vec<usize> = Vec::with_capacity(top.min(logits.len()) + 1);
    if top > 0 {
        for i in 0..logits.len() {
            if order.len() == top && first(i, order[top - 1]).is_gt() {
                continue;
            }
            let at = order.partition_point(|&j| first(j, i).is_lt());
            order.insert(at, i);
            order.truncate(top);
        }
    }
    TokenLogprob {
        token,
        logprob: logits
            .get(token as usize)
            .map_or(f32::NAN, |_| of(token as usize)),
        top: order.into_iter().map(|i| (i as u32, of(i))).collect(),
    }
}

/// The largest logit's index (the smallest index among equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Log-probabilities against a direct log(softmax) in f64: they exponentiate to a
    /// distribution, the top ones are the largest in order (ties to the smaller id), a
    /// large logit does not overflow, a NaN is reported as NaN.
    #[test]
    fn logprobs_are_the_log_softmax_of_the_logits() {
        let logits: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.3)
            .collect();
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        let lp = logprobs(&logits, 7, 5);
        assert!((lp.logprob as f64 - ((logits[7] as f64).exp() / z).ln()).abs() < 1e-5);
        let total: f64 = (0..300)
            .map(|i| (logprobs(&logits, i, 0).logprob as f64).exp())
            .sum();
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let mut sorted: Vec<(u32, f32)> = (0..300u32).map(|i| (i, logits[i as usize])).collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let ids: Vec<u32> = lp.top.iter().map(|t| t.0).collect();
        assert_eq!(ids, sorted[..5].iter().map(|t| t.0).collect::<Vec<_>>());
        assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
        let big = logprobs(&[1e4, 0.0, 1e4], 0, 3);
        assert_eq!(big.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 2, 1]);
        assert!((big.logprob - 0.5f32.ln()).abs() < 1e-6, "{big:?}");
        assert!(logprobs(&[0.0, f32::NAN], 0, 1).logprob.is_nan());
        assert_eq!(logprobs(&[0.0; 4], 1, 9).top.len(), 4);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            top_k: 0,
            min_p: 0.0,
        });
        assert_eq!(s.sample(&[f32::NAN, 1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_top_p_cuts_the_tail() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let p = SamplingParams {
            temperature: 0.8,
            top_p: 0.9,
            seed: 42,
            top_k: 0,
            min_p: 0.0,
        };
        let (mut a, mut b) = (Sampler::new(p), Sampler::new(p));
        let xs: Vec<u32> = (0..20).map(|_| a.sample(&logits)).collect();
        let ys: Vec<u32> = (0..20).map(|_| b.sample(&logits)).collect();
        assert_eq!(xs, ys);
        let mut tiny = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 1,
            top_k: 0,
            min_p: 0.0,
        });
        for _ in 0..10 {
            assert_eq!(tiny.sample(&logits), argmax(&logits));
        }
    }

    /// top-k and min-p keep the most likely tokens only (every draw among them, each of them
    /// drawn), top-p then cuts what they left; top-k 1 and a min-p of 1 are greedy.
    #[test]
    fn top_k_and_min_p_keep_the_most_likely() {
        // Probabilities 0.4, 0.3, 0.2, 0.1 (ids 2, 0, 3, 1).
        let logits: Vec<f32> = [0.3f32, 0.1, 0.4, 0.2].iter().map(|p| p.ln()).collect();
        let draws = |top_k, min_p, top_p| {
            let mut s = Sampler::new(SamplingParams {
                temperature: 1.0,
                top_p,
                seed: 7,
                top_k,
                min_p,
            });
            let mut seen: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
            seen.sort();
            seen.dedup();
            seen
        };
        assert_eq!(draws(0, 0.0, 1.0), [0, 1, 2, 3]);
        assert_eq!(draws(2, 0.0, 1.0), [0, 2]);
        assert_eq!(draws(1, 0.0, 1.0), [2]);
        // min-p 0.45: at least 0.18 (of 0.4), so 0.2 stays; 0.55 keeps 0.3 and 0.4 only.
        assert_eq!(draws(0, 0.45, 1.0), [0, 2, 3]);
        assert_eq!(draws(0, 0.55, 1.0), [0, 2]);
        assert_eq!(draws(0, 1.0, 1.0), [2]);
        // top-p over what top-k left: of 0.4 and 0.3 (renormalised 0.57, 0.43), 0.5 keeps one.
        assert_eq!(draws(2, 0.0, 0.5), [2]);
        assert_eq!(draws(3, 0.0, 0.7), [0, 2]);
    }
}
