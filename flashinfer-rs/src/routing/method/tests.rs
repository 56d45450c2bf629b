use super::*;
use crate::Error;

fn ds(n_group: u32, topk_group: u32) -> RoutingMethod {
    RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        routed_scaling_factor: 2.5,
    }
}

/// The argument a rejected config names, and the rule text, for matching.
fn rejected(cfg: RoutingConfig) -> (&'static str, String) {
    match cfg.validate() {
        Err(Error::InvalidArgument { arg, rule }) => (arg, rule),
        other => panic!("{cfg:?} should be rejected, got {other:?}"),
    }
}

#[test]
fn supported_model_configs_pass() {
    for cfg in [
        RoutingConfig::new(ds(8, 4), 256, 8),  // DeepSeek-V3/R1
        RoutingConfig::new(ds(1, 1), 384, 8),  // Kimi K2
        RoutingConfig::new(ds(1, 1), 512, 22), // Nemotron Super V3
        RoutingConfig::new(RoutingMethod::Renormalize, 128, 8), // Qwen3-30B-A3B
        RoutingConfig::new(RoutingMethod::Renormalize, 2048, 32),
        RoutingConfig::new(RoutingMethod::Llama4, 128, 1),
        RoutingConfig::new(RoutingMethod::Default, 256, 8),
        RoutingConfig::new(
            RoutingMethod::MiniMax2 {
                routed_scaling_factor: 1.0,
            },
            256,
            8,
        ),
        RoutingConfig::new(RoutingMethod::Renormalize, 256, 8).with_local_experts(32, 32),
    ] {
        cfg.validate().unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
    }
}

/// Upstream 596d1a06f (after 0.6.13) made an (experts, top_k) pair that no compiled tier
/// covers fail loudly instead of launching nothing (or faulting). Our rule has refused
/// them since the start; this pins it for the pairs that fix was about.
#[test]
fn pairs_no_kernel_tier_covers_are_refused_before_any_launch() {
    for (cfg, arg) in [
        (
            RoutingConfig::new(RoutingMethod::Default, 512, 8),
            "num_experts",
        ),
        (RoutingConfig::new(RoutingMethod::TopK, 128, 16), "top_k"),
        (
            RoutingConfig::new(RoutingMethod::Sigmoid, 384, 8),
            "num_experts",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 4096, 8),
            "num_experts",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 2048, 33),
            "top_k",
        ),
        (RoutingConfig::new(ds(1, 1), 2048, 8), "num_experts"),
        (RoutingConfig::new(ds(1, 1), 512, 23), "top_k"),
        (
            RoutingConfig::new(RoutingMethod::Llama4, 256, 1),
            "num_experts",
        ),
    ] {
        assert_eq!(rejected(cfg).0, arg, "{cfg:?}");
    }
}

/// Each `(config, argument, rule)`: the config is refused, blaming that argument with a
/// message that mentions the rule.
fn assert_each_rule(cases: Vec<(RoutingConfig, &str, &str)>) {
    for (cfg, arg, rule) in cases {
        let (got_arg, got_rule) = rejected(cfg);
        assert_eq!(got_arg, arg, "{cfg:?}: {got_rule}");
        assert!(
            got_rule.contains(rule),
            "{cfg:?}: `{got_rule}` should mention `{rule}`"
        );
    }
}

