//! Bad inputs that need device memory to construct: each gets its typed error, before any
//! launch.
use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepLayout};
use flashinfer_rs::cudarc::driver::CudaContext;
use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};
use flashinfer_rs::{Error, ReplayView};

use crate::common::gpu;

#[test]
fn a_replay_view_must_be_exactly_rows_by_cols() {
    let Some(g) = gpu("a_replay_view_must_be_exactly_rows_by_cols") else {
        return;
    };
    let mut s = g.stream.alloc_zeros::<i16>(10).unwrap();
    let err = ReplayView::new(s.as_view_mut(), 3, 4).unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { arg: "replay", ref rule } if rule.contains("not rows (3) x cols (4)")),
        "{err}"
    );
    assert!(matches!(
        ReplayView::from_slice(&mut s, 4),
        Err(Error::InvalidArgument { arg: "replay", .. })
    ));
    assert!(matches!(
        ReplayView::from_slice(&mut s, 0),
        Err(Error::InvalidArgument { arg: "replay", .. })
    ));
}

#[test]
fn buffers_of_another_cuda_context_are_refused() {
    let Some(g) = gpu("buffers_of_another_cuda_context_are_refused") else {
        return;
    };
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let other_stream = other.default_stream();
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 64, 4);
    let router = Router::new(cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &cfg, 8).unwrap();
    let foreign_logits = other_stream.alloc_zeros::<f32>(8 * 64).unwrap();
    let input = RouteInput {
        logits: (&foreign_logits).into(),
        bias: None,
        num_tokens: 8,
    };
    assert_eq!(
        router.route(&g.stream, &input, &mut buffers, None),
        Err(Error::ContextMismatch { arg: "logits" })
    );
    let logits = g.stream.alloc_zeros::<f32>(8 * 64).unwrap();
    let mut foreign_replay = other_stream.alloc_zeros::<i16>(8 * 4).unwrap();
    let input = RouteInput {
        logits: (&logits).into(),
        bias: None,
        num_tokens: 8,
    };
    let mut view = ReplayView::from_slice(&mut foreign_replay, 4).unwrap();
    assert_eq!(
        router.route(&g.stream, &input, &mut buffers, Some(&mut view)),
        Err(Error::ContextMismatch { arg: "replay" })
    );
    let mut foreign_buffers = RoutingBuffers::new(&other_stream, &cfg, 8).unwrap();
    assert_eq!(
        router.route(&g.stream, &input, &mut foreign_buffers, None),
        Err(Error::ContextMismatch { arg: "buffers" })
    );
    g.ctx.bind_to_thread().unwrap();
}

#[test]
fn the_capture_protocol_refuses_misuse_without_blocking() {
    let Some(g) = gpu("the_capture_protocol_refuses_misuse_without_blocking") else {
        return;
    };
    let cfg = CaptureConfig::new(2, 8, 2).with_layer_map(vec![None, Some(0), Some(1)]);
    let mut store = CaptureStore::new(&g.stream, cfg.clone()).unwrap();
    assert_eq!(
        store.moe_layer_of(0).unwrap(),
        None,
        "a dense layer has no MoE slot"
    );
    assert_eq!(store.moe_layer_of(2).unwrap(), Some(1));
    assert!(matches!(
        store.moe_layer_of(3),
        Err(Error::InvalidArgument { arg: "layer", .. })
    ));
    assert!(matches!(
        store.replay_view(2),
        Err(Error::InvalidArgument {
            arg: "moe_layer",
            ..
        })
    ));
    assert!(
        matches!(
            store.end_step(&g.stream),
            Err(Error::CaptureProtocol {
                call: "end_step",
                ..
            })
        ),
        "no step begun"
    );
    assert!(matches!(
        store.begin_step(&g.stream, StepLayout::single(9)),
        Err(Error::InvalidArgument { arg: "layout", .. })
    ));
    // A step ends on the stream it began on (its staging copy follows the step's kernels
    // there); another stream is refused and the step stays begun.
    store.begin_step(&g.stream, StepLayout::single(4)).unwrap();
    let other = g.stream.context().new_stream().unwrap();
    assert!(matches!(
        store.end_step(&other),
        Err(Error::CaptureProtocol {
            call: "end_step",
            ..
        })
    ));
    store.end_step(&g.stream).unwrap();
    store.begin_step(&g.stream, StepLayout::single(4)).unwrap();
    store.end_step(&g.stream).unwrap();
    store.begin_step(&g.stream, StepLayout::single(4)).unwrap();
    assert!(matches!(
        store.begin_step(&g.stream, StepLayout::single(4)),
        Err(Error::CaptureProtocol {
            call: "begin_step",
            ..
        })
    ));
    // Both readback buffers in flight: back-pressure, a typed error and not a hidden wait; collecting
    // frees one.
    let full = store.end_step(&g.stream);
    assert!(
        matches!(full, Err(Error::Backpressure { in_flight: 2 })),
        "{full:?}"
    );
    assert!(full.unwrap_err().to_string().contains("collect"));
    assert!(store.collect().unwrap().is_some());
    store.end_step(&g.stream).unwrap();
    assert!(matches!(
        CaptureStore::new(&g.stream, cfg.clone().with_readback_buffers(1)),
        Err(Error::InvalidArgument {
            arg: "readback_buffers",
            ..
        })
    ));
}

/// A capture store larger than the device (2^31 rows x 64 layers x top-8, ids and weights:
/// 12 TiB): filled on the device, so the driver's out-of-memory error comes back typed, no host
/// copy of it is ever made, and the context still serves a store that fits.
#[test]
fn a_capture_store_larger_than_the_device_is_a_driver_error() {
    let test = "a_capture_store_larger_than_the_device_is_a_driver_error";
    let Some(g) = gpu(test) else {
        return;
    };
    if std::env::var_os("FLASHINFER_RS_UNDER_SANITIZER").is_some() {
        // The sanitizers report the out-of-memory answer this test asks for as an API error.
        eprintln!("skipped: {test}: under compute-sanitizer (scripts/sanitize.sh)");
        return;
    }
    let cfg = |max_tokens| CaptureConfig::new(64, max_tokens, 8).with_weights(true);
    match CaptureStore::new(&g.stream, cfg(i32::MAX as usize)) {
        Err(Error::Driver(e)) => eprintln!("a 12 TiB capture store: {e}"),
        other => panic!("expected the driver's out-of-memory error, got {other:?}"),
    }
    let mut store = CaptureStore::new(&g.stream, cfg(64)).unwrap();
    // A store that captures weights lends no ids-only view (its weights would stay unwritten).
    assert!(matches!(
        store.replay_view(0),
        Err(Error::InvalidArgument {
            arg: "moe_layer",
            ..
        })
    ));
    assert!(store.layer_views(0).unwrap().weights.is_some());
    store.begin_step(&g.stream, StepLayout::single(1)).unwrap();
    store.end_step(&g.stream).unwrap();
    let step = store.collect().unwrap().expect("the step just ended");
    // Nothing routed this step: the store's fill reads back as unknown ids and NaN weights.
    assert!(step.rows.ids.iter().all(|&id| id == -1));
    assert!(step.rows.weights.unwrap().iter().all(|w| w.is_nan()));
}
