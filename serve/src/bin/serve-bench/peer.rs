//! The Rust peer: candle-transformers' `qwen3_moe::ModelForCausalLM` (its fused MoE kernel on
//! CUDA), with the weights of our model (the same `RandomSource`, placed the same way).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3_moe::{Config, ModelForCausalLM};
use flashinfer_rs_serve::model::device::cuda_device;
use flashinfer_rs_serve::model::place_tensor;
use flashinfer_rs_serve::model::random::RandomSource;
use flashinfer_rs_serve::model::weights::{Dequantized, TensorSource};
use flashinfer_rs_serve::model::Quantization;
use flashinfer_rs_serve::model::Qwen3MoeConfig;
use serde_json::json;

use super::{median, prompt, Args, Report};

/// The peer's most (token, expert) pairs per forward call: its fused MoE fails beyond.
const PEER_MAX_PAIRS: usize = 8192;

/// Our random weights as a candle `VarBuilder` backend: fp8 experts (`--fp8-experts`) as
/// their values, code times block scale, which is what a float model of that checkpoint holds.
struct Weights(RandomSource, Quantization);

impl SimpleBackend for Weights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{name}: shape {:?}, the peer asks {s:?}", t.shape());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let host = Dequantized::new(&self.0, self.1)
            .get(name)
            .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?;
        place_tensor(&host, dev, dtype).map_err(|e| candle_core::Error::Msg(format!("{e:#}")))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// candle-transformers' config for ours.
fn peer_config(cfg: &Qwen3MoeConfig) -> Result<Config> {
    ensure!(
        cfg.mlp_only_layers.is_empty(),
        "the peer has no mlp_only_layers"
    );
    let v = json!({
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads, "head_dim": cfg.head_dim(),
        "attention_bias": cfg.attention_bias, "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings, "sliding_window": null,
        "max_window_layers": cfg.num_hidden_layers, "tie_word_embeddings": cfg.tie_word_embeddings,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.rms_norm_eps,
        "use_sliding_window": false, "hidden_act": "silu",
        "decoder_sparse_step": cfg.decoder_sparse_step,
        "moe_intermediate_size": cfg.moe_intermediate_size,
        "num_experts_per_tok": cfg.num_experts_per_tok, "num_experts": cfg.num_experts,
        "norm_topk_prob": cfg.norm_topk_prob,
    });
    Ok(serde_json::from_value(v)?)
}

/// Greedy next tokens of `logits` `[batch, 1, vocab]`, on the host (as a candle server
/// samples).
fn argmax(logits: &Tensor) -> Result<Vec<u32>> {
    let rows = logits.squeeze(1)?.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|r| {
            (0..r.len())
                .max_by(|&i, &j| r[i].total_cmp(&r[j]))
                .unwrap_or(0) as u32
        })
        .collect())
}

/// A call that may fail or panic (a kernel beyond its limits), as a `Result`.
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(anyhow!("panicked: {msg}"))
        }
    }
}

/// `c` sequences in lockstep: the prompt in chunks within the pair limit, then `g - 1` decode
/// steps of `[c, 1]`. Returns the prefill (to the first tokens) and decode times and the
/// chunks.
fn lockstep(
    m: &mut ModelForCausalLM,
    dev: &Device,
    (c, p, g, top_k, salt): (usize, usize, usize, usize, usize),
) -> Result<(Duration, Duration, usize)> {
    m.clear_kv_cache();
    let ids: Vec<u32> = (0..c).flat_map(|r| prompt(r, p, salt)).collect();
    let input = Tensor::from_vec(ids, (c, p), dev)?;
    let chunk = (PEER_MAX_PAIRS / (c * top_k)).clamp(1, p);
    dev.synchronize()?;
    let t0 = Instant::now();
    let mut logits = None;
    let mut chunks = 0;
    for off in (0..p).step_by(chunk) {
        let len = chunk.min(p - off);
        logits = Some(m.forward(&input.narrow(1, off, len)?.contiguous()?, off)?);
        chunks += 1;
    }
    let mut next = argmax(&logits.context("an empty prompt")?)?;
    let t1 = Instant::now();
    for step in 1..g {
        let x = Tensor::from_vec(next, (c, 1), dev)?;
        next = argmax(&m.forward(&x, p + step - 1)?)?;
    }
    Ok((t1 - t0, t1.elapsed(), chunks))
}

