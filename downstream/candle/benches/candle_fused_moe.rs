//! candle's own fused MoE layer (`candle_transformers::fused_moe::FusedMoe`, candle 0.11; its
//! GEMMs are candle-kernels' `moe_gemm_wmma`) timed on one GPU on the layers, sizes and data of
//! flashinfer-rs/benches/moe_layer.rs, its tables printed in that bench's style so that
//! scripts/plot_layer.py draws them as the candle series beside ours (issue 29):
//!
//!     bash scripts/gpu-pack-candle.sh && bash scripts/gpu-pack.sh   # here
//!     bash gpu-pack/candle/bench.sh [qwen3|deepseek]                # on the GPU machine
//!
//! A layer's name runs that layer only; `MOE_LAYER_TOKENS=1,8,64` times those rows only.
//!
//! What is timed: `FusedMoe::forward` routes by itself (the gate's bf16 matmul, softmax in f32,
//! top-k by `arg_sort_last_dim`, renormalised, then one sort of all the tokens' expert ids),
//! then `moe_gemm` for gate and up, SiLU(gate) x up, `moe_gemm` for down with the routing
//! weights and the sum over the top-k: all of that is in the time. Its `is_prefill` flag picks
//! the kernel's WMMA fragments (true: 16x16, two warps across N; false: 8x32) and the scan of
//! the per-expert counts (true: thrust's, which synchronises the stream; false: one block);
//! candle's Qwen3-MoE passes true for a prompt and false for a decode step, so a batch of N
//! tokens may meet either: both are timed and the main column is the faster. The calls run
//! eagerly, as a candle model makes them (a stream synchronisation cannot be captured into a
//! CUDA graph): CUDA events on candle's stream around `CALLS` back-to-back calls (fewer where
//! `CALLS` would take over `ROUND_US`: as many as fill it by one call's time, at least one, as
//! our bench's graphs), `WARMUP` rounds first, median of `REPS` rounds, per call.
//!
//! Data as our bench's: weights uniform in +-2/sqrt(fan-in) and hidden states uniform in
//! [-1, 1), bf16, made on the GPU by candle's own `Tensor::rand`. `POOL` distinct experts are
//! drawn and expert e takes the (e mod `POOL`)-th: `FusedMoe::new` stacks every expert into a
//! copy of its own, so each expert is still read from its own memory. Our bench routes given
//! bf16 logits uniform in [-4, 4); candle computes its logits from its gate, whose weights are
//! drawn uniform in +-sqrt(48 / hidden) so that the logits have that distribution's variance
//! (hidden x 1/3 x 16/hidden = 16/3).
//!
//! Before any timing, each mode's output on `CHECK_TOKENS` tokens is checked against a candle
//! f32 reference (the same logits, softmax top-k renormalised on the host, then a loop over
//! each token's experts with f32 weights); a mode that fails the check, or any error or panic
//! in a call, becomes a `fails: <reason>` cell and the bench goes on.
use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda_backend::cudarc::driver::{CudaEvent, CudaStream};
use candle_core::{DType, Device, Error, Result, Tensor};
use candle_nn::{Activation, VarBuilder};
use candle_transformers::fused_moe::{FusedMoe, MoeCfg};

const TOKENS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 512, 4096];
const CALLS: usize = 20;
/// A timed round's length worth having (benches/moe_layer.rs's `GRAPH_US`): longer rounds only
/// add device time.
const ROUND_US: f64 = 5000.0;
const REPS: usize = 30;
const WARMUP: usize = 5;
/// Distinct experts drawn per layer (expert e is the (e mod POOL)-th).
const POOL: usize = 32;
/// Tokens of the output check (odd: experts get partial tiles).
const CHECK_TOKENS: usize = 37;
/// Relative L2 error allowed against the f32 reference: candle keeps gate-up, the activation
/// and the per-expert outputs in bf16 (each rounding about 2^-9 relative).
const TOLERANCE: f32 = 2e-2;
/// Tokens whose k-th and (k+1)-th routing probabilities are closer than this are left out of
/// the check: bf16 logits tie often, and candle's sort may pick either expert.
const NEAR_TIE: f32 = 1e-6;

