//! 04: a whole MoE layer on Hopper (FlashInfer's CUTLASS fused MoE behind our top-k router),
//! with the routed experts captured on the way.
//!
//!     cargo run --release -p flashinfer-rs --features sm90-moe --example 04_hopper_moe_layer
//!
//! One Qwen3-30B-A3B-sized layer (128 experts, top-8, hidden 2048, intermediate 768) with
//! pseudo-random bf16 weights: routes 64 tokens from their logits, runs both grouped GEMMs with
//! SwiGLU between them and the weighted sum, writes each token's experts into a replay buffer,
//! then times 100 calls (CUDA events) and prints the time per layer and the first tokens'
//! experts. Off Hopper (or without the `sm90-moe` feature) the layer is refused with a typed
//! error, which this example prints.
use flashinfer_rs::cutlass::{
    CutlassBatch, CutlassMoe, CutlassMoeConfig, CutlassRouting, CutlassWeights,
};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::ReplayView;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if flashinfer_rs::cuda_device_count() == 0 {
        println!("No CUDA device here: nothing to run. Run this on a machine with an NVIDIA GPU.");
        return Ok(());
    }
    let ctx = flashinfer_rs::cuda_context(0)?;
    let stream = ctx.new_stream()?;
    let (experts, top_k, hidden, inter, tokens) = (128usize, 8usize, 2048usize, 768usize, 64);
    let pattern = |n: usize, seed: usize, scale: f32| -> Vec<bf16> {
        (0..n)
            .map(|i| {
                bf16::from_f32((((i * 2654435761 + seed) % 2001) as f32 / 1000.0 - 1.0) * scale)
            })
            .collect()
    };
    // Once, at load: w13 [E, 2I, H] (up rows, then gate rows) and w2 [E, H, I], as checkpoints
    // store them; the CUTLASS MoE reads them as they are.
    let w13 = stream.clone_htod(&pattern(experts * 2 * inter * hidden, 1, 0.03))?;
    let w2 = stream.clone_htod(&pattern(experts * hidden * inter, 2, 0.05))?;
    let config = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, experts as u32, top_k as u32),
        hidden_size: hidden,
        intermediate_size: inter,
        max_tokens: 4096,
    };
    let weights = CutlassWeights {
        fc1: w13.as_view(),
        fc2: w2.as_view(),
    };
    let layer = match CutlassMoe::new(config, weights) {
        Ok(layer) => layer,
        Err(e) => {
            println!("This GPU or build has no CUTLASS MoE: {e}");
            return Ok(());
        }
    };
    let mut workspace = layer.workspace(&stream)?; // allocated once, for max_tokens
    println!(
        "layer built: {} MiB of workspace for {} tokens",
        layer.workspace_bytes() >> 20,
        config.max_tokens
    );

    // Per batch: the gate's logits and the hidden states (a pattern here).
    let logits = stream.clone_htod(&pattern(tokens * experts, 3, 4.0))?;
    let hidden_states = stream.clone_htod(&pattern(tokens * hidden, 4, 1.0))?;
    let mut output = stream.alloc_zeros::<bf16>(tokens * hidden)?;
    let mut replay = stream.alloc_zeros::<i16>(tokens * top_k)?;
    let run = |workspace: &mut _,
               output: &mut flashinfer_rs::cudarc::driver::CudaSlice<bf16>,
               replay: &mut _| {
        let batch = CutlassBatch {
            num_tokens: tokens,
            routing: CutlassRouting::Logits {
                logits: (&logits).into(),
                bias: None,
            },
            hidden_states: hidden_states.as_view(),
        };
        let mut view = ReplayView::from_slice(replay, top_k)?;
        layer.forward(
            &stream,
            batch,
            &mut output.as_view_mut(),
            workspace,
            Some(&mut view),
        )
    };
    run(&mut workspace, &mut output, &mut replay)?;

    // Timing events (cudarc's default events do not time).
    let timing = Some(flashinfer_rs::cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    let (start, end) = (ctx.new_event(timing)?, ctx.new_event(timing)?);
    let iters = 100;
    start.record(&stream)?;
    for _ in 0..iters {
        run(&mut workspace, &mut output, &mut replay)?;
    }
    end.record(&stream)?;
    end.synchronize()?;
    let ms = start.elapsed_ms(&end)?;
    println!(
        "{tokens} tokens through the layer: {:.1} us per call (mean of {iters}, CUDA events)",
        1000.0 * ms / iters as f32
    );
    let experts_of = stream.clone_dtoh(&replay)?;
    let out = stream.clone_dtoh(&output)?;
    for t in 0..4 {
        println!(
            "token {t}: experts {:?}",
            &experts_of[t * top_k..(t + 1) * top_k]
        );
    }
    let norm = out.iter().map(|v| v.to_f32().powi(2)).sum::<f32>().sqrt();
    println!("output norm {norm:.3}");
    Ok(())
}
