use super::*;
use crate::routing::RoutingMethod;

fn renorm() -> RoutingConfig {
    RoutingConfig::new(RoutingMethod::Renormalize, 64, 4)
}
fn buffers_for(cfg: &RoutingConfig, max_tokens: usize) -> RoutingBuffersShape {
    RoutingBuffersShape {
        max_tokens,
        num_experts: cfg.num_experts as usize,
        top_k: cfg.top_k as usize,
        tile_tokens_dim: cfg.tile_tokens_dim as usize,
    }
}
fn call(t: usize) -> RouteBatchSizes {
    RouteBatchSizes {
        num_tokens: t,
        logits: t * 64,
        bias: None,
        replay: Some((t, 4)),
        buffers: RoutingBuffersShape::default(),
    }
}
/// [`RoutePlan::check_batch`] of `call` on `buffers`.
fn validate_call(
    cfg: &RoutingConfig,
    call: &RouteBatchSizes,
    buffers: &RoutingBuffersShape,
) -> Result<()> {
    RoutePlan::new(*cfg)?.check_batch(&RouteBatchSizes {
        buffers: *buffers,
        ..*call
    })
}
fn rule(r: Result<()>) -> (&'static str, String) {
    match r {
        Err(Error::InvalidArgument { arg, rule }) => (arg, rule),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

#[test]
fn a_well_formed_call_passes_with_or_without_replay_and_with_spare_rows() {
    let cfg = renorm();
    let b = buffers_for(&cfg, 16);
    validate_call(&cfg, &call(16), &b).unwrap();
    validate_call(
        &cfg,
        &RouteBatchSizes {
            replay: None,
            ..call(3)
        },
        &b,
    )
    .unwrap();
    validate_call(
        &cfg,
        &RouteBatchSizes {
            replay: Some((100, 4)),
            ..call(3)
        },
        &b,
    )
    .unwrap();
    validate_call(
        &cfg,
        &RouteBatchSizes {
            replay: Some((0, 4)),
            ..call(0)
        },
        &b,
    )
    .unwrap();
}

#[test]
fn an_undersized_replay_buffer_is_refused() {
    let cfg = renorm();
    let (arg, r) = rule(validate_call(
        &cfg,
        &RouteBatchSizes {
            replay: Some((7, 4)),
            ..call(8)
        },
        &buffers_for(&cfg, 8),
    ));
    assert_eq!(arg, "replay");
    assert!(r.contains("7 rows") && r.contains("8 tokens"), "{r}");
}

#[test]
fn a_replay_buffer_with_the_wrong_width_is_refused() {
    let cfg = renorm();
    let (arg, r) = rule(validate_call(
        &cfg,
        &RouteBatchSizes {
            replay: Some((8, 8)),
            ..call(8)
        },
        &buffers_for(&cfg, 8),
    ));
    assert_eq!(arg, "replay");
    assert!(r.contains("8 columns, top_k is 4"), "{r}");
}

#[test]
fn too_many_tokens_for_the_buffers_are_refused() {
    let cfg = renorm();
    let (arg, r) = rule(validate_call(&cfg, &call(9), &buffers_for(&cfg, 8)));
    assert_eq!(arg, "num_tokens");
    assert!(r.contains("max_tokens (8)"), "{r}");
}

#[test]
fn short_logits_are_refused() {
    let cfg = renorm();
    let (arg, r) = rule(validate_call(
        &cfg,
        &RouteBatchSizes {
            logits: 8 * 64 - 1,
            ..call(8)
        },
        &buffers_for(&cfg, 8),
    ));
    assert_eq!(arg, "logits");
    assert!(r.contains("need 512"), "{r}");
}

#[test]
fn bias_is_required_exactly_where_the_method_uses_one() {
    let cfg = renorm();
    let b = buffers_for(&cfg, 8);
    let (arg, r) = rule(validate_call(
        &cfg,
        &RouteBatchSizes {
            bias: Some(64),
            ..call(8)
        },
        &b,
    ));
    assert_eq!((arg, r.contains("takes no bias")), ("bias", true));
    let ds = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 1.0,
        },
        64,
        4,
    );
    let b = buffers_for(&ds, 8);
    let (arg, r) = rule(validate_call(&ds, &call(8), &b));
    assert_eq!((arg, r.contains("needs a bias")), ("bias", true));
    let (arg, r) = rule(validate_call(
        &ds,
        &RouteBatchSizes {
            bias: Some(63),
            ..call(8)
        },
        &b,
    ));
    assert_eq!((arg, r.contains("num_experts (64)")), ("bias", true));
    validate_call(
        &ds,
        &RouteBatchSizes {
            bias: Some(64),
            ..call(8)
        },
        &b,
    )
    .unwrap();
}

#[test]
fn buffers_of_another_shape_are_refused() {
    let cfg = renorm();
    let other = RoutingConfig::new(RoutingMethod::Renormalize, 64, 8);
    let (arg, _) = rule(validate_call(&cfg, &call(4), &buffers_for(&other, 8)));
    assert_eq!(arg, "buffers");
    let tiled = renorm().with_tile_tokens_dim(16);
    let (arg, _) = rule(validate_call(&tiled, &call(4), &buffers_for(&cfg, 8)));
    assert_eq!(arg, "buffers");
}
