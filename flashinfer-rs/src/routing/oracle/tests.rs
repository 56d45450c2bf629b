//! The reference itself, checked by hand-worked cases and by properties.
use super::*;

/// The exact sigmoid, for hand-worked expectations.
fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}
use crate::routing::RoutingConfig;

fn cfg(method: RoutingMethod, e: u32, k: u32) -> RoutingConfig {
    RoutingConfig::new(method, e, k)
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

#[test]
fn renormalize_takes_the_largest_logits_and_softmaxes_them() {
    let r = route(
        &cfg(RoutingMethod::Renormalize, 4, 2),
        &[1.0, 3.0, 2.0, 0.0],
        None,
        1,
    )
    .unwrap();
    assert_eq!(r.ids, vec![1, 2]);
    let (a, b) = (1f64.exp(), 0f64.exp());
    assert!(close(
        &r.weights,
        &[(a / (a + b)) as f32, (b / (a + b)) as f32]
    ));
}

#[test]
fn equal_keys_go_to_the_smaller_expert() {
    for method in [
        RoutingMethod::Renormalize,
        RoutingMethod::TopK,
        RoutingMethod::Default,
        RoutingMethod::Sigmoid,
    ] {
        let r = route(&cfg(method, 5, 3), &[0.5, 2.0, 0.5, 2.0, 0.5], None, 1).unwrap();
        assert_eq!(r.ids, vec![1, 3, 0], "{method:?}");
    }
}

#[test]
fn default_weights_are_the_softmax_over_all_experts() {
    let logits = [0.0f32, 1.0, 2.0, 3.0];
    let r = route(&cfg(RoutingMethod::Default, 4, 2), &logits, None, 1).unwrap();
    let sum: f64 = logits.iter().map(|&x| (x as f64).exp()).sum();
    assert_eq!(r.ids, vec![3, 2]);
    assert!(close(
        &r.weights,
        &[(3f64.exp() / sum) as f32, (2f64.exp() / sum) as f32]
    ));
}

#[test]
fn topk_weights_are_the_raw_logits_and_llama4_the_sigmoid_of_the_max() {
    let logits = [0.25f32, -1.0, 0.75];
    let r = route(&cfg(RoutingMethod::TopK, 3, 2), &logits, None, 1).unwrap();
    assert_eq!((r.ids, r.weights), (vec![2, 0], vec![0.75, 0.25]));
    let r = route(&cfg(RoutingMethod::Llama4, 3, 1), &logits, None, 1).unwrap();
    assert_eq!(r.ids, vec![2]);
    assert!(close(&r.weights, &[sig(0.75) as f32]));
}

#[test]
fn sigmoid_renorm_normalises_only_when_asked() {
    let logits = [0.0f32, 1.0, -1.0];
    let s1 = sig(1.0);
    let s0 = sig(0.0);
    let on = route(
        &cfg(
            RoutingMethod::SigmoidRenorm {
                norm_topk_prob: true,
            },
            3,
            2,
        ),
        &logits,
        None,
        1,
    )
    .unwrap();
    assert_eq!(on.ids, vec![1, 0]);
    assert!(close(
        &on.weights,
        &[(s1 / (s1 + s0)) as f32, (s0 / (s1 + s0)) as f32]
    ));
    let off = route(
        &cfg(
            RoutingMethod::SigmoidRenorm {
                norm_topk_prob: false,
            },
            3,
            2,
        ),
        &logits,
        None,
        1,
    )
    .unwrap();
    assert!(close(&off.weights, &[s1 as f32, s0 as f32]));
    let plain = route(&cfg(RoutingMethod::Sigmoid, 3, 2), &logits, None, 1).unwrap();
    assert_eq!(plain, off);
}

#[test]
fn bias_moves_the_choice_but_not_the_weights() {
    // Expert 0 has the larger logit, expert 1 the larger logit + bias.
    let logits = [0.5f32, 0.4, -3.0, -3.0];
    let bias = [0.0f32, 0.1, 0.0, 0.0];
    let m = RoutingMethod::MiniMax2 {
        routed_scaling_factor: 2.0,
    };
    let r = route(&cfg(m, 4, 1), &logits, Some(&bias), 1).unwrap();
    assert_eq!(r.ids, vec![1]);
    // One chosen expert: weight = s / s * scale.
    assert!(close(&r.weights, &[2.0]));
    let ds = RoutingMethod::DeepSeekV3 {
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 1.0,
    };
    let r = route(&cfg(ds, 4, 2), &logits, Some(&bias), 1).unwrap();
    assert_eq!(r.ids, vec![1, 0]);
    let (a, b) = (sig(0.4), sig(0.5));
    assert!(close(
        &r.weights,
        &[(a / (a + b)) as f32, (b / (a + b)) as f32]
    ));
}

#[test]
fn grouped_deepseek_keeps_the_groups_with_the_best_two_experts() {
    // 4 groups of 2. Group 0 holds the single best expert but a poor second, so its top-2
    // sum loses to groups 2 and 3; the top-2 experts must come from those groups only.
    let logits = [4.0f32, -4.0, 0.0, 0.0, 1.0, 1.0, 0.9, 0.8];
    let m = RoutingMethod::DeepSeekV3 {
        n_group: 4,
        topk_group: 2,
        routed_scaling_factor: 1.0,
    };
    let r = route(&cfg(m, 8, 2), &logits, Some(&[0.0; 8]), 1).unwrap();
    assert_eq!(r.ids, vec![4, 5]);
    // Without groups the best single expert wins.
    let flat = RoutingMethod::DeepSeekV3 {
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 1.0,
    };
    assert_eq!(
        route(&cfg(flat, 8, 2), &logits, Some(&[0.0; 8]), 1)
            .unwrap()
            .ids,
        vec![0, 4]
    );
}

#[test]
fn grouped_deepseek_rounds_the_bias_to_bf16() {
    // 1 + 2^-9 is not a bf16 value: rounded it becomes 1.0 and ties with expert 0's 1.0,
    // so the tie rule (smaller index) decides; unrounded expert 1 would win.
    let bias = [1.0f32, 1.0 + 1.0 / 512.0, -10.0, -10.0];
    let logits = [0.0f32, 0.0, 0.0, 0.0];
    let grouped = RoutingMethod::DeepSeekV3 {
        n_group: 2,
        topk_group: 1,
        routed_scaling_factor: 1.0,
    };
    assert_eq!(
        route(&cfg(grouped, 4, 1), &logits, Some(&bias), 1)
            .unwrap()
            .ids,
        vec![0]
    );
    let flat = RoutingMethod::DeepSeekV3 {
        n_group: 1,
        topk_group: 1,
        routed_scaling_factor: 1.0,
    };
    assert_eq!(
        route(&cfg(flat, 4, 1), &logits, Some(&bias), 1)
            .unwrap()
            .ids,
        vec![1]
    );
}

/// Every method at a few shapes it supports.
fn sample_configs() -> Vec<RoutingConfig> {
    let ds = |n_group, topk_group| RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        routed_scaling_factor: 2.5,
    };
    vec![
        cfg(RoutingMethod::Default, 64, 8),
        cfg(RoutingMethod::Renormalize, 2048, 22),
        cfg(RoutingMethod::RenormalizeNaive, 128, 4),
        cfg(RoutingMethod::TopK, 256, 8),
        cfg(RoutingMethod::Llama4, 128, 1),
        cfg(
            RoutingMethod::SigmoidRenorm {
                norm_topk_prob: true,
            },
            256,
            8,
        ),
        cfg(RoutingMethod::Sigmoid, 8, 2),
        cfg(
            RoutingMethod::MiniMax2 {
                routed_scaling_factor: 1.0,
            },
            512,
            22,
        ),
        cfg(ds(8, 4), 256, 8),
        cfg(ds(4, 2), 64, 8),
        cfg(ds(1, 1), 384, 8),
    ]
}

