//! The reference MoE and quantisers, against hand-computed cases.
use super::*;

fn problem(activation: Activation, top_k: usize) -> ReferenceProblem {
    ReferenceProblem {
        num_tokens: 2,
        hidden_size: 2,
        intermediate_size: 1,
        top_k,
        local_expert_offset: 0,
        local_num_experts: 2,
        activation,
        routing_scales_on_input: false,
    }
}

#[test]
fn swiglu_moe_matches_a_hand_computation() {
    // Expert 0: x1 row [1, 0], gate row [0, 1]; w2 [[2], [3]]. Expert 1: x1 [1, 1], gate [1, 1]; w2 [[1], [-1]].
    let w = ExpertWeights {
        w1: vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        w2: vec![2.0, 3.0, 1.0, -1.0],
    };
    let hidden = [1.0, 2.0, -1.0, 0.5];
    let ids = [0, 1, 1, 0];
    let weights = [0.75, 0.25, 0.5, 0.5];
    let out = moe(
        &problem(Activation::Swiglu, 2),
        &hidden,
        &ids,
        &weights,
        &w,
        ActivationRounding::Bf16,
    )
    .unwrap();
    let silu = |x: f32| x / (1.0 + (-x).exp());
    let a00 = round_bf16(silu(2.0) * 1.0); // token 0, expert 0
    let a01 = round_bf16(silu(3.0) * 3.0); // token 0, expert 1
    let a10 = round_bf16(silu(-0.5) * -0.5); // token 1, expert 1
    let a11 = round_bf16(-silu(0.5)); // token 1, expert 0
    let expect = [
        0.75 * 2.0 * a00 + 0.25 * a01,
        0.75 * 3.0 * a00 - 0.25 * a01,
        0.5 * a10 + 0.5 * 2.0 * a11,
        -0.5 * a10 + 0.5 * 3.0 * a11,
    ];
    for (o, e) in out.iter().zip(expect) {
        assert!((o - e).abs() < 1e-5, "{out:?} vs {expect:?}");
    }
}

#[test]
fn experts_outside_the_local_range_contribute_nothing() {
    let w = ExpertWeights {
        w1: vec![1.0, 1.0],
        w2: vec![1.0, 1.0],
    };
    let mut p = problem(Activation::Relu2, 1);
    p.local_expert_offset = 1;
    p.local_num_experts = 1;
    let out = moe(
        &p,
        &[1.0, 2.0, 3.0, 4.0],
        &[0, 1],
        &[1.0, 0.5],
        &w,
        ActivationRounding::Bf16,
    )
    .unwrap();
    assert_eq!(&out[..2], &[0.0, 0.0]);
    assert_eq!(&out[2..], &[0.5 * 49.0, 0.5 * 49.0]);
}

#[test]
fn routing_scales_on_input_scale_the_input_not_the_output() {
    let w = ExpertWeights {
        w1: vec![1.0, 0.0],
        w2: vec![1.0, 0.0],
    };
    let mut p = problem(Activation::Relu2, 1);
    p.local_num_experts = 1;
    p.routing_scales_on_input = true;
    let out = moe(
        &p,
        &[2.0, 0.0, 4.0, 0.0],
        &[0, 0],
        &[0.5, 0.25],
        &w,
        ActivationRounding::Bf16,
    )
    .unwrap();
    assert_eq!(out, vec![1.0, 0.0, 1.0, 0.0]);
}

#[test]
fn fp8_rounding_uses_the_global_scale() {
    let w = ExpertWeights {
        w1: vec![1.0, 0.0],
        w2: vec![1.0, 0.0],
    };
    let mut p = problem(Activation::Identity, 1);
    p.local_num_experts = 1;
    let out = moe(
        &p,
        &[1.03, 0.0, 0.0, 0.0],
        &[0, 0],
        &[1.0, 1.0],
        &w,
        ActivationRounding::Fp8PerTensor { scale: 1.0 },
    )
    .unwrap();
    assert_eq!(out[0], 1.0); // 1.03 rounds to e4m3 1.0 at scale 1
}

