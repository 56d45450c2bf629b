//! The CUTLASS MoE's size rules, on CPU: what a layer and a call accept and what they refuse
//! (each refusal names its argument).

use super::*;
use crate::routing::{RoutingConfig, RoutingMethod};
use crate::Error;

fn config(e: u32, k: u32) -> CutlassMoeConfig {
    CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, e, k),
        hidden_size: 2048,
        intermediate_size: 768,
        max_tokens: 4096,
    }
}

fn weights(c: &CutlassMoeConfig) -> (usize, usize) {
    let l = c.routing.local_num_experts as usize;
    let (h, i) = (c.hidden_size, c.intermediate_size);
    (l * 2 * i * h, l * h * i)
}

fn plan(c: CutlassMoeConfig) -> Result<CutlassPlan> {
    let (a, b) = weights(&c);
    CutlassPlan::new(c, a, b)
}

fn arg(e: Error) -> &'static str {
    match e {
        Error::InvalidArgument { arg, .. } => arg,
        other => panic!("not an argument error: {other:?}"),
    }
}

#[test]
fn a_qwen3_layer_and_an_expert_parallel_rank_are_accepted() {
    let p = plan(config(128, 8)).unwrap();
    assert_eq!((p.ep_size(), p.ep_rank()), (1, 0));
    assert_eq!(p.fc1_len(), 128 * 2 * 768 * 2048);
    let c = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, 256, 8).with_local_experts(192, 64),
        ..config(256, 8)
    };
    let p = plan(c).unwrap();
    assert_eq!((p.ep_size(), p.ep_rank()), (4, 3));
}

#[test]
fn bad_layers_are_refused_naming_the_argument() {
    let base = config(128, 8);
    for (c, expect) in [
        (
            CutlassMoeConfig {
                hidden_size: 0,
                ..base
            },
            "hidden_size",
        ),
        (
            CutlassMoeConfig {
                hidden_size: 2000,
                ..base
            },
            "hidden_size",
        ),
        (
            CutlassMoeConfig {
                hidden_size: 1 << 17,
                ..base
            },
            "hidden_size",
        ),
        (
            CutlassMoeConfig {
                intermediate_size: 96,
                ..base
            },
            "intermediate_size",
        ),
        (
            CutlassMoeConfig {
                max_tokens: 0,
                ..base
            },
            "max_tokens",
        ),
        (
            CutlassMoeConfig {
                max_tokens: usize::MAX,
                ..base
            },
            "max_tokens",
        ),
        // 2^24 tokens x 128 experts overflow the runner's int32 maps.
        (
            CutlassMoeConfig {
                max_tokens: 1 << 24,
                ..base
            },
            "max_tokens",
        ),
        (
            CutlassMoeConfig {
                routing: base.routing.with_local_experts(10, 30),
                ..base
            },
            "routing",
        ),
        (
            CutlassMoeConfig {
                routing: base.routing.with_local_experts(16, 32),
                ..base
            },
            "routing",
        ),
    ] {
        let (a, b) = weights(&c);
        assert_eq!(arg(CutlassPlan::new(c, a, b).unwrap_err()), expect, "{c:?}");
    }
    // top_k above num_experts is the routing config's own rule.
    assert!(plan(config(8, 9)).is_err());
    let (a, b) = weights(&base);
    assert_eq!(arg(CutlassPlan::new(base, a - 1, b).unwrap_err()), "fc1");
    assert_eq!(arg(CutlassPlan::new(base, a, b + 1).unwrap_err()), "fc2");
    assert_eq!(arg(CutlassPlan::new(base, 0, 0).unwrap_err()), "fc1");
}

fn batch(t: usize, p: &CutlassPlan) -> CutlassBatchSizes {
    let (h, e, k) = (p.config().hidden_size, p.experts(), p.top_k());
    CutlassBatchSizes {
        num_tokens: t,
        routing: CutlassRoutingSizes::Logits {
            logits: t * e,
            bias: None,
        },
        hidden_states: t * h,
        output: t * h,
        replay: Some((t, k)),
        captured_weights: None,
    }
}