/// Loads the peer, measures it.
pub(super) fn run(args: &Args, cfg: &Qwen3MoeConfig, report: &mut Report) -> Result<()> {
    let pcfg = peer_config(cfg)?;
    let dev = cuda_device()?;
    let started = Instant::now();
    let vb = VarBuilder::from_backend(
        Box::new(Weights(
            RandomSource::new(cfg, args.seed),
            cfg.quantization()?,
        )),
        DType::BF16,
        dev.clone(),
    );
    let mut m = ModelForCausalLM::new(&pcfg, vb).context("loading the peer")?;
    let load_s = started.elapsed().as_secs_f64();
    eprintln!("peer: loaded in {load_s:.1} s");
    report.info.insert(
        "peer".into(),
        json!({"model": "candle-transformers 0.11 qwen3_moe::ModelForCausalLM (fused MoE)",
               "dtype": "BF16", "load_s": load_s,
               "batching": "one [c, len] batch in lockstep (one KV cache per model)",
               "prefill_chunk_rule": "chunks of 8192 / (c * top_k) positions"}),
    );
    let top_k = cfg.num_experts_per_tok;
    let (p, g) = (args.prompt_len, args.gen_len);
    guarded(|| lockstep(&mut m, &dev, (1, 16, 2, top_k, 0)))?; // warm-up
    let mut salt = 1;
    for &c in &args.concurrency {
        let mut runs = Vec::new();
        let mut outcome = Ok(());
        for _ in 0..args.reps {
            salt += 1;
            match guarded(|| lockstep(&mut m, &dev, (c, p, g, top_k, salt))) {
                Ok(r) => runs.push(r),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let row = report.push("peer", format!("decode, {c} concurrent"), "n/a");
        row.unit = "tokens/s";
        match outcome {
            Err(e) => row.note = format!("failed: {e:#}"),
            Ok(()) => {
                let chunks = runs[0].2;
                let decode = median(runs.iter().map(|r| r.1).collect());
                let prefill = median(runs.iter().map(|r| r.0).collect());
                row.value = Some((c * (g - 1)) as f64 / decode.as_secs_f64());
                row.note = format!(
                    "lockstep batch [{c}, 1]; prefill [{c}, {p}] in {chunks} chunk(s): {:.1} ms",
                    prefill.as_secs_f64() * 1e3
                );
            }
        }
        eprintln!("peer: {} {}", row.measure, row.note);
    }
    for &n in &args.peer_ttft {
        let row = report.push("peer", format!("TTFT, {n}-token prompt"), "n/a");
        row.unit = "ms";
        let pairs = n * top_k;
        match guarded(|| {
            let mut times = Vec::new();
            for _ in 0..args.reps {
                m.clear_kv_cache();
                let ids = Tensor::from_vec(prompt(0, n, 99), (1, n), &dev)?;
                dev.synchronize()?;
                let t = Instant::now();
                argmax(&m.forward(&ids, 0)?)?;
                times.push(t.elapsed());
            }
            Ok(median(times))
        }) {
            Ok(t) => {
                row.value = Some(t.as_secs_f64() * 1e3);
                row.note = format!("one [1, {n}] forward ({pairs} token-expert pairs)");
            }
            Err(e) => row.note = format!("failed ({pairs} token-expert pairs): {e:#}"),
        }
        eprintln!("peer: {} {}", row.measure, row.note);
    }
    Ok(())
}