#[test]
fn separated_logits_are_clearly_routed_and_the_routing_is_well_formed() {
    for c in sample_configs() {
        c.validate().unwrap();
        for bf16_logits in [false, true] {
            let t = 40;
            let (logits, bias) = separated_logits(&c, t, bf16_logits, 7).unwrap();
            assert_eq!(logits.len(), t * c.num_experts as usize);
            if bf16_logits {
                assert!(
                    logits.iter().all(|&x| bf16::from_f32(x).to_f32() == x),
                    "bf16 values"
                );
            }
            let r = route(&c, &logits, bias.as_deref(), t).unwrap();
            for (row, ids) in logits
                .chunks(c.num_experts as usize)
                .zip(r.ids.chunks(c.top_k as usize))
            {
                assert!(
                    selection_margin(&c, row, bias.as_deref()).unwrap() >= SEPARATION,
                    "{c:?}"
                );
                let mut sorted = ids.to_vec();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), ids.len(), "distinct ids for {c:?}");
                assert!(ids.iter().all(|&i| (0..c.num_experts as i16).contains(&i)));
            }
            assert!(r.weights.iter().all(|w| w.is_finite()));
        }
    }
}

#[test]
fn renormalised_weights_sum_to_one_and_scaled_ones_to_the_scale() {
    for (method, want) in [
        (RoutingMethod::Renormalize, 1.0),
        (
            RoutingMethod::SigmoidRenorm {
                norm_topk_prob: true,
            },
            1.0,
        ),
        (
            RoutingMethod::DeepSeekV3 {
                n_group: 8,
                topk_group: 4,
                routed_scaling_factor: 2.5,
            },
            2.5,
        ),
        (
            RoutingMethod::MiniMax2 {
                routed_scaling_factor: 1.5,
            },
            1.5,
        ),
    ] {
        let c = cfg(method, 256, 8);
        let (logits, bias) = separated_logits(&c, 16, false, 3).unwrap();
        let r = route(&c, &logits, bias.as_deref(), 16).unwrap();
        for w in r.weights.chunks(8) {
            let sum: f32 = w.iter().sum();
            assert!((sum - want).abs() < 1e-4, "{method:?}: {sum}");
        }
    }
}

