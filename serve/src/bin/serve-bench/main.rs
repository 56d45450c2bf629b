//! `serve-bench`: the reference server's engine on the GPU, in process (no HTTP), with random
//! weights for a config, against the Rust peer (candle-transformers' `qwen3_moe` with the same
//! weights).
//!
//! ```sh
//! # the build (on a CUDA build machine; scripts/gpu-pack-serve.sh packs it as bin/serve-bench):
//! source scripts/candle-env.sh   # with root=$PWD, on a GPU-less build machine
//! cargo build --release -p flashinfer-rs-serve --features cuda --bin serve-bench
//! # the whole benchmark: ours (capture on and off, the profile), then the peer, one process
//! serve-bench --config serve/bench/qwen3-30b-a3b.json --json bench.json
//! # a quick run: 4 layers
//! serve-bench --config serve/bench/qwen3-30b-a3b.json --layers 4
//! # one model per process (e.g. to rerun one side): --only ours | --only peer
//! serve-bench --config serve/bench/qwen3-30b-a3b.json --only peer
//! # the CPU smoke run of the same code (no GPU; a tiny config)
//! cargo run -p flashinfer-rs-serve --bin serve-bench -- --config tiny.json --device cpu \
//!     --concurrency 1,2 --gen-len 4 --ttft-len 16
//! ```
//!
//! What is measured (printed as a Markdown table, then one JSON line):
//! - **ours**: the engine (`Engine`: scheduler, sampling, capture assembly) over the model on
//!   CUDA device 0 (bf16 dense parts, MoE layers through flashinfer-rs's Hopper layer).
//!   Decode tokens/s at each concurrency `c`: `c` greedy requests of `--prompt-len` tokens,
//!   submitted at once; `E(c, G)` the wall time until all of them finished `G = --gen-len`
//!   tokens, `E(c, 1)` the same with one token (the prefill and the first token); decode
//!   tokens/s = `c (G - 1) / (E(c, G) - E(c, 1))` (medians of `--reps` runs). Time to first
//!   token: one request of `--ttft-len` tokens, `max_tokens` 1, submit to its answer. Each
//!   with capture on (every request asks for its routed experts: device capture, readback,
//!   assembly, export) and off (no request asks: the Hopper layer writes no capture store).
//! - **the profile**: a separate pass with profiling on, where the model fences the device
//!   (`synchronize`) after every phase of a step (embedding, attention, MoE layers, norms and
//!   residuals, capture readback, lm_head); the fences cost time, so these numbers are per
//!   phase shares, not the throughput above. Host = the decode window's wall time minus the
//!   forward passes' (scheduler, logits to host, sampling, capture assembly).
//! - **peer**: candle-transformers' `qwen3_moe::ModelForCausalLM` (its fused MoE kernel on
//!   CUDA, bf16, its own attention and KV cache) built from the same per-tensor random weights
//!   (`RandomSource`, placed through the same `place_tensor`: equal bf16 weights; its router
//!   is bf16, ours f32). It runs one batch `[c, len]` of equal-length sequences sharing one
//!   offset (its KV cache is per model): `c` requests in lockstep, what a candle server with
//!   one model instance does. Its fused MoE fails beyond 8192 (token, expert) pairs, so its
//!   prefill goes in chunks of `8192 / (c * top_k)` positions; a single-chunk TTFT beyond the
//!   limit is reported as the error it gives.
//!
//! The two models do not fit together on an 80 GB GPU: ours is dropped before the peer loads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use flashinfer_rs_serve::engine::{
    CaptureOptions, Engine, EngineConfig, Event, GenRequest, SamplingParams,
};
use flashinfer_rs_serve::model::device::{DTypeArg, DeviceKind, Placement};
use flashinfer_rs_serve::model::moe::{BackendKind, MoeWeights, GPU_MAX_STEP_TOKENS};
use flashinfer_rs_serve::model::profile::{Phase, PhaseTimes, Profiler};
use flashinfer_rs_serve::model::random::RandomSource;
use flashinfer_rs_serve::model::{Model, Qwen3MoeConfig};
use flashinfer_rs_serve::text::TextModel;
use serde_json::{json, Value};

