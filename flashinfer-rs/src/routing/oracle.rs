//! A CPU reference for every routing method: what the kernels must choose, in the order they
//! must choose it, and the weights they must give.
//!
//! # Which reference
//!
//! Each method follows its model's own reference router (the PyTorch code the checkpoints were
//! trained with), computed as those references compute it, in fp32:
//!
//! | method | reference |
//! |---|---|
//! | `DeepSeekV3` | DeepSeek-V3 `modeling_deepseek.py` `MoEGate` (`noaux_tc`): `s = sigmoid(logits.float())`, key `s + e_score_correction_bias`, groups scored by their two best keys, weights `s / (sum + 1e-20) * routed_scaling_factor`; with `n_group <= 1` the same gate as GLM-4.5/5 (`Glm4MoeTopkRouter`) and Kimi-K2 use |
//! | `MiniMax2` | MiniMax-M2's gate: key `sigmoid(l) + bias`, weights `s / (sum + 1e-20) * scale` |
//! | `Renormalize`, `RenormalizeNaive` | Qwen3-MoE / Mixtral: top-k, softmax over the chosen logits (= softmax, top-k, divide by the sum) |
//! | `Default` | softmax over all experts, top-k of the probabilities, not renormalised (Qwen2-MoE with `norm_topk_prob = false`) |
//! | `DeepSeekV2` | DeepSeek-V2 `modeling_deepseek.py` `MoEGate` (`scoring_func = "softmax"`, `topk_method` `"greedy"` / `"group_limited_greedy"`): `p = softmax(logits.float())`, groups scored by their best `p`, the top-k among the kept groups' experts (dropped experts never chosen); weights `p / (sum + 1e-20)` if `norm_topk_prob` and `top_k > 1`, else `p * routed_scaling_factor`. [`route_topk`] only: upstream has no kernel |
//! | `Llama4` | Llama 4's router: top-1 of the logits, weight `sigmoid(logit)` |
//! | `TopK`, `Sigmoid`, `SigmoidRenorm` | FlashInfer's `routing_reference_*` (`tests/moe/trtllm_gen_fused_moe_utils.py`) |
//!
//! At the edges this means (and the kernels, with our patches, agree; see flashinfer-sys/vendor/patches):
//! - a sigmoid is an fp32 value: it underflows to exactly 0 for strongly negative logits
//!   (below about -104; the kernels, built with fast math, flush the subnormal sigmoids of
//!   logits in about `[-104, -87]` to 0 as well, which only reorders experts whose sigmoids
//!   are all below 1.2e-38 and moves weights by less than 1e-18), and a key `s + bias` is an
//!   fp32 sum, so a tiny `s` vanishes into a large bias (GLM-5: biases ~12, chosen sigmoids
//!   ~1e-8) and the bias alone decides;
//! - the sigmoid is accurate relative to its value (PyTorch's is), also at 1e-8: 0.6.13's
//!   kernels computed `0.5 * tanh(x / 2) + 0.5`, a multiple of 3e-8 there (our patch 0006);
//! - the DeepSeekV3 and MiniMax2 weights come from the un-biased sigmoid and are floored at
//!   `sum + 1e-20`: a token whose chosen sigmoids all underflow gets weights 0, never NaN
//!   (0.6.13's kernels gave NaN there, and recovered the sigmoid as `(s + bias) - bias`,
//!   which cancels: upstream fixes c53229efd, 57b771995, 08ddfbcd2, patches 0002-0004);
//! - the grouped DeepSeekV3 kernel rounds the bias to bf16 before adding it (the reference
//!   does not; we model the kernel, the difference is below bf16 resolution of the bias).
//!
//! # Order, ties, NaN and infinities
//!
//! Experts are taken in descending key order; equal keys go to the smaller expert index. Keys
//! are ordered as the kernels order them: by their fp32 bit pattern made monotonic (cub's
//! radix twiddle), which is IEEE-754's total order:
//! `-NaN < -inf < ... < -0 < +0 < ... < +inf < +NaN`.
//! - A key computed from a NaN (a sigmoid, a softmax, `s + bias`) is the canonical NaN the
//!   GPU produces, `+NaN`, so it ranks first. A raw logit used as its own key
//!   (`Renormalize`, `TopK`) keeps its sign: `-NaN` ranks last, `+NaN` first (PyTorch's
//!   `topk` ranks every NaN first).
//! - `Llama4` never chooses a NaN logit: its kernels keep a running maximum with `>`, so a NaN
//!   counts as `-inf`, and a row of nothing but NaN and `-inf` chooses expert 0 with weight
//!   `sigmoid(-inf) = 0`.
//! - Weights propagate NaN and infinities as fp32 arithmetic does: a softmax over a row with a
//!   NaN or a `+inf` (or only `-inf`) is NaN everywhere; `sigmoid(+inf) = 1`,
//!   `sigmoid(-inf) = 0`; `SigmoidRenorm` divides by `max(sum, 1e-20)` with IEEE `max`, which
//!   drops a NaN sum.
//!
//! Keys are fp32 values as the kernels compute them; weights are computed in f64 from those
//! fp32 inputs (the kernels round them to bf16). Agreement with the kernels' fast-math
//! sigmoid/exp is therefore exact only where neighbouring keys are clearly apart:
//! [`selection_margin`] says how far apart they are, and the generators ([`separated_logits`],
//! [`regime_logits`]) make inputs whose margins are wide, or whose keys are exactly equal.

