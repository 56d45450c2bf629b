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
        let top_p = self.params.top_p.clamp(0.0, 1.0) as f64;
        let mut kept = 0;
        let mut mass = 0.0;
        for p in &probs {
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

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        let mut s = Sampler::new(SamplingParams {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
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
        };
        let (mut a, mut b) = (Sampler::new(p), Sampler::new(p));
        let xs: Vec<u32> = (0..20).map(|_| a.sample(&logits)).collect();
        let ys: Vec<u32> = (0..20).map(|_| b.sample(&logits)).collect();
        assert_eq!(xs, ys);
        let mut tiny = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 1,
        });
        for _ in 0..10 {
            assert_eq!(tiny.sample(&logits), argmax(&logits));
        }
    }
}