struct Model {
    /// What the command line names it by.
    key: &'static str,
    name: &'static str,
    experts: usize,
    top_k: usize,
    hidden: usize,
    inter: usize,
}

/// candle's layer and the tensors it was built from (kept for the reference).
struct Layer {
    moe: FusedMoe,
    /// The gate's weight, [experts, hidden] bf16.
    gate: Tensor,
    /// The pool's experts: gate_proj and up_proj [inter, hidden], down_proj [hidden, inter].
    pool: Vec<[Tensor; 3]>,
}

impl Layer {
    fn expert(&self, e: usize) -> &[Tensor; 3] {
        &self.pool[e % POOL]
    }
}

/// The two `is_prefill` modes of `FusedMoe::forward`, in the table's column order.
const MODES: [bool; 2] = [false, true];

/// bf16 values uniform in +-`scale`, drawn on the GPU.
fn uniform(shape: (usize, usize), scale: f32, device: &Device) -> Result<Tensor> {
    Tensor::rand(-scale, scale, shape, device)?.to_dtype(DType::BF16)
}

/// candle's layer as its Qwen3-MoE builds it (`FusedMoe::new` from a `VarBuilder` holding the
/// checkpoint's per-expert tensors), on weights drawn as the module documentation says.
fn build(m: &Model, device: &Device) -> Result<Layer> {
    let (h, i) = (m.hidden, m.inter);
    device.set_seed(1)?;
    let gate = uniform((m.experts, h), (48.0 / h as f32).sqrt(), device)?;
    let fc1_scale = 2.0 / (h as f32).sqrt();
    let pool = (0..POOL)
        .map(|_| {
            Ok([
                uniform((i, h), fc1_scale, device)?,
                uniform((i, h), fc1_scale, device)?,
                uniform((h, i), 2.0 / (i as f32).sqrt(), device)?,
            ])
        })
        .collect::<Result<Vec<_>>>()?;
    let mut tensors = HashMap::from([("gate.weight".to_string(), gate.clone())]);
    for e in 0..m.experts {
        for (name, w) in ["gate_proj", "up_proj", "down_proj"]
            .iter()
            .zip(&pool[e % POOL])
        {
            tensors.insert(format!("experts.{e}.{name}.weight"), w.clone());
        }
    }
    let cfg = MoeCfg {
        hidden_size: h,
        num_experts: m.experts,
        num_experts_per_tok: m.top_k,
        moe_intermediate_size: i,
        norm_topk_prob: true,
        act: Activation::Silu,
        decoder_sparse_step: None,
    };
    let vb = VarBuilder::from_tensors(tensors, DType::BF16, device);
    let moe = FusedMoe::new(&cfg, vb, DType::BF16)?;
    Ok(Layer { moe, gate, pool })
}

/// Hidden states for `tokens` tokens, [1, tokens, hidden] as `FusedMoe::forward` takes them.
fn hidden_states(m: &Model, tokens: usize, seed: u64, device: &Device) -> Result<Tensor> {
    device.set_seed(seed)?;
    uniform((tokens, m.hidden), 1.0, device)?.unsqueeze(0)
}

/// The layer in f32 from the same bf16 tensors, [tokens, hidden], and which tokens the check
/// leaves out (near ties). The logits are the gate's bf16 matmul, as `FusedMoe` computes them;
/// routing and experts are computed here.
fn reference(m: &Model, layer: &Layer, x: &Tensor) -> Result<(Tensor, Vec<bool>)> {
    let x = x.squeeze(0)?;
    let logits: Vec<Vec<f32>> = x
        .matmul(&layer.gate.t()?)?
        .to_dtype(DType::F32)?
        .to_vec2()?;
    let x = x.to_dtype(DType::F32)?;
    let f32 = |w: &Tensor| w.to_dtype(DType::F32)?.t();
    let mut rows = Vec::with_capacity(logits.len());
    let mut near_ties = Vec::with_capacity(logits.len());
    for (t, logits) in logits.iter().enumerate() {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        let probs: Vec<f32> = exp.iter().map(|p| p / sum).collect();
        let mut order: Vec<usize> = (0..m.experts).collect();
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
        near_ties.push(probs[order[m.top_k - 1]] - probs[order[m.top_k]] < NEAR_TIE);
        let chosen = &order[..m.top_k];
        let total: f32 = chosen.iter().map(|&e| probs[e]).sum();
        let xt = x.narrow(0, t, 1)?;
        let mut y = Tensor::zeros((1, m.hidden), DType::F32, x.device())?;
        for &e in chosen {
            let [gate, up, down] = layer.expert(e);
            let g = xt.matmul(&f32(gate)?)?;
            let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
            let act = (silu * xt.matmul(&f32(up)?)?)?;
            y = (y + (act.matmul(&f32(down)?)? * f64::from(probs[e] / total))?)?;
        }
        rows.push(y);
    }
    Ok((Tensor::cat(&rows, 0)?, near_ties))
}

