//! 01: route a batch DeepSeek-V3 style and print which experts each token went to.
//!
//!     bash scripts/demo.sh          # sets up nvcc + sources, then runs this
//!
//! With a GPU this routes 6 tokens over 256 experts (8 groups, 4 kept, top-8) with a replay
//! buffer and prints each token's experts and weights. Without one it says so and shows
//! what this build holds.
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};
use flashinfer_rs::ReplayView;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let build = flashinfer_rs::build_info();
    let archs = &build.targets;
    println!(
        "flashinfer-rs {} | FlashInfer {} | kernels: {} | CUDA runtime {}",
        env!("CARGO_PKG_VERSION"),
        build.flashinfer_version,
        if archs.is_empty() {
            "none (build with --features sm90,sm100)".to_string()
        } else {
            archs.join(", ")
        },
        build.cuda_version
    );

    if flashinfer_rs::cuda_device_count() == 0 {
        println!("No CUDA device here: nothing to route. Run this on a machine with an NVIDIA GPU to see routed experts.");
        return Ok(());
    }
    let ctx = flashinfer_rs::cuda_context(0)?;
    let device = flashinfer_rs::device_info(&ctx)?;
    println!(
        "GPU 0: {} (sm_{}{}, {} SMs)",
        ctx.name()?,
        device.compute_capability.0,
        device.compute_capability.1,
        device.sm_count
    );
    if !device.routing_supported {
        println!("This build has no routing kernels for this GPU's architecture.");
        return Ok(());
    }

    let (tokens, experts, top_k) = (6usize, 256u32, 8u32);
    let method = RoutingMethod::DeepSeekV3 {
        n_group: 8,
        topk_group: 4,
        routed_scaling_factor: 2.5,
    };
    let cfg = RoutingConfig::new(method, experts, top_k);
    let router = Router::new(cfg)?;
    let stream = ctx.new_stream()?;
    let mut buffers = RoutingBuffers::new(&stream, &cfg, tokens)?;

    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f32 / (1u64 << 53) as f32
    };
    let logits: Vec<f32> = (0..tokens * experts as usize)
        .map(|_| uniform() * 8.0 - 4.0)
        .collect();
    let bias: Vec<f32> = (0..experts).map(|_| uniform() * 0.1).collect();
    let logits = stream.clone_htod(&logits)?;
    let bias = stream.clone_htod(&bias)?;

    // Two spare rows, filled with -1: the kernels write only rows [0, tokens).
    let mut replay = stream.clone_htod(&vec![-1i16; (tokens + 2) * top_k as usize])?;
    let mut view = ReplayView::from_slice(&mut replay, top_k as usize)?;
    let input = RouteInput {
        logits: (&logits).into(),
        bias: Some((&bias).into()),
        num_tokens: tokens,
    };
    router.route(&stream, &input, &mut buffers, Some(&mut view))?;

    let ids = stream.clone_dtoh(&replay)?;
    let weights: Vec<bf16> =
        stream.clone_dtoh(&buffers.topk_weights().slice(0..tokens * top_k as usize))?;
    println!("\nDeepSeek-V3 routing, {tokens} tokens, {experts} experts, top-{top_k} (8 groups, 4 kept):");
    for (t, row) in ids.chunks(top_k as usize).enumerate() {
        let label = if t < tokens {
            format!("token {t}")
        } else {
            format!("spare {t}")
        };
        let w: Vec<String> = if t < tokens {
            weights[t * top_k as usize..(t + 1) * top_k as usize]
                .iter()
                .map(|w| format!("{:.3}", w.to_f32()))
                .collect()
        } else {
            vec!["(never written)".into()]
        };
        println!("  {label:>8}: experts {row:?}  weights [{}]", w.join(", "));
    }
    Ok(())
}