/// Sizes, and the tier limits upstream only warns about (and then launches nothing).
#[test]
fn each_broken_size_rule_names_its_argument_and_limit() {
    assert_each_rule(vec![
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 0, 1),
            "num_experts",
            "> 0",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 8, 0),
            "top_k",
            "> 0",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 4, 8),
            "top_k",
            "must not exceed num_experts",
        ),
        // Tier limits upstream only warns about (and then launches nothing).
        (
            RoutingConfig::new(RoutingMethod::Default, 512, 8),
            "num_experts",
            "at most 256",
        ),
        (
            RoutingConfig::new(RoutingMethod::TopK, 256, 16),
            "top_k",
            "top_k <= 8",
        ),
        (
            RoutingConfig::new(RoutingMethod::Sigmoid, 384, 8),
            "num_experts",
            "at most 256",
        ),
        (
            RoutingConfig::new(
                RoutingMethod::SigmoidRenorm {
                    norm_topk_prob: true,
                },
                128,
                22,
            ),
            "top_k",
            "top_k <= 8",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 4096, 8),
            "num_experts",
            "at most 2048",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 2048, 33),
            "top_k",
            "top_k <= 32",
        ),
        (
            RoutingConfig::new(
                RoutingMethod::MiniMax2 {
                    routed_scaling_factor: 1.0,
                },
                2048,
                8,
            ),
            "num_experts",
            "at most 1024",
        ),
        (
            RoutingConfig::new(RoutingMethod::Llama4, 256, 1),
            "num_experts",
            "at most 128",
        ),
        (
            RoutingConfig::new(RoutingMethod::Llama4, 128, 2),
            "top_k",
            "top_k <= 1",
        ),
        (
            RoutingConfig::new(ds(1, 1), 256, 32),
            "top_k",
            "top_k <= 22",
        ),
    ]);
}

/// Grouped DeepSeekV3 and the scaling factors.
#[test]
fn each_broken_grouped_deepseek_rule_names_its_argument_and_limit() {
    assert_each_rule(vec![
        (
            RoutingConfig::new(ds(16, 4), 256, 8),
            "n_group",
            "at most 8 expert groups",
        ),
        (
            RoutingConfig::new(ds(6, 4), 256, 8),
            "n_group",
            "multiple of n_group",
        ),
        (
            RoutingConfig::new(ds(4, 2), 256, 8),
            "n_group",
            "at most 32 experts per group",
        ),
        (
            RoutingConfig::new(ds(8, 5), 256, 8),
            "topk_group",
            "at most 4 groups",
        ),
        (
            RoutingConfig::new(ds(2, 3), 64, 8),
            "topk_group",
            "must not exceed n_group",
        ),
        (RoutingConfig::new(ds(8, 0), 256, 8), "topk_group", ">= 1"),
        (
            RoutingConfig::new(ds(8, 1), 64, 16),
            "top_k",
            "exceeds the experts in the kept groups",
        ),
        (
            RoutingConfig::new(ds(8, 4), 1024, 8),
            "num_experts",
            "at most 512",
        ),
        (
            RoutingConfig::new(
                RoutingMethod::DeepSeekV3 {
                    n_group: 8,
                    topk_group: 4,
                    routed_scaling_factor: f32::NAN,
                },
                256,
                8,
            ),
            "routed_scaling_factor",
            "finite",
        ),
        (
            RoutingConfig::new(
                RoutingMethod::MiniMax2 {
                    routed_scaling_factor: f32::INFINITY,
                },
                256,
                8,
            ),
            "routed_scaling_factor",
            "finite",
        ),
    ]);
}

/// Expert parallelism and tiles.
#[test]
fn each_broken_expert_parallel_or_tile_rule_names_its_argument_and_limit() {
    assert_each_rule(vec![
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 64, 8).with_local_experts(48, 32),
            "local_num_experts",
            "inside [0, num_experts",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 64, 8).with_local_experts(u32::MAX, 2),
            "local_num_experts",
            "inside",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 64, 8).with_tile_tokens_dim(12),
            "tile_tokens_dim",
            "power of two",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 64, 8).with_tile_tokens_dim(4),
            "tile_tokens_dim",
            "8..=256",
        ),
        (
            RoutingConfig::new(RoutingMethod::Renormalize, 64, 8).with_tile_tokens_dim(512),
            "tile_tokens_dim",
            "8..=256",
        ),
    ]);
}