/// The benchmark of the reference server (ours) and candle-transformers' qwen3_moe (peer).
#[derive(Debug, Clone, Parser)]
#[command(name = "serve-bench")]
struct Args {
    /// The model's config.json (random weights are made for it).
    #[arg(long, default_value = "serve/bench/qwen3-30b-a3b.json")]
    config: PathBuf,
    /// Cut the model to its first N decoder layers (quick runs).
    #[arg(long)]
    layers: Option<usize>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where our model runs (cuda by default in a `cuda` build).
    #[arg(long, value_enum)]
    device: Option<DeviceKind>,
    /// Our dense parts' dtype (bf16 on cuda by default).
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// Our MoE backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// The model as a fine-grained fp8 checkpoint (128x128 blocks): its experts' random
    /// weights quantised to e4m3 with block scales (the peer is given their values, code
    /// times scale), as Qwen3-30B-A3B-FP8 ships them.
    #[arg(long)]
    fp8_experts: bool,
    /// How our model runs fp8 experts (with `--fp8-experts`): auto (fp8 on the Hopper
    /// backend), dequantized, fp8.
    #[arg(long, value_enum, default_value_t = MoeWeights::Auto)]
    moe_weights: MoeWeights,
    /// Concurrent requests of the decode measurements.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    concurrency: Vec<usize>,
    /// Prompt tokens of each decode request.
    #[arg(long, default_value_t = 32)]
    prompt_len: usize,
    /// Tokens each decode request generates (greedy).
    #[arg(long, default_value_t = 128)]
    gen_len: usize,
    /// Prompt tokens of our time-to-first-token measurement.
    #[arg(long, default_value_t = 1024)]
    ttft_len: usize,
    /// Prompt tokens of the peer's time-to-first-token measurements.
    #[arg(long, value_delimiter = ',', default_value = "1024,2048")]
    peer_ttft: Vec<usize>,
    /// Runs per measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Our engine's tokens per step.
    #[arg(long, default_value_t = 4096)]
    max_batch_tokens: usize,
    /// Tokens each request generates in the profiling pass.
    #[arg(long, default_value_t = 32)]
    profile_gen_len: usize,
    /// Skip the profiling pass.
    #[arg(long)]
    no_profile: bool,
    /// Our model on the batched path on the CPU too (`--device cpu`): a smoke run of the GPU
    /// path's code on a machine without one.
    #[arg(long)]
    batched: bool,
    /// Run only one side: ours or peer (default: ours, then the peer in a `cuda` build).
    #[arg(long, value_enum)]
    only: Option<Side>,
    /// Also write the JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Side {
    Ours,
    Peer,
}

/// One measured number.
#[derive(Debug, Clone)]
struct Row {
    model: &'static str,
    measure: String,
    capture: &'static str,
    value: Option<f64>,
    unit: &'static str,
    note: String,
}

#[derive(Debug, Default)]
struct Report {
    rows: Vec<Row>,
    profile: Vec<Value>,
    info: serde_json::Map<String, Value>,
}

