//! CUDA graphs: a routing call recorded into a graph once, with an oversized replay buffer,
//! rewrites the replay rows correctly on every launch of the graph with fresh logits.
use flashinfer_rs::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashinfer_rs::routing::{oracle, RouteInput, Router, RoutingBuffers, RoutingConfig};
use flashinfer_rs::ReplayView;

use crate::common::gpu;

fn graph_runs(cfg: RoutingConfig, tokens: usize, launches: usize) {
    let name = format!("graph {:?} T={tokens}", cfg.method);
    let Some(g) = gpu(&name) else { return };
    let k = cfg.top_k as usize;
    let rows = tokens + 64; // oversized: the graph must only ever write [0, tokens)
    let router = Router::new(cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &cfg, tokens).unwrap();
    let (first, host_bias) = oracle::separated_logits(&cfg, tokens, false, 1).unwrap();
    let mut logits = g.stream.clone_htod(&first).unwrap();
    let bias = host_bias.as_ref().map(|b| g.stream.clone_htod(b).unwrap());
    let mut replay = g.stream.clone_htod(&vec![-1i16; rows * k]).unwrap();

    // cudarc's per-buffer event tracking records events, which a capture must not contain.
    unsafe { g.ctx.disable_event_tracking() };
    g.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    {
        let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
        let input = RouteInput {
            logits: (&logits).into(),
            bias: bias.as_ref().map(Into::into),
            num_tokens: tokens,
        };
        router
            .route(&g.stream, &input, &mut buffers, Some(&mut view))
            .unwrap();
    }
    let graph = g
        .stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("a captured graph");

    for i in 0..launches {
        // The bias is a captured input too: fresh logits, separated for that same bias.
        let fresh = oracle::separated_logits_for_bias(
            &cfg,
            tokens,
            false,
            100 + i as u64,
            host_bias.as_deref(),
        )
        .unwrap();
        let want = oracle::route(&cfg, &fresh, host_bias.as_deref(), tokens).unwrap();
        g.stream.memcpy_htod(&fresh, &mut logits).unwrap();
        graph.launch().unwrap();
        let got = g.stream.clone_dtoh(&replay).unwrap();
        assert_eq!(
            &got[..tokens * k],
            &want.ids[..],
            "{name}: graph launch {i}"
        );
        assert!(
            got[tokens * k..].iter().all(|&x| x == -1),
            "{name}: graph launch {i} wrote past num_tokens"
        );
    }
    unsafe { g.ctx.enable_event_tracking() };
    eprintln!("{name}: {launches} graph launches matched the oracle");
}

#[test]
fn a_deepseek_v3_graph_reruns_with_fresh_logits() {
    let ds = crate::models::deepseek_v3().cfg;
    graph_runs(ds, 64, 25);
    graph_runs(ds, 4096, 10);
}

#[test]
fn a_renormalize_graph_reruns_with_fresh_logits() {
    // Block tier, cluster tier and the multi-kernel tiers.
    for tokens in [3, 200, 3000] {
        graph_runs(crate::models::qwen3_30b_a3b().cfg, tokens, 10);
    }
}