#[test]
fn raw_params_carry_each_methods_own_parameters() {
    use sys::fi_dtype::{FI_DTYPE_BF16, FI_DTYPE_F32};
    let p = RoutingConfig::new(ds(8, 4), 256, 8)
        .with_local_experts(64, 64)
        .raw_params(17, FI_DTYPE_F32, FI_DTYPE_BF16);
    assert_eq!(
        (p.method, p.num_tokens, p.num_experts, p.top_k),
        (2, 17, 256, 8)
    );
    assert_eq!(
        (p.n_group, p.topk_group, p.routed_scaling_factor),
        (8, 4, 2.5)
    );
    assert_eq!(
        (
            p.local_expert_offset,
            p.local_num_experts,
            p.tile_tokens_dim,
            p.use_pdl
        ),
        (64, 64, 8, 1)
    );
    assert_eq!(
        (p.logits_dtype, p.bias_dtype),
        (FI_DTYPE_F32, FI_DTYPE_BF16)
    );
    let p = RoutingConfig::new(
        RoutingMethod::MiniMax2 {
            routed_scaling_factor: 1.5,
        },
        256,
        8,
    )
    .raw_params(1, FI_DTYPE_BF16, FI_DTYPE_F32);
    assert_eq!(
        (p.n_group, p.topk_group, p.routed_scaling_factor),
        (0, 0, 1.5)
    );
    let on = RoutingConfig::new(
        RoutingMethod::SigmoidRenorm {
            norm_topk_prob: true,
        },
        64,
        4,
    )
    .with_pdl(false);
    let p = on.raw_params(1, FI_DTYPE_F32, FI_DTYPE_F32);
    assert_eq!(
        (p.norm_topk_prob, p.use_pdl, p.routed_scaling_factor),
        (1, 0, 1.0)
    );
    let off = RoutingConfig::new(
        RoutingMethod::SigmoidRenorm {
            norm_topk_prob: false,
        },
        64,
        4,
    );
    assert_eq!(
        off.raw_params(1, FI_DTYPE_F32, FI_DTYPE_F32).norm_topk_prob,
        0
    );
}

#[test]
fn upstream_values_match_routing_method_type() {
    let all = [
        (RoutingMethod::Default, 0),
        (RoutingMethod::Renormalize, 1),
        (ds(8, 4), 2),
        (RoutingMethod::Llama4, 3),
        (RoutingMethod::RenormalizeNaive, 4),
        (RoutingMethod::TopK, 5),
        (
            RoutingMethod::SigmoidRenorm {
                norm_topk_prob: true,
            },
            6,
        ),
        (
            RoutingMethod::MiniMax2 {
                routed_scaling_factor: 1.0,
            },
            7,
        ),
        (RoutingMethod::Sigmoid, 8),
    ];
    for (m, v) in all {
        assert_eq!(m.upstream_value(), Some(v), "{}", m.name());
        assert_eq!(m.abi_value(), v, "{}", m.name());
        assert!(m.upstream_kernels(), "{}", m.name());
    }
    // flashinfer-rs's own method: no upstream value is invented; the C ABI's own value lies
    // outside upstream's RoutingMethodType (0..=9, Unspecified = 9).
    let v2 = v2(8, 3, 16.0, false);
    assert_eq!(v2.upstream_value(), None);
    assert!(!v2.upstream_kernels());
    assert_eq!(
        v2.abi_value(),
        sys::fi_routing_method::FI_ROUTING_DEEPSEEK_V2
    );
    assert!(v2.abi_value() > 9);
    assert_eq!(v2.name(), "DeepSeekV2");
    assert!(!v2.needs_bias());
    assert!(
        !v2.is_grouped(),
        "upstream's grouped DeepSeek kernels never run DeepSeekV2"
    );
}

fn v2(n_group: u32, topk_group: u32, scale: f32, norm: bool) -> RoutingMethod {
    RoutingMethod::DeepSeekV2 {
        n_group,
        topk_group,
        routed_scaling_factor: scale,
        norm_topk_prob: norm,
    }
}

/// DeepSeek-V2 (160 experts, 8 groups, 3 kept, top 6, scale 16) and V2-Lite (64 experts,
/// greedy, top 6): refused by `validate` (upstream's routers and fused layers) with a rule
/// naming TopKRouter, admitted by `validate_topk` (TopKRouter, the oracle's route_topk).
#[test]
fn deepseek_v2_is_refused_for_upstream_kernels_and_admitted_for_the_top_k_router() {
    for cfg in [
        RoutingConfig::new(v2(8, 3, 16.0, false), 160, 6),
        RoutingConfig::new(v2(1, 1, 1.0, false), 64, 6),
        RoutingConfig::new(v2(0, 0, 1.0, true), 256, 8),
        RoutingConfig::new(v2(8, 8, 1.0, true), 256, 8),
        RoutingConfig::new(v2(8, 1, 1.0, false), 8, 1),
    ] {
        cfg.validate_topk()
            .unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        let (arg, rule) = rejected(cfg);
        assert_eq!(arg, "method", "{cfg:?}");
        assert!(
            rule.contains("TopKRouter") && rule.contains("DeepSeekV2"),
            "{rule}"
        );
        assert!(matches!(
            crate::routing::Router::new(cfg),
            Err(Error::InvalidArgument { arg: "method", .. })
        ));
        crate::routing::TopKRouter::new(cfg).unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
    }
}