/// `Err` unless `forward` in this mode matches the reference on `CHECK_TOKENS` tokens; `Ok` is
/// the relative L2 error over the tokens without near ties.
fn check(m: &Model, layer: &Layer, prefill: bool, device: &Device) -> Result<f32> {
    let x = hidden_states(m, CHECK_TOKENS, 7, device)?;
    let (want, near_ties) = reference(m, layer, &x)?;
    let got = layer.moe.forward(&x, prefill)?.squeeze(0)?;
    let got: Vec<Vec<f32>> = got.to_dtype(DType::F32)?.to_vec2()?;
    let want: Vec<Vec<f32>> = want.to_vec2()?;
    let (mut diff, mut norm) = (0f64, 0f64);
    for ((g, w), &tie) in got.iter().zip(&want).zip(&near_ties) {
        if tie {
            continue;
        }
        for (g, w) in g.iter().zip(w) {
            diff += f64::from(g - w).powi(2);
            norm += f64::from(*w).powi(2);
        }
    }
    let err = (diff / norm).sqrt() as f32;
    if err.is_nan() || err >= TOLERANCE {
        candle_core::bail!(
            "output check: relative L2 error {err:.2e} against the f32 reference \
             (tolerance {TOLERANCE:.0e})"
        );
    }
    Ok(err)
}

struct Timer {
    stream: Arc<CudaStream>,
    start: CudaEvent,
    end: CudaEvent,
}

/// Microseconds of `calls` back-to-back calls.
fn time_round(
    timer: &Timer,
    layer: &Layer,
    x: &Tensor,
    prefill: bool,
    calls: usize,
) -> Result<f64> {
    timer.start.record(&timer.stream).map_err(Error::wrap)?;
    for _ in 0..calls {
        layer.moe.forward(x, prefill)?;
    }
    timer.end.record(&timer.stream).map_err(Error::wrap)?;
    timer.end.synchronize().map_err(Error::wrap)?;
    let ms = timer.start.elapsed_ms(&timer.end).map_err(Error::wrap)?;
    Ok(f64::from(ms) * 1000.0)
}