#[test]
fn only_the_requested_rows_are_routed() {
    let c = cfg(RoutingMethod::Renormalize, 16, 2);
    let (logits, _) = separated_logits(&c, 10, false, 1).unwrap();
    let r = route(&c, &logits, None, 4).unwrap();
    assert_eq!(r.ids.len(), 8);
    assert_eq!(r.ids, route(&c, &logits[..64], None, 4).unwrap().ids);
}

fn deepseek(n_group: u32, topk_group: u32) -> RoutingMethod {
    RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        routed_scaling_factor: 2.5,
    }
}

#[test]
fn underflowed_sigmoids_give_zero_deepseek_weights_not_nan() {
    // Every sigmoid of the row is 0 in fp32: the bias alone selects, and the reference gate's
    // (sum + 1e-20) floor makes the weights 0.
    let logits = [
        -150.0f32, -120.0, -200.0, -110.0, -130.0, -160.0, -140.0, -190.0,
    ];
    let bias = [0.1f32, 0.5, 0.3, 0.0, 0.7, 0.2, 0.6, 0.4];
    for method in [
        deepseek(1, 1),
        deepseek(2, 1),
        RoutingMethod::MiniMax2 {
            routed_scaling_factor: 1.0,
        },
    ] {
        let r = route(&cfg(method, 8, 2), &logits, Some(&bias), 1).unwrap();
        assert_eq!(r.weights, vec![0.0, 0.0], "{method:?}");
        // The two largest biases; grouped, groups {0..4} and {4..8} score 0.8 and 1.3 and the
        // second is kept: the same two.
        assert_eq!(r.ids, vec![4, 6], "{method:?}");
    }
}

#[test]
fn large_biases_select_and_the_unbiased_sigmoids_weigh() {
    // GLM-5-like: biases ~12, sigmoids ~1e-8. In fp32, 12 + 1e-8 == 12: the keys are the
    // biases; the weights are the un-biased sigmoids renormalised.
    let logits = [-18.0f32, -17.0, -19.0, -16.5];
    let bias = [12.25f32, 12.0, 12.5, 11.75];
    let r = route(&cfg(deepseek(1, 1), 4, 2), &logits, Some(&bias), 1).unwrap();
    assert_eq!(r.ids, vec![2, 0]);
    let (a, b) = (sig(-19.0), sig(-18.0));
    let want = [(a / (a + b) * 2.5) as f32, (b / (a + b) * 2.5) as f32];
    assert!(close(&r.weights, &want), "{:?} vs {want:?}", r.weights);
    // The (sigmoid + bias) - bias that 0.6.13 computed is 0 here: the weights would be NaN.
    let key = sigmoid(-19.0) + 12.5;
    assert_eq!(key - 12.5, 0.0);
}