use half::bf16;

use super::method::{RoutingConfig, RoutingMethod};
use crate::alloc;
use crate::error::{ensure, Result};

/// The reference routing of `num_tokens` rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    /// `[num_tokens, top_k]` chosen expert ids, best first.
    pub ids: Vec<i16>,
    /// `[num_tokens, top_k]` weights of the chosen experts (before bf16 rounding).
    pub weights: Vec<f32>,
}

/// The NaN every GPU arithmetic instruction returns (sign clear, all payload bits set).
const CANONICAL_NAN: f32 = f32::from_bits(0x7fff_ffff);

/// A computed fp32 value as the GPU holds it: NaNs become the canonical `+NaN`.
fn gpu(x: f64) -> f32 {
    let v = x as f32;
    if v.is_nan() {
        CANONICAL_NAN
    } else {
        v
    }
}

/// `sigmoid(x)` as an fp32 value (underflows to 0 below about -88; NaN stays NaN).
fn sigmoid(x: f32) -> f32 {
    gpu(1.0 / (1.0 + (-(x as f64)).exp()))
}

/// The kernels' sort key of a score: its bits made monotonic in IEEE total order.
fn order(key: f32) -> u32 {
    let b = key.to_bits();
    if b & 0x8000_0000 != 0 {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// Which kernels a routing is modelled for: they differ only in how the grouped DeepSeekV3
/// path adds the bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kernels {
    /// Upstream's routing kernels ([`Router`](super::Router)): the grouped DeepSeekV3 kernel
    /// rounds the bias to bf16 before adding it.
    Upstream,
    /// flashinfer-rs's top-k router ([`TopKRouter`](super::TopKRouter)): the bias as given,
    /// as the models' reference routers add it.
    TopK,
}

/// The bias as the kernels add it.
fn effective_bias(
    kernels: Kernels,
    method: &RoutingMethod,
    bias: Option<&[f32]>,
    e: usize,
) -> Vec<f32> {
    match bias {
        None => vec![0.0; e],
        Some(b) if kernels == Kernels::Upstream && method.is_grouped() => {
            b.iter().map(|&x| bf16::from_f32(x).to_f32()).collect()
        }
        Some(b) => b.to_vec(),
    }
}

/// Softmax of `xs` in f64, NaN everywhere when the row holds a NaN, a `+inf` or only `-inf`.
fn softmax(xs: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let max = xs.clone().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = xs.map(|x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|x| x / sum).collect()
}

/// Selection key of every expert of one token, as the kernels compute it (fp32).
fn keys(method: &RoutingMethod, row: &[f32], bias: &[f32]) -> Vec<f32> {
    match method {
        RoutingMethod::Default | RoutingMethod::DeepSeekV2 { .. } => {
            softmax(row.iter().map(|&x| x as f64))
                .into_iter()
                .map(gpu)
                .collect()
        }
        RoutingMethod::Renormalize | RoutingMethod::RenormalizeNaive | RoutingMethod::TopK => {
            row.to_vec()
        }
        // Llama4's kernels take a running maximum with `>` from -inf: a NaN never wins, so it
        // ranks as -inf would (and a row of only NaN / -inf picks expert 0 with key -inf).
        RoutingMethod::Llama4 => row
            .iter()
            .map(|&x| if x.is_nan() { f32::NEG_INFINITY } else { x })
            .collect(),
        RoutingMethod::SigmoidRenorm { .. } | RoutingMethod::Sigmoid => {
            row.iter().map(|&x| sigmoid(x)).collect()
        }
        RoutingMethod::DeepSeekV3 { .. } | RoutingMethod::MiniMax2 { .. } => row
            .iter()
            .zip(bias)
            .map(|(&x, &b)| gpu((sigmoid(x) + b) as f64))
            .collect(),
    }
}

/// `a` ranks before `b`: larger key, then smaller index.
fn better(a: (f32, usize), b: (f32, usize)) -> bool {
    let (oa, ob) = (order(a.0), order(b.0));
    oa > ob || (oa == ob && a.1 < b.1)
}

/// The best `n` of `candidates` (key, index), best first.
fn top_n(candidates: impl Iterator<Item = (f32, usize)>, n: usize) -> Vec<(f32, usize)> {
    let mut top: Vec<(f32, usize)> = Vec::with_capacity(n + 1);
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
type Ranked = Vec<(f32, usize)>;

/// `(n_group, topk_group)` of a grouped method (DeepSeekV3, DeepSeekV2 with `n_group > 1`).
fn grouping(method: &RoutingMethod) -> Option<(usize, usize)> {
    match *method {
        RoutingMethod::DeepSeekV3 {
            n_group,
            topk_group,
            ..
        }
        | RoutingMethod::DeepSeekV2 {
            n_group,
            topk_group,
            ..
        } if n_group > 1 => Some((n_group as usize, topk_group as usize)),
        _ => None,
    }
}

/// Group scores and the kept groups, best first. A group scores the fp32 sum of its two best
/// keys (DeepSeekV3), or its best key (DeepSeekV2's `max`).
fn kept_groups(
    method: &RoutingMethod,
    keys: &[f32],
    n_group: usize,
    topk_group: usize,
) -> (Ranked, Ranked) {
    let per = keys.len() / n_group;
    let best_of = if matches!(method, RoutingMethod::DeepSeekV2 { .. }) {
        1
    } else {
        2
    };
    let scores: Vec<(f32, usize)> = (0..n_group)
        .map(|g| {
            let best = top_n((g * per..(g + 1) * per).map(|i| (keys[i], i)), best_of);
            match best_of {
                1 => (best[0].0, g),
                _ => (gpu(best.iter().map(|b| b.0).sum::<f32>() as f64), g),
            }
        })
        .collect();
    let kept = top_n(scores.iter().copied(), topk_group);
    (scores, kept)
}

/// Experts eligible for one token's top-k (all of them, or those of the kept groups).
fn eligible(method: &RoutingMethod, keys: &[f32]) -> Vec<usize> {
    match grouping(method) {
        Some((n_group, topk_group)) => {
            let per = keys.len() / n_group;
            let (_, kept) = kept_groups(method, keys, n_group, topk_group);
            let mut experts: Vec<usize> = kept
                .iter()
                .flat_map(|&(_, g)| g * per..(g + 1) * per)
                .collect();
            experts.sort_unstable();
            experts
        }
        None => (0..keys.len()).collect(),
    }
}

/// `s * scale / (sum + 1e-20)` over the chosen un-biased sigmoids (DeepSeekV3, MiniMax2).
fn scaled_sum_normalize(s: &[f64], scale: f32) -> Vec<f64> {
    let sum: f64 = s.iter().sum();
    s.iter().map(|x| x * scale as f64 / (sum + 1e-20)).collect()
}

/// The weights of the chosen experts, from their logits and keys.
fn weights(method: &RoutingMethod, row: &[f32], chosen: &[(f32, usize)]) -> Vec<f32> {
    let logit = |c: &(f32, usize)| row[c.1];
    let sigmoids = || -> Vec<f64> { chosen.iter().map(|c| sigmoid(logit(c)) as f64).collect() };
    let w: Vec<f64> = match *method {
        RoutingMethod::Default => chosen.iter().map(|c| c.0 as f64).collect(),
        // DeepSeek-V2's MoEGate: normalised (not scaled) when norm_topk_prob and top_k > 1,
        // else scaled; the chosen probabilities are the keys.
        RoutingMethod::DeepSeekV2 {
            routed_scaling_factor,
            norm_topk_prob,
            ..
        } => {
            let p: Vec<f64> = chosen.iter().map(|c| c.0 as f64).collect();
            if norm_topk_prob && p.len() > 1 {
                let sum: f64 = p.iter().sum();
                p.iter().map(|x| x / (sum + 1e-20)).collect()
            } else {
                p.iter().map(|x| x * routed_scaling_factor as f64).collect()
            }
        }
        RoutingMethod::Renormalize | RoutingMethod::RenormalizeNaive => {
            softmax(chosen.iter().map(|c| logit(c) as f64))
        }
        RoutingMethod::TopK => chosen.iter().map(|c| logit(c) as f64).collect(),
        // Llama4 weighs the winning key (so a row without a number gets sigmoid(-inf) = 0).
        RoutingMethod::Llama4 => chosen.iter().map(|c| sigmoid(c.0) as f64).collect(),
        RoutingMethod::Sigmoid => sigmoids(),
        RoutingMethod::SigmoidRenorm { norm_topk_prob } => {
            let s = sigmoids();
            if norm_topk_prob {
                // IEEE max (as the kernels' fmaxf): a NaN sum gives way to the floor.
                let sum: f64 = s.iter().sum();
                s.iter().map(|x| x / sum.max(1e-20)).collect()
            } else {
                s
            }
        }
        RoutingMethod::DeepSeekV3 {
            routed_scaling_factor,
            ..
        }
        | RoutingMethod::MiniMax2 {
            routed_scaling_factor,
        } => scaled_sum_normalize(&sigmoids(), routed_scaling_factor),
    };
    w.into_iter().map(gpu).collect()
}

/// Routes one token: its chosen (key, expert) pairs, best first.
fn route_row(cfg: &RoutingConfig, row: &[f32], bias: &[f32]) -> Vec<(f32, usize)> {
    let k = keys(&cfg.method, row, bias);
    let pool = eligible(&cfg.method, &k);
    top_n(pool.into_iter().map(|i| (k[i], i)), cfg.top_k as usize)
}

/// Checks what [`route`], [`route_topk`] and [`selection_margin`] are given: the config as
/// [`RoutingConfig::validate`] ([`Kernels::Upstream`]) or [`RoutingConfig::validate_topk`]
/// ([`Kernels::TopK`]) does, `logits` holding `num_tokens` rows, and a bias of `num_experts`
/// values exactly for the methods that take one.
fn check_inputs(
    kernels: Kernels,
    cfg: &RoutingConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    num_tokens: usize,
) -> Result<()> {
    match kernels {
        Kernels::Upstream => cfg.validate()?,
        Kernels::TopK => cfg.validate_topk()?,
    }
    let e = cfg.num_experts as usize;
    ensure(
        crate::error::covers(logits.len(), num_tokens, e),
        "logits",
        || {
            format!(
                "holds {} values, fewer than num_tokens ({num_tokens}) x num_experts ({e})",
                logits.len()
            )
        },
    )?;
    super::check_bias(cfg, bias.map(<[f32]>::len))
}

/// The reference routing of the first `num_tokens` rows of `logits` (`[T, E]` row-major; pass
/// bf16 logits as their exact f32 values) as upstream's routing kernels ([`Router`](super::Router))
/// must give it. `bias` is `[E]`, for the methods that take one.
///
/// Refuses (with the error the routing call would give) a config that
/// [`RoutingConfig::validate`] refuses (so a method upstream has no kernel for, e.g.
/// [`DeepSeekV2`](RoutingMethod::DeepSeekV2): [`route_topk`] has those), logits shorter than
/// `num_tokens` rows, and a missing, unexpected or wrong-length bias.
pub fn route(
    cfg: &RoutingConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    num_tokens: usize,
) -> Result<Routed> {
    route_for(Kernels::Upstream, cfg, logits, bias, num_tokens)
}

/// [`route`] as flashinfer-rs's top-k router ([`TopKRouter`](super::TopKRouter)) must give
/// it: the same everywhere except that grouped DeepSeekV3 adds the bias as given (upstream's
/// kernel rounds it to bf16 first), and that it also routes the methods only the top-k
/// router has ([`RoutingConfig::validate_topk`] instead of [`RoutingConfig::validate`]).
pub fn route_topk(
    cfg: &RoutingConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    num_tokens: usize,
) -> Result<Routed> {
    route_for(Kernels::TopK, cfg, logits, bias, num_tokens)
}

fn route_for(
    kernels: Kernels,
    cfg: &RoutingConfig,
    logits: &[f32],
    bias: Option<&[f32]>,
    num_tokens: usize,
) -> Result<Routed> {
    check_inputs(kernels, cfg, logits, bias, num_tokens)?;
    let e = cfg.num_experts as usize;
    let k = cfg.top_k as usize;
    let bias = effective_bias(kernels, &cfg.method, bias, e);
    let mut out = Routed {
        ids: Vec::with_capacity(num_tokens * k),
        weights: Vec::with_capacity(num_tokens * k),
    };
    for row in logits.chunks_exact(e).take(num_tokens) {
        let chosen = route_row(cfg, row, &bias);
        out.ids.extend(chosen.iter().map(|c| c.1 as i16));
        out.weights.extend(weights(&cfg.method, row, &chosen));
    }
    Ok(out)
}

/// Gap between two keys in key units; 0 for equal keys (bit-identical, so the tie rule
/// decides and no rounding can reorder them) is reported as infinity, and any NaN as 0.
fn gap(hi: f32, lo: f32) -> f64 {
    if hi.to_bits() == lo.to_bits() {
        f64::INFINITY
    } else {
        let g = hi as f64 - lo as f64;
        if g.is_nan() {
            0.0
        } else {
            g
        }
    }
}

/// How clearly one token's routing is decided: the smallest gap between neighbouring chosen
/// keys, between the last chosen and the best unchosen eligible key, and (grouped DeepSeekV3)
/// between the last kept and the best dropped group score. Bit-identical keys count as clearly
/// decided (the tie rule orders them, whatever the rounding); `f64::INFINITY` when nothing could
/// be confused. Refuses what [`route_topk`] refuses (with `num_tokens = 1`).
pub fn selection_margin(cfg: &RoutingConfig, row: &[f32], bias: Option<&[f32]>) -> Result<f64> {
    check_inputs(Kernels::TopK, cfg, row, bias, 1)?;
    let e = cfg.num_experts as usize;
    let bias = effective_bias(Kernels::Upstream, &cfg.method, bias, e);
    let k = keys(&cfg.method, &row[..e], &bias);
    let pool = eligible(&cfg.method, &k);
    let ranked = top_n(pool.iter().map(|&i| (k[i], i)), cfg.top_k as usize + 1);
    let mut margin = ranked
        .windows(2)
        .map(|w| gap(w[0].0, w[1].0))
        .fold(f64::INFINITY, f64::min);
    if let Some((n_group, topk_group)) = grouping(&cfg.method) {
        if topk_group < n_group {
            let (scores, _) = kept_groups(&cfg.method, &k, n_group, topk_group);
            let ranked = top_n(scores.into_iter(), topk_group + 1);
            margin = margin.min(gap(ranked[topk_group - 1].0, ranked[topk_group].0));
        }
    }
    Ok(margin)
}

/// Smallest [`selection_margin`] that [`separated_logits`] guarantees, in key units.
pub const SEPARATION: f64 = 2e-3;

/// Logits (and a bias where the method takes one) whose every token is routed with a margin of
/// at least [`SEPARATION`], so that kernels with fast-math sigmoid/exp and bf16 rounding
/// must agree with [`route`]. The comfortable regime: [`regime_logits`] has the others.
///
/// Per token, a random `top_k + 1` experts (chosen inside random "kept" groups for grouped
/// DeepSeekV3) get logits on a ladder with wide steps, the kept groups' other experts sit in a
/// middle band, and everything else in a low band. When `bf16_logits` is set the values are
/// rounded to bf16 (the caller uploads them as bf16). Deterministic in `seed`.
///
/// Refuses a config that [`RoutingConfig::validate_topk`] refuses, and a `num_tokens` whose
/// logits do not fit memory ([`Error::HostAllocation`](crate::Error::HostAllocation)).
pub fn separated_logits(
    cfg: &RoutingConfig,
    num_tokens: usize,
    bf16_logits: bool,
    seed: u64,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    regime_logits(cfg, Regime::Separated, num_tokens, bf16_logits, seed)
}

/// The input regimes the test data reaches (see [`regime_logits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regime {
    /// [`separated_logits`]: moderate logits on a ladder, small biases (`[0, 0.01)`).
    Separated,
    /// GLM-5-like: biases around 12 (spread over `[11.5, 12.5)`), logits in `[-20, -16]` so
    /// the sigmoids (2e-9..1e-7) vanish into the bias in fp32: the bias alone selects, and the
    /// weights must come from the un-biased sigmoids. Methods with a bias only.
    LargeBias,
    /// Every logit of a token below -110, so every sigmoid underflows to 0: selection by the
    /// bias, DeepSeekV3/MiniMax2 weights 0 (`0 / (0 + 1e-20)`), SigmoidRenorm weights 0 and
    /// ids in index order (all keys tie). Sigmoid-keyed methods only.
    Underflow,
    /// The ladder of [`Regime::Separated`] scaled by 40 (logits up to about ±240): softmaxes
    /// saturate to one-hot weights. Raw-logit-keyed methods only (`Renormalize`,
    /// `RenormalizeNaive`, `TopK`, `Llama4`), whose keys cannot saturate.
    Extreme,
}

impl Regime {
    /// Whether this regime has a meaning for `method`.
    pub fn applies_to(self, method: &RoutingMethod) -> bool {
        let sigmoid_keyed = matches!(
            method,
            RoutingMethod::DeepSeekV3 { .. }
                | RoutingMethod::MiniMax2 { .. }
                | RoutingMethod::SigmoidRenorm { .. }
                | RoutingMethod::Sigmoid
        );
        match self {
            Regime::Separated => true,
            Regime::LargeBias => method.needs_bias(),
            Regime::Underflow => sigmoid_keyed,
            Regime::Extreme => matches!(
                method,
                RoutingMethod::Renormalize
                    | RoutingMethod::RenormalizeNaive
                    | RoutingMethod::TopK
                    | RoutingMethod::Llama4
            ),
        }
    }
}

/// Logits (and a bias where the method takes one) of `regime`, every token routed by keys
/// that a correct kernel cannot order differently from [`route`]: keys at least
/// [`SEPARATION`] apart ([`Regime::Separated`], [`Regime::Extreme`]), or keys that are exactly
/// the fp32 (or bf16-rounded) bias because the sigmoid vanishes into it or underflows to 0
/// ([`Regime::LargeBias`], [`Regime::Underflow`]): every kernel computes those bit-exactly, and
/// equal ones go to the smaller index. Deterministic in `seed`.
///
/// Refuses ([`Error::InvalidArgument`](crate::Error::InvalidArgument)) a config that
/// [`RoutingConfig::validate_topk`] refuses and a regime that does not apply to its method
/// ([`Regime::applies_to`]); logits that do not fit memory are
/// [`Error::HostAllocation`](crate::Error::HostAllocation).
pub fn regime_logits(
    cfg: &RoutingConfig,
    regime: Regime,
    num_tokens: usize,
    bf16_logits: bool,
    seed: u64,
) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    cfg.validate_topk()?;
    ensure(regime.applies_to(&cfg.method), "regime", || {
        format!("{regime:?} does not apply to {:?}", cfg.method)
    })?;
    let n = alloc::product("num_tokens", &[num_tokens, cfg.num_experts as usize])?;
    let mut rng = SplitMix64(seed);
    let bias: Option<Vec<f32>> = cfg.method.needs_bias().then(|| {
        (0..cfg.num_experts)
            .map(|_| match regime {
                Regime::LargeBias => 11.5 + rng.unit() as f32,
                _ => (rng.unit() * 0.01) as f32,
            })
            .collect()
    });
    let seed = rng.next_u64();
    let round = |x: f32| {
        if bf16_logits {
            bf16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let logits = match regime {
        Regime::Separated => {
            separated_logits_for_bias(cfg, num_tokens, bf16_logits, seed, bias.as_deref())?
        }
        // Scaled, then rounded: steps of >= 3.6 stay apart at bf16's spacing (<= 1 below 256).
        Regime::Extreme => {
            let mut logits = separated_logits_for_bias(cfg, num_tokens, false, seed, None)?;
            logits.iter_mut().for_each(|x| *x = round(*x * 40.0));
            logits
        }
        Regime::LargeBias | Regime::Underflow => {
            let (lo, span) = if regime == Regime::LargeBias {
                (-20.0, 4.0)
            } else {
                (-250.0, 140.0)
            };
            let mut rng = SplitMix64(seed);
            let mut logits = alloc::with_capacity("logits", n)?;
            logits.extend((0..n).map(|_| round(lo + span * rng.unit() as f32)));
            logits
        }
    };
    Ok((logits, bias))
}

/// [`separated_logits`] for a given bias (values in `[0, 0.01)`), e.g. one captured in a graph.
///
/// Refuses what [`route_topk`] refuses (a config [`RoutingConfig::validate_topk`] refuses; a
/// missing, unexpected or wrong-length bias), and logits that do not fit memory
/// ([`Error::HostAllocation`](crate::Error::HostAllocation)).
pub fn separated_logits_for_bias(
    cfg: &RoutingConfig,
    num_tokens: usize,
    bf16_logits: bool,
    seed: u64,
    bias: Option<&[f32]>,
) -> Result<Vec<f32>> {
    cfg.validate_topk()?;
    super::check_bias(cfg, bias.map(<[f32]>::len))?;
    let e = cfg.num_experts as usize;
    let n = alloc::product("num_tokens", &[num_tokens, e])?;
    let k = cfg.top_k as usize;
    let mut rng = SplitMix64(seed);
    let round = |x: f32| {
        if bf16_logits {
            bf16::from_f32(x).to_f32()
        } else {
            x
        }
    };
    let mut logits = alloc::with_capacity("logits", n)?;
    let mut perm: Vec<usize> = (0..e).collect();
    for _ in 0..num_tokens {
        for attempt in 0.. {
            let mut row = vec![0f32; e];
            // Which experts may be chosen: all, or the experts of `topk_group` random groups.
            let pool: Vec<usize> = match grouping(&cfg.method) {
                Some((n_group, topk_group)) => {
                    let per = e / n_group;
                    let mut groups: Vec<usize> = (0..n_group).collect();
                    rng.shuffle(&mut groups);
                    groups[..topk_group]
                        .iter()
                        .flat_map(|&g| g * per..(g + 1) * per)
                        .collect()
                }
                None => (0..e).collect(),
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
            if selection_margin(cfg, &row, bias)? >= SEPARATION {
                logits.extend_from_slice(&row);
                break;
            }
            ensure(attempt < 1000, "cfg", || {
                format!("no separated logits found for {cfg:?} in 1000 draws")
            })?;
        }
    }
    Ok(logits)
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

    /// Uniform in `[0, n)`; 0 when `n == 0`.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
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