/// Median microseconds per call of rounds of `CALLS` back-to-back calls (fewer where they
/// would take over `ROUND_US`, by one call's time after one warm-up call), `REPS` rounds after
/// `WARMUP`.
fn time_calls(timer: &Timer, layer: &Layer, x: &Tensor, prefill: bool) -> Result<f64> {
    time_round(timer, layer, x, prefill, 1)?;
    let one = time_round(timer, layer, x, prefill, 1)?;
    let calls = ((ROUND_US / one).ceil() as usize).clamp(1, CALLS);
    let mut times = Vec::with_capacity(REPS);
    for rep in 0..WARMUP + REPS {
        let us = time_round(timer, layer, x, prefill, calls)?;
        if rep >= WARMUP {
            times.push(us / calls as f64);
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// A value, or why there is none: a table cell's `fails: ` text.
type Outcome<T> = std::result::Result<T, String>;

/// `f`'s value, or why not: its error's first line or its panic's message, as one table cell
/// (no `|`).
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Outcome<T> {
    let why = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".into());
            format!("panic: {msg}")
        }
    };
    Err(why.lines().next().unwrap_or("").replace('|', "/"))
}

/// Whether `MOE_LAYER_TOKENS` (a comma-separated list; unset: every size) names this size.
fn rows_wanted(tokens: usize) -> bool {
    std::env::var("MOE_LAYER_TOKENS").map_or(true, |list| {
        list.split(',').any(|t| t.trim().parse() == Ok(tokens))
    })
}

fn bench_model(timer: &Timer, device: &Device, m: &Model) {
    let (e, k, h, i) = (m.experts, m.top_k, m.hidden, m.inter);
    println!(
        "\n### {} ({e} experts, top-{k}, hidden {h}, intermediate {i})\n",
        m.name
    );
    let built = guarded(|| build(m, device));
    // Per mode: timed, or the reason every row of that mode fails.
    let checked: Vec<Outcome<()>> = MODES
        .iter()
        .map(|&prefill| {
            let layer = built
                .as_ref()
                .map_err(|why| format!("building the layer: {why}"))?;
            let err = guarded(|| check(m, layer, prefill, device))?;
            eprintln!(
                "{}: is_prefill = {prefill}: relative L2 error {err:.2e} against the f32 \
                 reference on {CHECK_TOKENS} tokens (tolerance {TOLERANCE:.0e})",
                m.name
            );
            Ok(())
        })
        .collect();
    println!(
        "| tokens | candle fused MoE (us) | is_prefill = false (us) | is_prefill = true (us) |"
    );
    println!("|---:|---:|---:|---:|");
    for (n, &t) in TOKENS.iter().enumerate() {
        if !rows_wanted(t) {
            continue;
        }
        let times: Vec<Outcome<f64>> = MODES
            .iter()
            .zip(&checked)
            .map(|(&prefill, checked)| {
                checked.clone()?;
                let layer = built.as_ref().map_err(String::clone)?;
                let us = guarded(|| {
                    let x = hidden_states(m, t, 20 + n as u64, device)?;
                    time_calls(timer, layer, &x, prefill)
                })?;
                eprintln!("{}: {t} tokens, is_prefill = {prefill}: {us:.1} us", m.name);
                Ok(us)
            })
            .collect();
        let cell = |r: &Outcome<f64>| match r {
            Ok(us) => format!("{us:.1}"),
            Err(why) => format!("fails: {why}"),
        };
        let best = match times.iter().flatten().copied().reduce(f64::min) {
            Some(us) => format!("{us:.1}"),
            None => cell(&times[0]),
        };
        println!(
            "| {t} | {best} | {} | {} |",
            cell(&times[0]),
            cell(&times[1])
        );
    }
}

fn main() {
    let models = [
        Model {
            key: "qwen3",
            name: "Qwen3-30B-A3B layer",
            experts: 128,
            top_k: 8,
            hidden: 2048,
            inter: 768,
        },
        Model {
            key: "deepseek",
            name: "DeepSeek-V3-sized layer, bf16",
            experts: 256,
            top_k: 8,
            hidden: 7168,
            inter: 2048,
        },
    ];
    // `cargo bench` passes `--bench`; any other argument names the layers to run.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !models.iter().any(|m| m.key == w.as_str()))
    {
        eprintln!("candle_fused_moe bench: no layer {unknown:?} (qwen3, deepseek)");
        std::process::exit(2);
    }
    let device = match Device::new_cuda(0) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("candle_fused_moe bench: needs a CUDA GPU ({e})");
            std::process::exit(1);
        }
    };
    let stream = device.as_cuda_device().unwrap().cuda_stream();
    let context = stream.context().clone();
    let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
    let timer = Timer {
        start: context.new_event(timing).unwrap(),
        end: context.new_event(timing).unwrap(),
        stream,
    };
    println!("## candle's fused MoE (`candle_transformers::fused_moe::FusedMoe`)\n");
    println!(
        "GPU: {}; candle 0.11, `FusedMoe::forward` (its own routing included; GEMMs by \
         `moe_gemm_wmma`), eager: CUDA events around {CALLS} back-to-back calls (fewer where \
         {CALLS} would take over {ROUND_US} us), {WARMUP} warm-up rounds, median of {REPS}, per \
         call (no CUDA graph). Main column: the faster \
         of `is_prefill` false and true. Each mode checked first against a candle f32 layer \
         on {CHECK_TOKENS} tokens (relative L2 error < {TOLERANCE:.0e}).",
        context.name().unwrap()
    );
    for m in models
        .iter()
        .filter(|m| wanted.is_empty() || wanted.iter().any(|w| w == m.key))
    {
        bench_model(&timer, &device, m);
    }
}
