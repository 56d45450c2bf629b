//! 02: a serving loop that returns each request's routed experts.
//!
//!     cargo run --release --features sm90,sm100 --example 02_serving_loop_capture
//!
//! Requests join and finish; every step routes the running batch through 6 MoE layers whose
//! replay views live in one `CaptureStore`; each step is read back asynchronously and
//! attributed to (request, position) by an `Assembler`; a finished request is exported as
//! vLLM's base64 `.npy` and SGLang-style flat bytes.
//!
//! With a GPU the rows come from the real routing kernels. Without one, the same host side
//! (assembly and export) runs on synthetic step rows, so CI exercises it.
use std::collections::VecDeque;

use flashinfer_rs::capture::{
    Assembler, AssemblerConfig, CaptureConfig, CaptureStore, RequestId, RowOwner, StepLayout,
    StepRows,
};
use flashinfer_rs::routing::oracle::{self, SplitMix64};
use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};

const LAYERS: usize = 6;
const EXPERTS: u32 = 64;
const TOP_K: usize = 4;
const MAX_ROWS: usize = 32;

struct Request {
    id: RequestId,
    prompt: usize,
    generate: usize,
    /// Tokens run through the model so far.
    done: usize,
}

/// The rows of one step: each running request's next tokens (its whole prompt first).
fn schedule(running: &mut [Request]) -> Vec<RowOwner> {
    let mut owners = Vec::new();
    for r in running.iter_mut() {
        let n = if r.done == 0 { r.prompt } else { 1 };
        if owners.len() + n > MAX_ROWS {
            continue;
        }
        owners.extend((r.done..r.done + n).map(|position| RowOwner::Token {
            request: r.id,
            position,
        }));
        r.done += n;
    }
    owners
}

/// Where step rows come from: the GPU, or a synthetic stand-in with the same interface.
trait Router6 {
    fn step(&mut self, rows: usize) -> Option<StepRows>;
}

struct Synthetic(SplitMix64);
impl Router6 for Synthetic {
    fn step(&mut self, rows: usize) -> Option<StepRows> {
        let ids = (0..rows * LAYERS * TOP_K)
            .map(|_| self.0.below(EXPERTS as usize) as i16)
            .collect();
        Some(StepRows {
            weights: None,
            tokens: rows,
            layers: LAYERS,
            top_k: TOP_K,
            ids,
        })
    }
}

struct Gpu {
    stream: std::sync::Arc<flashinfer_rs::cudarc::driver::CudaStream>,
    router: Router,
    buffers: RoutingBuffers,
    store: CaptureStore,
    cfg: RoutingConfig,
    rng: SplitMix64,
}
impl Router6 for Gpu {
    fn step(&mut self, rows: usize) -> Option<StepRows> {
        self.store
            .begin_step(&self.stream, StepLayout::single(rows))
            .unwrap();
        for layer in 0..LAYERS {
            let (logits, _) =
                oracle::separated_logits(&self.cfg, rows, false, self.rng.next_u64()).unwrap();
            let logits = self.stream.clone_htod(&logits).unwrap();
            let input = RouteInput {
                logits: (&logits).into(),
                bias: None,
                num_tokens: rows,
            };
            let mut view = self.store.replay_view(layer).unwrap();
            self.router
                .route(&self.stream, &input, &mut self.buffers, Some(&mut view))
                .unwrap();
        }
        self.store.end_step(&self.stream).unwrap();
        // A real server would collect the previous step here, overlapping this one.
        self.store.collect().unwrap().map(|c| c.rows)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gpu = flashinfer_rs::cuda_device_count() > 0 && flashinfer_rs::build_info().kernels_built;
    let mut source: Box<dyn Router6> = if gpu {
        let ctx = flashinfer_rs::cuda_context(0)?;
        let stream = ctx.new_stream()?;
        let cfg = RoutingConfig::new(RoutingMethod::Renormalize, EXPERTS, TOP_K as u32);
        let capture = CaptureConfig::new(LAYERS, MAX_ROWS, TOP_K);
        Box::new(Gpu {
            router: Router::new(cfg)?,
            buffers: RoutingBuffers::new(&stream, &cfg, MAX_ROWS)?,
            store: CaptureStore::new(&stream, capture)?,
            stream,
            cfg,
            rng: SplitMix64(1),
        })
    } else {
        println!(
            "(no GPU or no kernels: synthetic routing rows; assembly and export are the real code)"
        );
        Box::new(Synthetic(SplitMix64(1)))
    };

    let mut assembler = Assembler::new(AssemblerConfig::new(LAYERS, TOP_K, EXPERTS, 4096))?;
    let mut waiting: VecDeque<Request> = (0..5)
        .map(|i| Request {
            id: 100 + i,
            prompt: 3 + 2 * i as usize,
            generate: 2 + i as usize,
            done: 0,
        })
        .collect();
    let mut running: Vec<Request> = Vec::new();
    for step in 0.. {
        // Up to three requests run at once; new ones join as others finish.
        while running.len() < 3 {
            let Some(r) = waiting.pop_front() else { break };
            assembler.start(r.id, 0)?;
            running.push(r);
        }
        if running.is_empty() {
            break;
        }
        let owners = schedule(&mut running);
        let rows = source.step(owners.len()).expect("step rows");
        assembler.push_step(&rows, &owners)?;
        println!(
            "step {step}: {} rows for requests {:?}",
            owners.len(),
            running.iter().map(|r| r.id).collect::<Vec<_>>()
        );
        // A request is finished once all prompt + generated tokens but the last have run.
        let (finished, still): (Vec<Request>, Vec<Request>) = running
            .drain(..)
            .partition(|r| r.done >= r.prompt + r.generate - 1);
        running = still;
        for r in finished {
            let experts = assembler.finish(r.id, r.prompt + r.generate)?;
            let (flat, tag) = experts.to_flat_base64();
            println!(
                "  request {} finished: routed_experts shape ({}, {}, {}) {:?}; first token's layer-0 experts {:?}",
                r.id,
                experts.tokens(),
                experts.layers(),
                experts.top_k(),
                experts.dtype(),
                &experts.ids()[..TOP_K]
            );
            println!(
                "    vLLM .npy base64: {}...  SGLang flat ({tag}): {} chars",
                &experts.to_vllm_base64()[..32],
                flat.len()
            );
        }
    }
    Ok(())
}