#[test]
fn equal_fp32_keys_tie_to_the_smaller_index_even_when_f64_would_separate_them() {
    // Two experts with the same bias and different tiny sigmoids: their fp32 keys are equal,
    // so expert 0 wins although its sigmoid is smaller.
    let logits = [-19.0f32, -17.0, -30.0];
    let bias = [12.0f32, 12.0, 0.0];
    let r = route(&cfg(deepseek(1, 1), 3, 1), &logits, Some(&bias), 1).unwrap();
    assert_eq!(r.ids, vec![0]);
}

#[test]
fn nan_and_infinities_route_by_the_kernels_total_order() {
    let nan = f32::NAN;
    let neg_nan = -f32::NAN;
    let inf = f32::INFINITY;
    // Raw keys keep the sign of a NaN: +NaN first, -NaN last, infinities in between.
    let row = [1.0f32, neg_nan, inf, nan, -inf, 0.5];
    let r = route(&cfg(RoutingMethod::TopK, 6, 6), &row, None, 1).unwrap();
    assert_eq!(r.ids, vec![3, 2, 0, 5, 4, 1]);
    assert!(r.weights[0].is_nan() && r.weights[1] == inf && r.weights[4] == -inf);
    // A softmax over a row holding a NaN is NaN everywhere, so the keys all tie (index order).
    let r = route(&cfg(RoutingMethod::Default, 6, 3), &row, None, 1).unwrap();
    assert_eq!(r.ids, vec![0, 1, 2]);
    assert!(r.weights.iter().all(|w| w.is_nan()));
    // Renormalize: the chosen hold +NaN and +inf: every weight NaN.
    let r = route(&cfg(RoutingMethod::Renormalize, 6, 2), &row, None, 1).unwrap();
    assert_eq!(r.ids, vec![3, 2]);
    assert!(r.weights.iter().all(|w| w.is_nan()));
    // Sigmoid of either NaN is the canonical +NaN: both rank first (index order), then
    // sigmoid(+inf) = 1; sigmoid(-inf) = 0 ranks last.
    let r = route(&cfg(RoutingMethod::Sigmoid, 6, 6), &row, None, 1).unwrap();
    assert_eq!(r.ids, vec![1, 3, 2, 0, 5, 4]);
    assert_eq!(&r.weights[2..], &[1.0, sigmoid(1.0), sigmoid(0.5), 0.0]);
    // Llama4 never picks a NaN: it takes the largest number, and with none, expert 0 at 0.
    let r = route(&cfg(RoutingMethod::Llama4, 6, 1), &row, None, 1).unwrap();
    assert_eq!((r.ids, r.weights), (vec![2], vec![1.0]));
    let none = [nan, -inf, neg_nan, -inf];
    let r = route(&cfg(RoutingMethod::Llama4, 4, 1), &none, None, 1).unwrap();
    assert_eq!((r.ids, r.weights), (vec![0], vec![0.0]));
    // SigmoidRenorm: the NaN sum gives way to the 1e-20 floor (IEEE max), so the finite
    // weights are huge, not NaN.
    let m = RoutingMethod::SigmoidRenorm {
        norm_topk_prob: true,
    };
    let r = route(&cfg(m, 6, 3), &row, None, 1).unwrap();
    assert!(r.weights[0].is_nan() && r.weights[1].is_nan());
    assert_eq!(r.weights[2], 1e20);
}

