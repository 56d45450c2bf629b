//! 03: a whole MoE layer in one fused call, with the routed experts captured on the way.
//!
//!     cargo run --release -p flashinfer-rs --features sm100 --example 03_fused_moe_layer
//!
//! Builds a bf16 `FusedMoe` layer (Qwen3-30B-A3B's router: 128 experts, top-8; small hidden
//! and intermediate sizes) once, then runs one batch of 16 tokens through it with a replay
//! buffer, and prints each token's experts and the output's norm. The fused TRTLLM kernels
//! exist for Blackwell (sm_100/sm_103) only: on any other GPU (or in a build without the
//! `sm100` feature) the layer is built and checked, and the call answers `UnsupportedArch`
//! (or `KernelsNotBuilt`) without touching the buffers, which this example shows too.
use flashinfer_rs::fused::prepare::{shuffle_expert_weights, EPILOGUE_TILE_M};
use flashinfer_rs::fused::{
    Bf16, Bf16Inputs, Bf16Weights, FusedMoe, MoeBatch, MoeConfig, MoeOptions, MoeRoutingInput,
    SwigluParams, WeightLayout,
};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::{Error, ReplayView};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if flashinfer_rs::cuda_device_count() == 0 {
        println!("No CUDA device here: nothing to run. Run this on a machine with an NVIDIA GPU.");
        return Ok(());
    }
    let ctx = flashinfer_rs::cuda_context(0)?;
    let stream = ctx.new_stream()?;
    let (experts, top_k, hidden, inter, tokens) = (128usize, 8usize, 512usize, 256usize, 16);

    // Once, at load: checkpoint-layout weights w13 [E, 2I, H] and w2 [E, H, I] (a fixed
    // pseudo-random pattern here) into the shuffled BlockMajorK layout the kernels read.
    let pattern = |n: usize, seed: usize| -> Vec<bf16> {
        (0..n)
            .map(|i| bf16::from_f32((((i * 2654435761 + seed) % 2001) as f32 - 1000.0) * 2e-5))
            .collect()
    };
    let (w13, w2) = (
        pattern(experts * 2 * inter * hidden, 1),
        pattern(experts * hidden * inter, 2),
    );
    let (w1, w2) = shuffle_expert_weights(
        &w13,
        &w2,
        experts,
        (2 * inter, hidden),
        (hidden, inter),
        true,
        EPILOGUE_TILE_M,
        Some(64),
    )?;
    let (w1, w2) = (stream.clone_htod(&w1)?, stream.clone_htod(&w2)?);
    let config = MoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, experts as u32, top_k as u32),
        hidden_size: hidden,
        intermediate_size: inter,
        options: MoeOptions::new(WeightLayout::BlockMajorK),
    };
    let weights = Bf16Weights {
        gemm1_weights: w1.as_view(),
        gemm2_weights: w2.as_view(),
        swiglu: SwigluParams::default(),
    };
    // Every rule that does not depend on the batch is checked here, once.
    let moe = FusedMoe::<Bf16>::new(config, weights)?;

    // Each step: gate logits and hidden states in, output and routed experts out.
    let logits = stream.clone_htod(&pattern(tokens * experts, 3))?;
    let x = stream.clone_htod(&pattern(tokens * hidden, 4))?;
    let mut out = stream.alloc_zeros::<bf16>(tokens * hidden)?;
    let mut replay = stream.clone_htod(&vec![-1i16; tokens * top_k])?;
    let batch = MoeBatch {
        num_tokens: tokens,
        routing: MoeRoutingInput::Logits {
            logits: (&logits).into(),
            bias: None,
        },
        inputs: Bf16Inputs {
            hidden_states: x.as_view(),
            gemm1_lora_delta: None,
        },
    };
    let mut view = ReplayView::from_slice(&mut replay, top_k)?;
    match moe.forward(&stream, batch, &mut out.as_view_mut(), Some(&mut view)) {
        Ok(_) => {}
        Err(Error::UnsupportedArch(why)) => {
            println!("The layer was built and checked; this GPU cannot run it: {why}");
            return Ok(());
        }
        Err(Error::KernelsNotBuilt) => {
            println!("The layer was built and checked; this build has no fused MoE kernels (enable the `sm100` feature).");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    }
    let ids = stream.clone_dtoh(&replay)?;
    let out = stream.clone_dtoh(&out)?;
    for t in 0..tokens {
        let row = &out[t * hidden..(t + 1) * hidden];
        let norm = row.iter().map(|v| v.to_f32().powi(2)).sum::<f32>().sqrt();
        println!(
            "token {t:2}: experts {:?}, |output| = {norm:.4}",
            &ids[t * top_k..(t + 1) * top_k]
        );
    }
    Ok(())
}
