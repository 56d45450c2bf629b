//! Several threads, each on its own stream, routing at once through one context: every
//! result equals the oracle (no shared mutable state in the shim or upstream's hot path).
use flashinfer_rs::routing::{oracle, RouteInput, Router, RoutingBuffers, RoutingConfig};
use flashinfer_rs::ReplayView;

use crate::common::gpu;
use crate::models;

#[test]
fn threads_on_their_own_streams_route_correctly_at_once() {
    let Some(g) = gpu("threads_on_their_own_streams_route_correctly_at_once") else {
        return;
    };
    let configs = [
        models::deepseek_v3().cfg,
        models::qwen3_30b_a3b().cfg,
        models::llama4_maverick().cfg,
        // MiniMax-M2's method at top-6: another shape of its tier.
        RoutingConfig::new(models::minimax_m2().cfg.method, 256, 6),
    ];
    std::thread::scope(|s| {
        for (i, cfg) in configs.iter().enumerate() {
            let ctx = g.ctx.clone();
            s.spawn(move || {
                let stream = ctx.new_stream().unwrap();
                let router = Router::new(*cfg).unwrap();
                let mut buffers = RoutingBuffers::new(&stream, cfg, 2048).unwrap();
                let k = cfg.top_k as usize;
                for round in 0..40 {
                    let tokens = [1, 7, 64, 300, 2048][round % 5];
                    let (logits, bias) =
                        oracle::separated_logits(cfg, tokens, false, (i * 100 + round) as u64)
                            .unwrap();
                    let want = oracle::route(cfg, &logits, bias.as_deref(), tokens).unwrap();
                    let d_logits = stream.clone_htod(&logits).unwrap();
                    let d_bias = bias.map(|b| stream.clone_htod(&b).unwrap());
                    let mut replay = stream.alloc_zeros::<i16>(tokens * k).unwrap();
                    let input = RouteInput {
                        logits: (&d_logits).into(),
                        bias: d_bias.as_ref().map(Into::into),
                        num_tokens: tokens,
                    };
                    router
                        .route(
                            &stream,
                            &input,
                            &mut buffers,
                            Some(&mut ReplayView::from_slice(&mut replay, k).unwrap()),
                        )
                        .unwrap();
                    assert_eq!(
                        stream.clone_dtoh(&replay).unwrap(),
                        want.ids,
                        "thread {i} round {round}"
                    );
                }
            });
        }
    });
    eprintln!("concurrency: 4 threads x 40 rounds on their own streams matched the oracle");
}