#[test]
fn the_oracle_refuses_what_the_routing_call_refuses() {
    let l = [0.0f32; 8];
    let bad = |c: RoutingConfig, l: &[f32], b: Option<&[f32]>, t: usize| {
        route(&c, l, b, t).expect_err("must be refused")
    };
    let e = bad(cfg(RoutingMethod::Renormalize, 0, 1), &l, None, 1);
    assert!(e.to_string().contains("num_experts"), "{e}");
    let e = bad(cfg(RoutingMethod::Renormalize, 4, 5), &l, None, 1);
    assert!(e.to_string().contains("top_k"), "{e}");
    let e = bad(cfg(RoutingMethod::Renormalize, 4, 2), &l, None, 3);
    assert!(e.to_string().contains("logits"), "{e}");
    let e = bad(cfg(RoutingMethod::Renormalize, 4, 2), &l, None, usize::MAX);
    assert!(e.to_string().contains("logits"), "{e}");
    let e = bad(cfg(deepseek(1, 1), 4, 2), &l, None, 1);
    assert!(e.to_string().contains("bias"), "{e}");
    let e = bad(cfg(deepseek(1, 1), 4, 2), &l, Some(&[0.0; 3]), 1);
    assert!(e.to_string().contains("bias"), "{e}");
    let e = bad(cfg(RoutingMethod::TopK, 4, 2), &l, Some(&[0.0; 4]), 1);
    assert!(e.to_string().contains("bias"), "{e}");
    assert!(selection_margin(&cfg(RoutingMethod::TopK, 4, 2), &l[..3], None).is_err());
}

#[test]
fn every_regime_is_decided_by_keys_a_kernel_computes_exactly() {
    for c in sample_configs() {
        for regime in [
            Regime::Separated,
            Regime::LargeBias,
            Regime::Underflow,
            Regime::Extreme,
        ] {
            if !regime.applies_to(&c.method) {
                continue;
            }
            for (bf16_logits, kernels) in [false, true]
                .into_iter()
                .flat_map(|bf| [Kernels::Upstream, Kernels::TopK].map(|k| (bf, k)))
            {
                let (logits, bias) = regime_logits(&c, regime, 20, bf16_logits, 5).unwrap();
                let r = route_for(kernels, &c, &logits, bias.as_deref(), 20).unwrap();
                let e = c.num_experts as usize;
                let b = effective_bias(kernels, &c.method, bias.as_deref(), e);
                for (row, w) in logits.chunks(e).zip(r.weights.chunks(c.top_k as usize)) {
                    assert!(w.iter().all(|x| x.is_finite()), "{c:?} {regime:?}");
                    let keys = keys(&c.method, row, &b);
                    match regime {
                        Regime::LargeBias | Regime::Underflow if c.method.needs_bias() => {
                            // The sigmoid vanished: every key is exactly its (effective) bias.
                            assert_eq!(keys, b, "{c:?} {regime:?}");
                        }
                        Regime::Underflow => assert!(keys.iter().all(|&k| k == 0.0)),
                        _ => assert!(
                            selection_margin(&c, row, bias.as_deref()).unwrap() >= SEPARATION
                        ),
                    }
                }
                if regime == Regime::Underflow && c.method.needs_bias() {
                    assert!(r.weights.iter().all(|&w| w == 0.0), "{c:?}");
                }
                if regime == Regime::LargeBias {
                    // Renormalised: the weights of a token sum to the scale, none is 0.
                    for w in r.weights.chunks(c.top_k as usize) {
                        assert!(w.iter().all(|&x| x > 0.0), "{c:?}");
                    }
                }
            }
        }
    }
}

#[test]
fn the_top_k_router_differs_from_upstream_only_in_the_grouped_bias_rounding() {
    for c in sample_configs() {
        let (logits, bias) = separated_logits(&c, 40, false, 11).unwrap();
        let upstream = route(&c, &logits, bias.as_deref(), 40).unwrap();
        let topk = route_topk(&c, &logits, bias.as_deref(), 40).unwrap();
        if !c.method.is_grouped() {
            assert_eq!(upstream, topk, "{c:?}");
        }
        // With a bias bf16 already holds exactly, rounding it changes nothing.
        let exact: Option<Vec<f32>> =
            bias.map(|b| b.iter().map(|&x| bf16::from_f32(x).to_f32()).collect());
        assert_eq!(
            route(&c, &logits, exact.as_deref(), 40).unwrap(),
            route_topk(&c, &logits, exact.as_deref(), 40).unwrap(),
            "{c:?}"
        );
        assert_eq!(topk.ids.len(), 40 * c.top_k as usize);
    }
}