#[test]
fn deepseek_v2_configs_follow_the_top_k_routers_rules() {
    let refused_topk = |cfg: RoutingConfig| match cfg.validate_topk() {
        Err(Error::InvalidArgument { arg, rule }) => (arg, rule),
        other => panic!("{cfg:?} should be refused, got {other:?}"),
    };
    for (cfg, arg) in [
        (
            RoutingConfig::new(v2(1, 1, 1.0, false), 512, 6),
            "num_experts",
        ),
        (RoutingConfig::new(v2(1, 1, 1.0, false), 256, 9), "top_k"),
        (
            RoutingConfig::new(v2(1, 1, f32::NAN, false), 64, 6),
            "routed_scaling_factor",
        ),
        (
            RoutingConfig::new(v2(1, 1, f32::INFINITY, false), 64, 6),
            "routed_scaling_factor",
        ),
        (RoutingConfig::new(v2(16, 3, 1.0, false), 160, 6), "n_group"),
        (RoutingConfig::new(v2(7, 3, 1.0, false), 160, 6), "n_group"),
        (RoutingConfig::new(v2(2, 1, 1.0, false), 128, 6), "n_group"), // 64 per group
        (
            RoutingConfig::new(v2(8, 0, 1.0, false), 160, 6),
            "topk_group",
        ),
        (
            RoutingConfig::new(v2(8, 9, 1.0, false), 160, 6),
            "topk_group",
        ),
        (RoutingConfig::new(v2(8, 1, 1.0, false), 48, 7), "top_k"), // 6 in the kept group
        (RoutingConfig::new(v2(8, 3, 1.0, false), 160, 0), "top_k"),
    ] {
        assert_eq!(refused_topk(cfg).0, arg, "{cfg:?}");
    }
    // DeepSeekV3 keeps at most 4 groups (upstream's kernel); DeepSeekV2 may keep all 8.
    RoutingConfig::new(v2(8, 8, 1.0, false), 160, 6)
        .validate_topk()
        .unwrap();
    assert_eq!(
        refused_topk(RoutingConfig::new(ds(8, 8), 256, 8)).0,
        "topk_group"
    );
    // validate_topk is validate for every method upstream has.
    for cfg in [
        RoutingConfig::new(ds(8, 4), 256, 8),
        RoutingConfig::new(RoutingMethod::Renormalize, 2048, 32),
        RoutingConfig::new(RoutingMethod::Default, 512, 8),
        RoutingConfig::new(RoutingMethod::Llama4, 128, 2),
    ] {
        assert_eq!(
            cfg.validate().is_ok(),
            cfg.validate_topk().is_ok(),
            "{cfg:?}"
        );
    }
}

#[test]
fn deepseek_v2_parameters_reach_the_abi() {
    let cfg = RoutingConfig::new(v2(8, 3, 16.0, true), 160, 6);
    assert_eq!(cfg.method.groups_and_scale(), (8, 3, 16.0));
    assert!(cfg.method.norm_topk_prob());
    assert!(!v2(8, 3, 16.0, false).norm_topk_prob());
    let f32 = sys::fi_dtype::FI_DTYPE_F32;
    let p = cfg.raw_params(1, f32, f32);
    assert_eq!(
        p.method as u32,
        sys::fi_routing_method::FI_ROUTING_DEEPSEEK_V2
    );
    assert_eq!((p.n_group, p.topk_group, p.norm_topk_prob), (8, 3, 1));
    assert_eq!(p.routed_scaling_factor, 16.0);
}
