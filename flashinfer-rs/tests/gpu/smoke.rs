//! The smallest proof that the kernels are linked and run: route one batch through the C ABI
//! with a replay buffer and see success and plausible ids.
use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};
use flashinfer_rs::ReplayView;

use crate::common::gpu;

#[test]
fn routing_with_replay_succeeds_through_the_c_abi() {
    let Some(g) = gpu("routing_with_replay_succeeds_through_the_c_abi") else {
        return;
    };
    let info = flashinfer_rs::device_info(&g.ctx).unwrap();
    if !info.routing_supported {
        eprintln!(
            "skipped: this build has no routing kernels for sm_{}{}",
            info.compute_capability.0, info.compute_capability.1
        );
        return;
    }
    let (tokens, experts, top_k) = (33usize, 128u32, 8u32);
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, experts, top_k);
    let router = Router::new(cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &cfg, tokens).unwrap();
    // Token t prefers experts t, t+1, ... with clear gaps.
    let logits: Vec<f32> = (0..tokens)
        .flat_map(|t| {
            (0..experts as usize)
                .map(move |e| -(((e + experts as usize - t) % experts as usize) as f32))
        })
        .collect();
    let logits = g.stream.clone_htod(&logits).unwrap();
    let mut replay = g
        .stream
        .clone_htod(&vec![-1i16; (tokens + 2) * top_k as usize])
        .unwrap();
    let mut view = ReplayView::from_slice(&mut replay, top_k as usize).unwrap();
    router
        .route(
            &g.stream,
            &RouteInput {
                logits: (&logits).into(),
                bias: None,
                num_tokens: tokens,
            },
            &mut buffers,
            Some(&mut view),
        )
        .unwrap();
    let ids = g.stream.clone_dtoh(&replay).unwrap();
    for t in 0..tokens {
        let row = &ids[t * top_k as usize..(t + 1) * top_k as usize];
        let want: Vec<i16> = (0..top_k as usize)
            .map(|k| ((t + k) % experts as usize) as i16)
            .collect();
        assert_eq!(row, want.as_slice(), "token {t}");
    }
    assert!(
        ids[tokens * top_k as usize..].iter().all(|&x| x == -1),
        "rows past num_tokens untouched"
    );
}