fn deepseek_v2(n_group: u32, topk_group: u32, scale: f32, norm: bool) -> RoutingMethod {
    RoutingMethod::DeepSeekV2 {
        n_group,
        topk_group,
        routed_scaling_factor: scale,
        norm_topk_prob: norm,
    }
}

/// `torch.topk(values, k)` with the order the kernels give: descending, equal values to the
/// smaller index (torch leaves the order of `sorted=False` and of ties open).
fn torch_topk(values: &[f32], k: usize) -> Vec<(f32, usize)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().take(k).map(|i| (values[i], i)).collect()
}

/// A transcription of DeepSeek-V2's `MoEGate.forward` (modeling_deepseek.py; candle's
/// deepseek2.rs `MoeGate` follows it) for one token, NaN-free inputs:
/// ```python
/// scores = logits.softmax(dim=-1, dtype=torch.float32)
/// if self.topk_method == "greedy":
///     topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
/// elif self.topk_method == "group_limited_greedy":
///     group_scores = scores.view(bsz * seq_len, self.n_group, -1).max(dim=-1).values
///     group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
///     group_mask = torch.zeros_like(group_scores); group_mask.scatter_(1, group_idx, 1)
///     score_mask = group_mask.unsqueeze(-1).expand(...).reshape(bsz * seq_len, -1)
///     tmp_scores = scores.masked_fill(~score_mask.bool(), 0.0)
///     topk_weight, topk_idx = torch.topk(tmp_scores, k=self.top_k, dim=-1, sorted=False)
/// if self.top_k > 1 and self.norm_topk_prob:
///     denominator = topk_weight.sum(dim=-1, keepdim=True) + 1e-20
///     topk_weight = topk_weight / denominator
/// else:
///     topk_weight = topk_weight * self.routed_scaling_factor
/// ```
/// (`masked_fill(0.0)` lets a dropped expert tie a kept one only at probability 0; the cases
/// here keep every kept expert's probability above 0.)
fn moe_gate_v2(method: &RoutingMethod, top_k: usize, logits: &[f32]) -> (Vec<i16>, Vec<f32>) {
    let RoutingMethod::DeepSeekV2 {
        n_group,
        topk_group,
        routed_scaling_factor,
        norm_topk_prob,
    } = *method
    else {
        unreachable!()
    };
    let e = logits.len();
    let max = logits
        .iter()
        .fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let exps: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    let scores: Vec<f32> = exps.iter().map(|x| (x / sum) as f32).collect();
    let chosen = if n_group <= 1 {
        torch_topk(&scores, top_k)
    } else {
        let (g, per) = (n_group as usize, e / n_group as usize);
        let group_scores: Vec<f32> = (0..g)
            .map(|i| {
                scores[i * per..(i + 1) * per]
                    .iter()
                    .copied()
                    .fold(f32::MIN, f32::max)
            })
            .collect();
        let group_idx = torch_topk(&group_scores, topk_group as usize);
        let tmp: Vec<f32> = (0..e)
            .map(|i| {
                let kept = group_idx.iter().any(|&(_, gi)| gi == i / per);
                if kept {
                    scores[i]
                } else {
                    0.0
                }
            })
            .collect();
        torch_topk(&tmp, top_k)
    };
    let w: Vec<f64> = chosen.iter().map(|c| c.0 as f64).collect();
    let w: Vec<f64> = if top_k > 1 && norm_topk_prob {
        let d: f64 = w.iter().sum::<f64>() + 1e-20;
        w.iter().map(|x| x / d).collect()
    } else {
        w.iter().map(|x| x * routed_scaling_factor as f64).collect()
    };
    (
        chosen.iter().map(|c| c.1 as i16).collect(),
        w.into_iter().map(|x| x as f32).collect(),
    )
}

fn relatively_close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-30))
}

