//! DeepSeekV3 routing cross-checked against upstream's separate NoAuxTc router, built from
//! the same vendored tree: same experts, same order, same replay.
use flashinfer_rs::routing::{
    oracle, NoAuxTcOutputs, NoAuxTcRouter, RouteInput, Router, RoutingBuffers, RoutingConfig,
    RoutingMethod,
};
use flashinfer_rs::ReplayView;

use crate::common::gpu;

#[test]
fn deepseek_v3_agrees_with_upstreams_noaux_tc_router() {
    let Some(g) = gpu("deepseek_v3_agrees_with_upstreams_noaux_tc_router") else {
        return;
    };
    let mut cases = 0;
    for (e, n_group, topk_group, k) in [
        (256, 8, 4, 8),
        (256, 8, 4, 4),
        (128, 8, 4, 8),
        (64, 4, 2, 8),
        (384, 1, 1, 8),
        (256, 1, 1, 8),
    ] {
        let method = RoutingMethod::DeepSeekV3 {
            n_group,
            topk_group,
            routed_scaling_factor: 2.5,
        };
        let cfg = RoutingConfig::new(method, e, k);
        for tokens in [1usize, 5, 17, 256, 257, 4096] {
            let (logits, bias) =
                oracle::separated_logits(&cfg, tokens, false, e as u64 * 31 + tokens as u64);
            let bias = bias.unwrap();
            let d_logits = g.stream.clone_htod(&logits).unwrap();
            let d_bias = g.stream.clone_htod(&bias).unwrap();
            let kk = k as usize;

            let router = Router::new(cfg).unwrap();
            let mut buffers = RoutingBuffers::new(&g.stream, &cfg, tokens).unwrap();
            let mut ours = g.stream.clone_htod(&vec![-1i16; tokens * kk]).unwrap();
            let input = RouteInput {
                logits: (&d_logits).into(),
                bias: Some((&d_bias).into()),
                num_tokens: tokens,
            };
            router
                .route(
                    &g.stream,
                    &input,
                    &mut buffers,
                    Some(&mut ReplayView::from_slice(&mut ours, kk).unwrap()),
                )
                .unwrap();

            let mut values = g.stream.alloc_zeros::<f32>(tokens * kk).unwrap();
            let mut indices = g.stream.alloc_zeros::<i32>(tokens * kk).unwrap();
            let mut theirs = g.stream.clone_htod(&vec![-1i16; tokens * kk]).unwrap();
            NoAuxTcRouter::new(cfg)
                .unwrap()
                .route(
                    &g.stream,
                    &input,
                    &mut NoAuxTcOutputs {
                        values: values.as_view_mut(),
                        indices: indices.as_view_mut(),
                    },
                    Some(&mut ReplayView::from_slice(&mut theirs, kk).unwrap()),
                )
                .unwrap();

            let ours = g.stream.clone_dtoh(&ours).unwrap();
            let theirs = g.stream.clone_dtoh(&theirs).unwrap();
            let indices = g.stream.clone_dtoh(&indices).unwrap();
            let want = oracle::route(&cfg, &logits, Some(&bias), tokens).unwrap();
            for t in 0..tokens {
                let row = t * kk..(t + 1) * kk;
                let mut a: Vec<i32> = ours[row.clone()].iter().map(|&x| x as i32).collect();
                let mut b: Vec<i32> = indices[row.clone()].to_vec();
                let mut c: Vec<i32> = theirs[row.clone()].iter().map(|&x| x as i32).collect();
                assert_eq!(
                    ours[row.clone()],
                    want.ids[row.clone()],
                    "{cfg:?} T={tokens} token {t}: ours vs oracle"
                );
                // NoAuxTc's output order is its own; compare as sets.
                a.sort_unstable();
                b.sort_unstable();
                c.sort_unstable();
                assert_eq!(
                    a, b,
                    "{cfg:?} T={tokens} token {t}: ours vs NoAuxTc indices"
                );
                assert_eq!(
                    b, c,
                    "{cfg:?} T={tokens} token {t}: NoAuxTc indices vs its replay"
                );
            }
            cases += 1;
        }
    }
    eprintln!("NoAuxTc cross-check: {cases} cases agreed");
}