#[test]
fn quantisers_round_trip_within_their_precision() {
    let x: Vec<f32> = (0..256 * 128)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let (q, s) = quantize_fp8_per_tensor(&x);
    for (v, q) in x.iter().zip(&q) {
        assert!((q.to_f32() / s - v).abs() <= v.abs() * 0.0625 + 1e-3, "{v}");
    }
    let (qb, sb) = quantize_fp8_blocks(&x, 256, 128).unwrap();
    assert_eq!(sb.len(), 2);
    for (idx, (v, deq)) in x
        .iter()
        .zip(dequantize_fp8_blocks(&qb, &sb, 256, 128).unwrap())
        .enumerate()
    {
        // Row r lies in row block r / 128 (128 columns: one column block).
        assert_eq!(deq, qb[idx].to_f32() * sb[idx / 128 / 128]);
        assert!((deq - v).abs() <= v.abs() * 0.0625 + 1e-3, "{v} vs {deq}");
    }
    let (qa, sa) = quantize_fp8_activation_blocks(&x[..2 * 256], 2, 256).unwrap();
    assert_eq!(sa.len(), 4);
    let deq = dequantize_fp8_activation_blocks(&qa, &sa, 2, 256).unwrap();
    // Token 1's second block has its scale at [1][1] of the transposed [blocks, tokens].
    assert_eq!(deq[256 + 130], qa[256 + 130].to_f32() * sa[2 + 1]);
    for (v, d) in x[..2 * 256].iter().zip(&deq) {
        assert!((d - v).abs() <= v.abs() * 0.0625 + 1e-3, "{v} vs {d}");
    }
}

#[test]
fn accuracy_criterion_counts_the_close_fraction() {
    let r = [1.0, 2.0, 3.0, 4.0];
    assert_eq!(
        check_accuracy(&r, &[1.0, 2.0, 3.0, 4.0], 0.0, 0.0, 1.0),
        Ok(1.0)
    );
    assert_eq!(
        check_accuracy(&r, &[1.0, 2.0, 3.0, 9.0], 0.1, 0.1, 0.75),
        Ok(0.75)
    );
    assert!(check_accuracy(&r, &[1.0, 2.0, 9.0, 9.0], 0.1, 0.1, 0.75).is_err());
    assert!(check_accuracy(&r, &[1.0, 2.0, 3.0, f32::NAN], 1.0, 1.0, 0.5).is_err());
}

#[test]
fn mxfp4_quantisation_is_exact_on_representable_blocks_and_close_elsewhere() {
    // A block of e2m1 values times 2^-3 is representable exactly.
    let exact: Vec<f32> = (0..64)
        .map(|i| [0.0, 0.5, -1.0, 1.5, 2.0, -3.0, 4.0, 6.0][i % 8] * 0.125)
        .collect();
    let (q, s) = quantize_mxfp4(&exact, 2, 32).unwrap();
    assert_eq!((q.len(), s.len()), (32, 2));
    assert_eq!(s[0].to_f32(), 0.125);
    assert_eq!(dequantize_mxfp4(&q, &s, 32).unwrap(), exact);
    // Arbitrary values: within half an e2m1 step (relative 25% at worst) of the block scale.
    let x: Vec<f32> = (0..4 * 64)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 13.0)
        .collect();
    let (q, s) = quantize_mxfp4(&x, 4, 64).unwrap();
    let back = dequantize_mxfp4(&q, &s, 64).unwrap();
    for (b, (v, d)) in x.chunks(32).zip(back.chunks(32)).enumerate() {
        let scale = s[b].to_f32();
        for (v, d) in v.iter().zip(d) {
            assert!((v - d).abs() <= scale + 1e-6, "{v} vs {d} (scale {scale})");
        }
    }
}

#[test]
fn mxfp8_round_trips_within_e4m3_precision() {
    let x: Vec<f32> = (0..3 * 64)
        .map(|i| ((i * 29 % 83) as f32 - 41.0) / 9.0)
        .collect();
    let (q, s) = quantize_mxfp8(&x, 3, 64).unwrap();
    assert_eq!((q.len(), s.len()), (192, 6));
    let back = dequantize_mxfp8(&q, &s).unwrap();
    for (v, d) in x.iter().zip(&back) {
        assert!((v - d).abs() <= v.abs() * 0.0625 + 1e-6, "{v} vs {d}");
    }
    // A block of powers of two is exact.
    let exact: Vec<f32> = (0..32).map(|i| 2f32.powi(i % 8 - 4)).collect();
    let (q, s) = quantize_mxfp8(&exact, 1, 32).unwrap();
    assert_eq!(dequantize_mxfp8(&q, &s).unwrap(), exact);
}

#[test]
fn nvfp4_round_trips_within_half_a_step_of_its_block_scale() {
    let x: Vec<f32> = (0..2 * 64)
        .map(|i| ((i * 37 % 71) as f32 - 35.0) / 5.0)
        .collect();
    let gs = nvfp4_global_scale(&x);
    assert_eq!(gs, 448.0 * 6.0 / 7.0);
    let (q, s) = quantize_nvfp4(&x, 2, 64, gs).unwrap();
    assert_eq!((q.len(), s.len()), (64, 8));
    let back = dequantize_nvfp4(&q, &s, gs).unwrap();
    for (b, (v, d)) in x.chunks(16).zip(back.chunks(16)).enumerate() {
        // Largest e2m1 step is 2 (4 -> 6): half of it in block units, plus the e4m3 scale's
        // own rounding (at most 1/16 relative).
        let unit = s[b].to_f32() / gs;
        for (v, d) in v.iter().zip(d) {
            assert!(
                (v - d).abs() <= unit + v.abs() * 0.0625 + 1e-6,
                "{v} vs {d}"
            );
        }
    }
}