#[test]
fn deepseek_v2_group_max_differs_from_deepseek_v3s_two_best_sum() {
    // 4 groups of 2; group 0 holds the single best expert, group 1 two good ones.
    let row = [3.0f32, -5.0, 2.5, 2.4, -5.0, -5.0, -5.0, -5.0];
    let c = cfg(deepseek_v2(4, 1, 1.0, false), 8, 2);
    let r = route_topk(&c, &row, None, 1).unwrap();
    // DeepSeek-V2: the group with the best expert (max): experts 0 and 1.
    assert_eq!(r.ids, vec![0, 1]);
    assert_eq!(
        (r.ids.clone(), r.weights.clone()),
        moe_gate_v2(&c.method, 2, &row)
    );
    // DeepSeek-V3's group score (sum of the two best) over the same keys keeps group 1.
    let k = keys(&c.method, &row, &[0.0; 8]);
    let (_, kept_v3) = kept_groups(&deepseek(4, 1), &k, 4, 1);
    let (_, kept_v2) = kept_groups(&c.method, &k, 4, 1);
    assert_eq!((kept_v2[0].1, kept_v3[0].1), (0, 1));
    // Ungrouped (greedy), the same row takes the best two anywhere: 0 and 2.
    let greedy = cfg(deepseek_v2(1, 1, 1.0, false), 8, 2);
    assert_eq!(route_topk(&greedy, &row, None, 1).unwrap().ids, vec![0, 2]);
}