impl Report {
    fn push(&mut self, model: &'static str, measure: String, capture: &'static str) -> &mut Row {
        self.rows.push(Row {
            model,
            measure,
            capture,
            value: None,
            unit: "",
            note: String::new(),
        });
        self.rows
            .last_mut()
            .unwrap_or_else(|| unreachable!("just pushed"))
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    ensure!(args.gen_len >= 2, "--gen-len must be at least 2");
    ensure!(args.reps >= 1, "--reps must be at least 1");
    let mut cfg = Qwen3MoeConfig::from_file(&args.config)?;
    if let Some(n) = args.layers {
        ensure!(n >= 1 && n <= cfg.num_hidden_layers, "--layers {n}");
        cfg.num_hidden_layers = n;
        cfg.check()?;
    }
    if args.fp8_experts {
        cfg.quantization_config = Some(json!({"quant_method": "fp8", "fmt": "e4m3",
            "activation_scheme": "dynamic", "weight_block_size": [128, 128]}));
        cfg.check()?;
    }
    let mut report = Report::default();
    report.info.insert("config".into(), json!(args.config));
    report
        .info
        .insert("layers".into(), json!(cfg.num_hidden_layers));
    report.info.insert("seed".into(), json!(args.seed));
    report
        .info
        .insert("fp8_experts".into(), json!(args.fp8_experts));
    report
        .info
        .insert("prompt_len".into(), json!(args.prompt_len));
    report.info.insert("gen_len".into(), json!(args.gen_len));
    if args.only != Some(Side::Peer) {
        ours(&args, &cfg, &mut report)?;
    }
    if args.only != Some(Side::Ours) {
        peer_side(&args, &cfg, &mut report)?;
    }
    print_report(&args, &report)
}

#[cfg(feature = "cuda")]
fn peer_side(args: &Args, cfg: &Qwen3MoeConfig, report: &mut Report) -> Result<()> {
    peer::run(args, cfg, report)
}

#[cfg(not(feature = "cuda"))]
fn peer_side(args: &Args, cfg: &Qwen3MoeConfig, report: &mut Report) -> Result<()> {
    let _ = cfg;
    if args.only == Some(Side::Peer) {
        anyhow::bail!("the peer (candle-transformers' fused MoE) needs a `--features cuda` build");
    }
    report.info.insert(
        "peer".into(),
        json!("skipped: candle-transformers' fused MoE needs a `--features cuda` build"),
    );
    Ok(())
}

/// Distinct prompts: byte tokens (valid in every vocabulary the server accepts).
fn prompt(request: usize, len: usize, salt: usize) -> Vec<u32> {
    (0..len)
        .map(|j| ((request * 7919 + j * 31 + salt * 101 + 17) % 256) as u32)
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Our engine over the model, and what drives it.
struct Ours {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
    profiler: Arc<Profiler>,
    salt: std::sync::atomic::AtomicUsize,
}

impl Ours {
    /// `c` greedy requests of `len` prompt tokens and `max_tokens`, submitted at once; the wall
    /// time until every one has finished.
    fn batch(&self, c: usize, len: usize, max_tokens: usize, capture: bool) -> Result<Duration> {
        let salt = self.salt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let reqs: Vec<GenRequest> = (0..c)
            .map(|r| GenRequest {
                prompt: prompt(r, len, salt),
                max_tokens,
                sampling: SamplingParams {
                    temperature: 0.0,
                    top_p: 1.0,
                    seed: 0,
                    top_k: 0,
                    min_p: 0.0,
                },
                stop: Vec::new(),
                stop_token_ids: Vec::new(),
                ignore_eos: false,
                stream: false,
                capture: capture.then_some(CaptureOptions {
                    start: 0,
                    weights: false,
                }),
                logprobs: None,
            })
            .collect();
        let engine = self.engine.clone();
        self.rt.block_on(async move {
            let start = Instant::now();
            let mut tasks = Vec::with_capacity(c);
            // All at once: the scheduler plans its first step with every one of them.
            let streams = engine
                .submit_many(reqs)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            for mut stream in streams {
                tasks.push(tokio::spawn(async move {
                    match stream.next().await {
                        Some(Event::Finished {
                            completion_tokens,
                            routed,
                            ..
                        }) => Ok((completion_tokens, routed.is_some())),
                        Some(Event::Failed(e)) => Err(anyhow::anyhow!("request failed: {e}")),
                        other => Err(anyhow::anyhow!("unexpected event {other:?}")),
                    }
                }));
            }
            for t in tasks {
                let (tokens, routed) = t.await??;
                ensure!(tokens == max_tokens, "{tokens} tokens of {max_tokens}");
                ensure!(routed == capture, "routed experts returned: {routed}");
            }
            Ok(start.elapsed())
        })
    }

    fn median_batch(
        &self,
        c: usize,
        len: usize,
        n: usize,
        capture: bool,
        reps: usize,
    ) -> Result<Duration> {
        let runs = (0..reps)
            .map(|_| self.batch(c, len, n, capture))
            .collect::<Result<Vec<_>>>()?;
        Ok(median(runs))
    }
}

fn capture_name(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// Loads our model on the device, measures it, drops it.
fn ours(args: &Args, cfg: &Qwen3MoeConfig, report: &mut Report) -> Result<()> {
    let default_device = if cfg!(feature = "cuda") {
        DeviceKind::Cuda
    } else {
        DeviceKind::Cpu
    };
    let mut place = Placement::open(args.device.unwrap_or(default_device), args.dtype)?;
    place.batched |= args.batched;
    place.moe_weights = args.moe_weights;
    let started = Instant::now();
    let model = Model::load_on(
        cfg,
        &RandomSource::new(cfg, args.seed),
        args.backend,
        &place,
    )
    .context("loading our model")?;
    let load_s = started.elapsed().as_secs_f64();
    report.info.insert(
        "ours".into(),
        json!({"device": format!("{:?}", place.device.location()), "dtype": format!("{:?}", place.dtype),
               "moe_backend": model.moe().name(), "moe_weights": format!("{:?}", place.moe_weights),
               "load_s": load_s}),
    );
    eprintln!(
        "ours: loaded in {load_s:.1} s ({:?}, {:?}, MoE backend {})",
        place.device.location(),
        place.dtype,
        model.moe().name()
    );
    if model.moe().name() != "cpu" {
        ensure!(
            args.max_batch_tokens <= GPU_MAX_STEP_TOKENS,
            "--max-batch-tokens over {GPU_MAX_STEP_TOKENS}"
        );
    }
    let longest = (args.prompt_len + args.gen_len).max(args.ttft_len + 1) + 8;
    let max_c = args.concurrency.iter().copied().max().unwrap_or(1);
    let profiler = model.profiler().clone();
    let text = Arc::new(TextModel::byte_level(&[])?.with_eos_ids(Vec::new()));
    let engine = Engine::start(
        model,
        text,
        EngineConfig {
            max_batch_tokens: args.max_batch_tokens,
            max_running: max_c,
            max_queue: max_c.max(256),
            max_model_len: longest,
            capture: true,
            kv_positions: None,
        },
    )?;
    let o = Ours {
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        engine: Arc::new(engine),
        profiler,
        salt: Default::default(),
    };
    measure_ours(args, &o, report)?;
    if !args.no_profile {
        for &c in &args.concurrency {
            for capture in [false, true] {
                profile_ours(args, &o, c, capture, report)?;
            }
        }
    }
    o.engine.shutdown();
    Ok(())
}

fn measure_ours(args: &Args, o: &Ours, report: &mut Report) -> Result<()> {
    let (p, g) = (args.prompt_len, args.gen_len);
    // Warm-up: kernels, cuBLAS handles, the allocator's pools.
    o.batch(1, args.ttft_len.min(64), 2, true)?;
    for &c in &args.concurrency {
        o.batch(c, p, 4, true)?;
        for capture in [false, true] {
            let e1 = o.median_batch(c, p, 1, capture, args.reps)?;
            let eg = o.median_batch(c, p, g, capture, args.reps)?;
            let decode = eg.saturating_sub(e1).as_secs_f64();
            let row = report.push(
                "ours",
                format!("decode, {c} concurrent"),
                capture_name(capture),
            );
            row.value = (decode > 0.0).then(|| (c * (g - 1)) as f64 / decode);
            row.unit = "tokens/s";
            row.note = format!(
                "E(c,{g}) {:.1} ms, E(c,1) {:.1} ms; end to end {:.1} tokens/s",
                eg.as_secs_f64() * 1e3,
                e1.as_secs_f64() * 1e3,
                (c * g) as f64 / eg.as_secs_f64()
            );
            eprintln!("ours: {} {}", row.measure, row.note);
        }
    }
    for capture in [false, true] {
        let t = o.median_batch(1, args.ttft_len, 1, capture, args.reps)?;
        let row = report.push(
            "ours",
            format!("TTFT, {}-token prompt", args.ttft_len),
            capture_name(capture),
        );
        row.value = Some(t.as_secs_f64() * 1e3);
        row.unit = "ms";
        row.note = "one request, max_tokens 1, submit to answer".into();
    }
    Ok(())
}

/// The profiling pass of `c` requests: the decode steps' phases (a run of
/// `--profile-gen-len` tokens minus a run of one) and the host gaps between them.
fn profile_ours(args: &Args, o: &Ours, c: usize, capture: bool, report: &mut Report) -> Result<()> {
    let (p, g) = (args.prompt_len, args.profile_gen_len.max(2));
    o.profiler.set_enabled(true);
    o.profiler.take();
    let measured = (|| -> Result<_> {
        o.batch(c, p, 1, capture)?;
        let p1 = o.profiler.take();
        o.batch(c, p, g, capture)?;
        Ok(minus(&o.profiler.take(), &p1))
    })();
    o.profiler.set_enabled(false);
    let d = measured?;
    ensure!(
        d.steps > 0 && d.host_gaps > 0,
        "the profiling pass saw no decode step"
    );
    let per = |t: Duration, n: u64| t.as_secs_f64() * 1e3 / n as f64;
    let host_ms = per(d.host, d.host_gaps);
    let step_ms = per(d.total(), d.steps) + host_ms;
    let mut phases = serde_json::Map::new();
    for ph in Phase::ALL {
        phases.insert(format!("{}_ms", ph.name()), json!(per(d.get(ph), d.steps)));
    }
    phases.insert("host_ms".into(), json!(host_ms));
    report.profile.push(json!({
        "concurrency": c, "capture": capture, "decode_steps": d.steps,
        "step_ms": step_ms, "per_step": phases,
    }));
    let share = |ms: f64| 100.0 * ms / step_ms.max(1e-12);
    let phase = |ph| share(per(d.get(ph), d.steps));
    let rest = [Phase::Embed, Phase::Norms, Phase::Head, Phase::DenseMlp]
        .into_iter()
        .map(phase)
        .sum::<f64>();
    let row = report.push(
        "ours (profiled)",
        format!("decode step, {c} concurrent"),
        capture_name(capture),
    );
    row.value = Some(step_ms);
    row.unit = "ms/step";
    row.note = format!(
        "MoE {:.0}%, attention {:.0}%, capture readback {:.0}%, rest of forward {:.0}%, \
         host {:.0}% ({} steps; device fenced after each phase)",
        phase(Phase::Moe),
        phase(Phase::Attention),
        phase(Phase::Capture),
        rest,
        share(host_ms),
        d.steps
    );
    Ok(())
}

/// `a - b`, phase by phase.
fn minus(a: &PhaseTimes, b: &PhaseTimes) -> PhaseTimes {
    PhaseTimes {
        steps: a.steps.saturating_sub(b.steps),
        tokens: a.tokens.saturating_sub(b.tokens),
        embed: a.embed.saturating_sub(b.embed),
        attention: a.attention.saturating_sub(b.attention),
        moe: a.moe.saturating_sub(b.moe),
        dense_mlp: a.dense_mlp.saturating_sub(b.dense_mlp),
        norms: a.norms.saturating_sub(b.norms),
        capture: a.capture.saturating_sub(b.capture),
        head: a.head.saturating_sub(b.head),
        host: a.host.saturating_sub(b.host),
        host_gaps: a.host_gaps.saturating_sub(b.host_gaps),
    }
}

fn print_report(args: &Args, report: &Report) -> Result<()> {
    println!("| model | measure | capture | value | unit | notes |");
    println!("|---|---|---|---:|---|---|");
    for r in &report.rows {
        let v = r.value.map_or("—".into(), |v| format!("{v:.1}"));
        println!(
            "| {} | {} | {} | {v} | {} | {} |",
            r.model, r.measure, r.capture, r.unit, r.note
        );
    }
    let rows: Vec<Value> = report
        .rows
        .iter()
        .map(|r| {
            json!({"model": r.model, "measure": r.measure, "capture": r.capture,
                   "value": r.value, "unit": r.unit, "note": r.note})
        })
        .collect();
    let line = json!({"info": report.info, "results": rows, "profile": report.profile}).to_string();
    println!("{line}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{line}\n")).with_context(|| format!("{}", path.display()))?;
    }
    Ok(())
}

#[cfg(feature = "cuda")]
mod peer;