/// The kernel's 1x128 quantisation: each run scaled so its largest magnitude is 448, rounded
/// to e4m3 (steps of 8 between 64 and 128), read back at the run's scale; an all-zero run stays
/// zero; a short last run has its own scale.
#[test]
fn fp8_groups_of_128_round_each_run_at_its_own_scale() {
    let mut x = vec![0f32; 128 * 2 + 5];
    x[0] = 2.0; // s = 224
    x[1] = 0.3; // 67.2 -> 64 -> 64 / 224
    x[2] = -1.0; // -224, exact
    x[259] = 0.5; // the short run: s = 896
    x[260] = 0.1; // 89.6 -> 88 -> 88 / 896
    let got = round_fp8_groups(&x);
    assert_eq!(got[..3], [2.0, 64.0 * (1.0 / 224.0), -1.0]);
    assert!(got[128..256].iter().all(|&v| v == 0.0));
    assert_eq!(got[256..], [0.0, 0.0, 0.0, 0.5, 88.0 * (1.0 / 896.0)]);
}

/// A run whose largest magnitude is below 448 / f32::MAX: the scale stops at f32::MAX (flashinfer-sys's patch 0013), zeros
/// stay zero and the tiny values come back within an e4m3 step instead of NaN.
#[test]
fn fp8_groups_of_tiny_values_keep_a_finite_scale() {
    let mut x = vec![0f32; 128];
    x[3] = 1e-38;
    x[4] = -4e-39;
    let got = round_fp8_groups(&x);
    assert!(got.iter().all(|v| v.is_finite()), "{got:?}");
    assert_eq!(got[0], 0.0);
    assert!((got[3] - 1e-38).abs() <= 1e-38 / 8.0, "{}", got[3]);
    assert!((got[4] + 4e-39).abs() <= 4e-39 / 8.0, "{}", got[4]);
}

/// The reference spreads tokens over threads: a many-token call's rows must be, bit for bit,
/// each token's row computed alone (in order, none lost or moved at a chunk's edge), and its
/// activations the single-token calls' in token order. 37 tokens: not a multiple of any
/// thread count from 2 to 36.
#[test]
fn a_many_token_reference_is_its_tokens_computed_alone() {
    let (t, h, i, k, e) = (37, 8, 4, 3, 5);
    let mut seed = 7u32;
    let mut next = || {
        seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
    };
    let w = ExpertWeights {
        w1: (0..e * 2 * i * h).map(|_| next()).collect(),
        w2: (0..e * h * i).map(|_| next()).collect(),
    };
    let hidden: Vec<f32> = (0..t * h).map(|_| next()).collect();
    let weights: Vec<f32> = (0..t * k).map(|_| next()).collect();
    // Global ids 0..7 over local experts 1..=5: some pairs fall outside.
    let ids: Vec<usize> = (0..t * k).map(|n| (n * 5 + n / 7) % 7).collect();
    let p = ReferenceProblem {
        num_tokens: t,
        hidden_size: h,
        intermediate_size: i,
        top_k: k,
        local_expert_offset: 1,
        local_num_experts: e,
        activation: Activation::Swiglu,
        routing_scales_on_input: false,
    };
    let rounding = ActivationRounding::Fp8PerTensorBf16Gemm1 { scale: 4.0 };
    let all = moe(&p, &hidden, &ids, &weights, &w, rounding).unwrap();
    let acts = activations(&p, &hidden, &ids, &weights, &w).unwrap();
    let one = ReferenceProblem { num_tokens: 1, ..p };
    let (mut rows, mut alone_acts) = (Vec::new(), Vec::new());
    for n in 0..t {
        let (x, r) = (&hidden[n * h..(n + 1) * h], n * k..(n + 1) * k);
        rows.extend(moe(&one, x, &ids[r.clone()], &weights[r.clone()], &w, rounding).unwrap());
        alone_acts.extend(activations(&one, x, &ids[r.clone()], &weights[r], &w).unwrap());
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&all), bits(&rows));
    assert_eq!(acts.len(), alone_acts.len());
    for (a, b) in acts.iter().zip(&alone_acts) {
        assert_eq!(bits(a), bits(b));
    }
}
