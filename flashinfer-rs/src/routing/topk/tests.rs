//! The top-k router's per-call rules, on sizes.
use super::*;
use crate::error::Error;
use crate::routing::RoutingMethod;

fn deepseek() -> RoutingConfig {
    RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 2.5,
        },
        256,
        8,
    )
}

fn call(t: usize) -> TopKBatchSizes {
    TopKBatchSizes {
        num_tokens: t,
        logits: t * 256,
        bias: Some(256),
        ids: Some(t * 8),
        weights_f32: None,
        weights_bf16: Some(t * 8),
        replay: Some((t + 2, 8)),
    }
}

/// [`TopKPlan::check_batch`] of `c` under `cfg`.
fn validate_call(cfg: &RoutingConfig, c: &TopKBatchSizes) -> Result<()> {
    TopKPlan::new(*cfg)?.check_batch(c)
}

fn refused(cfg: &RoutingConfig, c: &TopKBatchSizes) -> &'static str {
    match validate_call(cfg, c) {
        Err(Error::InvalidArgument { arg, .. }) => arg,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_valid_call_passes_and_zero_tokens_too() {
    validate_call(&deepseek(), &call(5)).unwrap();
    validate_call(&deepseek(), &call(0)).unwrap();
}

#[test]
fn each_undersized_buffer_is_named() {
    let cfg = deepseek();
    let mut c = call(5);
    c.logits -= 1;
    assert_eq!(refused(&cfg, &c), "logits");
    let mut c = call(5);
    c.ids = Some(39);
    assert_eq!(refused(&cfg, &c), "ids");
    let mut c = call(5);
    c.weights_f32 = Some(0);
    assert_eq!(refused(&cfg, &c), "weights_f32");
    let mut c = call(5);
    c.weights_bf16 = Some(8);
    assert_eq!(refused(&cfg, &c), "weights_bf16");
    let mut c = call(5);
    c.replay = Some((4, 8));
    assert_eq!(refused(&cfg, &c), "replay");
    let mut c = call(5);
    c.replay = Some((5, 4));
    assert_eq!(refused(&cfg, &c), "replay");
}

#[test]
fn the_bias_follows_the_method() {
    let mut c = call(5);
    c.bias = None;
    assert_eq!(refused(&deepseek(), &c), "bias");
    let renorm = RoutingConfig::new(RoutingMethod::Renormalize, 256, 8);
    assert_eq!(refused(&renorm, &call(5)), "bias");
}

#[test]
fn a_call_that_writes_nothing_is_refused() {
    let c = TopKBatchSizes {
        num_tokens: 5,
        logits: 5 * 256,
        bias: Some(256),
        ..TopKBatchSizes::default()
    };
    assert_eq!(refused(&deepseek(), &c), "outputs");
}

#[test]
fn sizes_whose_products_overflow_are_refused_not_wrapped() {
    let mut c = call(5);
    c.num_tokens = MAX_TOKENS;
    assert_eq!(refused(&deepseek(), &c), "logits");
    c.num_tokens = MAX_TOKENS + 1;
    assert_eq!(refused(&deepseek(), &c), "num_tokens");
}

#[test]
fn the_config_is_validated_once_at_construction() {
    let bad = RoutingConfig::new(RoutingMethod::Renormalize, 8, 9);
    assert!(matches!(
        TopKRouter::new(bad),
        Err(Error::InvalidArgument { arg: "top_k", .. })
    ));
    TopKRouter::new(deepseek()).unwrap();
    // One expert per group: admitted by RoutingConfig::validate, refused by this router's
    // kernel (found by the CUTLASS MoE's GPU matrix: the refusal came from the C ABI at
    // route time; now at construction).
    let one_per_group = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 2.5,
        },
        8,
        2,
    );
    one_per_group.validate().unwrap();
    assert!(matches!(
        TopKRouter::new(one_per_group),
        Err(Error::InvalidArgument { arg: "n_group", .. })
    ));
}

/// DeepSeekV2 (flashinfer-rs's own method): this router admits it, with one expert per group
/// too (a group scores its best expert), while upstream's Router refuses it.
#[test]
fn deepseek_v2_is_this_routers_own_method() {
    let v2 = |n_group, topk_group, e, k| {
        RoutingConfig::new(
            RoutingMethod::DeepSeekV2 {
                n_group,
                topk_group,
                routed_scaling_factor: 16.0,
                norm_topk_prob: false,
            },
            e,
            k,
        )
    };
    for cfg in [v2(8, 3, 160, 6), v2(1, 1, 64, 6), v2(8, 4, 8, 2)] {
        let router = TopKRouter::new(cfg).unwrap();
        assert_eq!(router.config(), &cfg);
        assert!(matches!(
            crate::routing::Router::new(cfg),
            Err(Error::InvalidArgument { arg: "method", .. })
        ));
        // No bias: a call with one is refused, one without passes.
        let mut c = TopKBatchSizes {
            num_tokens: 3,
            logits: 3 * cfg.num_experts as usize,
            bias: None,
            ids: Some(3 * cfg.top_k as usize),
            ..TopKBatchSizes::default()
        };
        validate_call(&cfg, &c).unwrap();
        c.bias = Some(cfg.num_experts as usize);
        assert_eq!(refused(&cfg, &c), "bias");
    }
    assert!(matches!(
        TopKRouter::new(v2(8, 9, 160, 6)),
        Err(Error::InvalidArgument {
            arg: "topk_group",
            ..
        })
    ));
}