#[test]
fn calls_up_to_max_tokens_are_accepted_and_bad_ones_refused() {
    let p = plan(config(128, 8)).unwrap();
    for t in [0, 1, 7, 4096] {
        p.check_batch(&batch(t, &p)).unwrap();
    }
    let b = batch(64, &p);
    for (b, expect) in [
        (batch(4097, &p), "num_tokens"),
        (
            CutlassBatchSizes {
                hidden_states: 64 * 2048 - 1,
                ..b
            },
            "hidden_states",
        ),
        (CutlassBatchSizes { output: 0, ..b }, "output"),
        (
            CutlassBatchSizes {
                routing: CutlassRoutingSizes::Logits {
                    logits: 64 * 128 - 1,
                    bias: None,
                },
                ..b
            },
            "logits",
        ),
        (
            CutlassBatchSizes {
                routing: CutlassRoutingSizes::Logits {
                    logits: 64 * 128,
                    bias: Some(128),
                },
                ..b
            },
            "bias",
        ),
        (
            CutlassBatchSizes {
                replay: Some((63, 8)),
                ..b
            },
            "replay",
        ),
        (
            CutlassBatchSizes {
                replay: Some((64, 7)),
                ..b
            },
            "replay",
        ),
        (
            CutlassBatchSizes {
                captured_weights: Some(64 * 8 - 1),
                ..b
            },
            "views.weights",
        ),
        (
            CutlassBatchSizes {
                routing: CutlassRoutingSizes::Precomputed {
                    ids: 64 * 8,
                    scales: 64 * 8,
                },
                ..b
            },
            "routing_replay_out",
        ),
        (
            CutlassBatchSizes {
                routing: CutlassRoutingSizes::Precomputed {
                    ids: 64 * 8 - 1,
                    scales: 64 * 8,
                },
                replay: None,
                ..b
            },
            "ids",
        ),
        (
            CutlassBatchSizes {
                routing: CutlassRoutingSizes::Precomputed {
                    ids: 64 * 8,
                    scales: 0,
                },
                replay: None,
                ..b
            },
            "scales",
        ),
    ] {
        assert_eq!(arg(p.check_batch(&b).unwrap_err()), expect, "{b:?}");
    }
    let precomputed = CutlassBatchSizes {
        routing: CutlassRoutingSizes::Precomputed {
            ids: 64 * 8,
            scales: 64 * 8,
        },
        replay: None,
        ..b
    };
    p.check_batch(&precomputed).unwrap();
}

#[test]
fn sizes_that_overflow_are_refused_not_wrapped() {
    let p = plan(config(128, 8)).unwrap();
    let huge = CutlassBatchSizes {
        num_tokens: usize::MAX,
        ..batch(1, &p)
    };
    assert_eq!(arg(p.check_batch(&huge).unwrap_err()), "num_tokens");
}

#[test]
fn fp8_scales_need_one_per_local_expert_all_finite_and_positive() {
    let local = config(128, 8);
    let rank = CutlassMoeConfig {
        routing: local.routing.with_local_experts(32, 32),
        ..local
    };
    let p = plan(rank).unwrap();
    let good = CutlassFp8Scales {
        fc1_weights: vec![0.01; 32],
        fc2_weights: vec![0.02; 32],
        fc1_input: 1.0 / 448.0,
        fc2_input: 4.0 / 448.0,
    };
    p.check_fp8_scales(&good).unwrap();
    let with = |f: &dyn Fn(&mut CutlassFp8Scales)| {
        let mut s = good.clone();
        f(&mut s);
        p.check_fp8_scales(&s).map_err(arg)
    };
    // One per local expert (32 of 128 on this rank), not per global expert.
    assert_eq!(
        with(&|s| s.fc1_weights = vec![0.01; 128]),
        Err("fc1_weights")
    );
    assert_eq!(
        with(&|s| s.fc2_weights.pop().map(drop).unwrap_or(())),
        Err("fc2_weights")
    );
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY, 1e-40] {
        assert_eq!(with(&|s| s.fc1_input = bad), Err("fc1"), "input {bad}");
        assert_eq!(
            with(&|s| s.fc2_weights[7] = bad),
            Err("fc2"),
            "weight {bad}"
        );
    }
    // Finite alone, but their product (GEMM 1's output scale) underflows to zero.
    assert_eq!(
        with(&|s| {
            s.fc1_input = 1e-30;
            s.fc1_weights[0] = 1e-30;
        }),
        Err("fc1")
    );
}

/// DeepSeek-V3's layer (7168 x 2048, 256 experts, a rank of 32) takes 128x128 blocks; sizes
/// that are not multiples of 128 or exceed the GEMM's K, and scales of the wrong length, are
/// refused naming what is wrong.
#[test]
fn fp8_block_layers_need_128_multiples_and_one_scale_per_block() {
    let deepseek = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, 256, 8).with_local_experts(64, 32),
        hidden_size: 7168,
        intermediate_size: 2048,
        max_tokens: 4096,
    };
    let (fc1, fc2) = (32 * 2 * 16 * 56, 32 * 56 * 16);
    let p = plan(deepseek).unwrap();
    p.check_fp8_blocks(fc1, fc2).unwrap();
    assert_eq!(
        arg(p.check_fp8_blocks(fc1 - 1, fc2).unwrap_err()),
        "fc1 scales"
    );
    assert_eq!(
        arg(p.check_fp8_blocks(fc1, fc2 + 16).unwrap_err()),
        "fc2 scales"
    );
    // Qwen3-30B-A3B's 768 is a multiple of 128; 64-multiples that are not, and K past 20480,
    // pass the bf16 rules but not these.
    for (h, i, bad) in [
        (2048, 768, None),
        (2048, 704, Some("intermediate_size")),
        (2112, 768, Some("hidden_size")),
        (20480 + 128, 128, Some("hidden_size")),
        (128, 20480 + 128, Some("intermediate_size")),
    ] {
        let c = CutlassMoeConfig {
            hidden_size: h,
            intermediate_size: i,
            ..config(8, 2)
        };
        let (hb, ib) = (h / 128, i / 128);
        let p = plan(c).unwrap();
        let got = p.check_fp8_blocks(8 * 2 * ib * hb, 8 * hb * ib);
        assert_eq!(got.err().map(arg), bad, "{h} x {i}");
    }
}