#[test]
fn deepseek_v2_weights_scale_or_normalise_as_the_moe_gate_does() {
    let row = [0.5f32, 2.0, -1.0, 1.0, 0.0, 1.5, -2.0, 0.25];
    let probs = route(&cfg(RoutingMethod::Default, 8, 3), &row, None, 1).unwrap();
    // Greedy, scale 1, no normalisation: Default's routing exactly.
    let plain = route_topk(&cfg(deepseek_v2(1, 1, 1.0, false), 8, 3), &row, None, 1).unwrap();
    assert_eq!(plain, probs);
    // Scaled: 16 x the probabilities.
    let scaled = route_topk(&cfg(deepseek_v2(0, 0, 16.0, false), 8, 3), &row, None, 1).unwrap();
    assert_eq!(scaled.ids, probs.ids);
    let want: Vec<f32> = probs.weights.iter().map(|w| w * 16.0).collect();
    assert!(relatively_close(&scaled.weights, &want));
    // Normalised (top_k > 1): sum to one, NOT scaled.
    let m = deepseek_v2(1, 1, 16.0, true);
    let normed = route_topk(&cfg(m, 8, 3), &row, None, 1).unwrap();
    assert_eq!(normed.ids, probs.ids);
    assert!((normed.weights.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(relatively_close(
        &normed.weights,
        &moe_gate_v2(&m, 3, &row).1
    ));
    // top_k == 1 never normalises: the probability x the scale.
    let one = route_topk(&cfg(m, 8, 1), &row, None, 1).unwrap();
    assert_eq!(one.ids, vec![1]);
    assert!(relatively_close(&one.weights, &[probs.weights[0] * 16.0]));
}

#[test]
fn deepseek_v2_ties_go_to_the_smaller_group_and_expert() {
    // Every logit equal: every group ties (groups 0 and 1 kept), every expert ties.
    let c = cfg(deepseek_v2(4, 2, 2.0, false), 8, 3);
    let r = route_topk(&c, &[0.0; 8], None, 1).unwrap();
    assert_eq!(r.ids, vec![0, 1, 2]);
    assert!(relatively_close(&r.weights, &[0.25; 3]));
    // Groups 1 and 3 tie on their best expert: group 1 is kept; inside, experts 2 and 3 tie.
    let row = [0.0f32, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 1.0];
    let c = cfg(deepseek_v2(4, 1, 1.0, false), 8, 2);
    let r = route_topk(&c, &row, None, 1).unwrap();
    assert_eq!(r.ids, vec![2, 3]);
    assert_eq!(
        (r.ids.clone(), r.weights.clone()),
        moe_gate_v2(&c.method, 2, &row)
    );
    // Bit-identical keys tie even though their logits differ (both softmaxes flush to 0).
    let row = [0.0f32, -200.0, -300.0, -1.0];
    let r = route_topk(&cfg(deepseek_v2(1, 1, 1.0, false), 4, 4), &row, None, 1).unwrap();
    assert_eq!(r.ids, vec![0, 3, 1, 2]);
}

#[test]
fn deepseek_v2_nan_rows_route_as_default_does() {
    let mut row = [0.5f32, 2.0, -1.0, 1.0, 0.0, 1.5, -2.0, 0.25];
    row[5] = f32::NAN;
    let greedy = route_topk(&cfg(deepseek_v2(1, 1, 2.0, false), 8, 3), &row, None, 1).unwrap();
    let default = route(&cfg(RoutingMethod::Default, 8, 3), &row, None, 1).unwrap();
    // A NaN makes the whole softmax NaN: every key ties, the smallest indices win.
    assert_eq!(greedy.ids, default.ids);
    assert_eq!(greedy.ids, vec![0, 1, 2]);
    assert!(greedy.weights.iter().all(|w| w.is_nan()));
    // Grouped: every group score is NaN too, the first groups are kept.
    let grouped = route_topk(&cfg(deepseek_v2(4, 2, 2.0, true), 8, 3), &row, None, 1).unwrap();
    assert_eq!(grouped.ids, vec![0, 1, 2]);
    assert!(grouped.weights.iter().all(|w| w.is_nan()));
}

/// DeepSeek-V2 (160 experts, 8 groups, 3 kept, top 6, scale 16), V2-Lite (64, greedy, top 6)
/// and small shapes, on random logits: the oracle is the MoEGate transcription.
#[test]
fn deepseek_v2_matches_the_moe_gate_transcription_on_random_logits() {
    let cases = [
        (deepseek_v2(8, 3, 16.0, false), 160, 6),
        (deepseek_v2(1, 1, 1.0, false), 64, 6),
        (deepseek_v2(8, 3, 16.0, true), 160, 6),
        (deepseek_v2(4, 2, 1.0, true), 16, 4),
        (deepseek_v2(8, 8, 1.0, false), 64, 8),
        (deepseek_v2(8, 1, 3.0, false), 8, 1),
    ];
    let mut rng = SplitMix64(27);
    for (m, e, k) in cases {
        let c = cfg(m, e, k);
        for scale in [1.0f64, 8.0] {
            let t = 64;
            let logits: Vec<f32> = (0..t * e as usize)
                .map(|_| ((rng.unit() * 2.0 - 1.0) * scale) as f32)
                .collect();
            let r = route_topk(&c, &logits, None, t).unwrap();
            assert!(
                route(&c, &logits, None, t).is_err(),
                "upstream has no DeepSeekV2"
            );
            for (i, row) in logits.chunks(e as usize).enumerate() {
                let (ids, w) = moe_gate_v2(&m, k as usize, row);
                let got = i * k as usize..(i + 1) * k as usize;
                assert_eq!(r.ids[got.clone()], ids[..], "{c:?} token {i}");
                assert!(relatively_close(&r.weights[got], &w), "{c:?} token {i}");
            }
        }
    }
}

#[test]
fn deepseek_v2_separated_logits_are_clearly_routed() {
    for (m, e, k) in [
        (deepseek_v2(8, 3, 16.0, false), 160, 6),
        (deepseek_v2(1, 1, 1.0, false), 64, 6),
        (deepseek_v2(8, 4, 1.0, true), 256, 8),
        (deepseek_v2(0, 0, 1.0, false), 256, 8),
        (deepseek_v2(8, 8, 16.0, false), 256, 8),
    ] {
        let c = cfg(m, e, k);
        assert!(Regime::Separated.applies_to(&m));
        for r in [Regime::LargeBias, Regime::Underflow, Regime::Extreme] {
            assert!(!r.applies_to(&m), "{r:?}");
        }
        for bf16_logits in [false, true] {
            let (logits, bias) = separated_logits(&c, 32, bf16_logits, 3).unwrap();
            assert!(bias.is_none());
            for row in logits.chunks(e as usize) {
                assert!(
                    selection_margin(&c, row, None).unwrap() >= SEPARATION,
                    "{c:?}"
                );
            }
            route_topk(&c, &logits, None, 32).unwrap();
        }
    }
}
