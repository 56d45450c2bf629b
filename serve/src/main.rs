//! `flashinfer-serve`: the reference server. `--demo` starts it on a free port, sends one
//! completion with routed experts over HTTP, prints the answer and the decoded experts, and
//! stops.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use clap::Parser;
use flashinfer_rs_serve::http::listen::Timeouts;
use flashinfer_rs_serve::model::device::{DTypeArg, DeviceKind};
use flashinfer_rs_serve::model::moe::{BackendKind, MoeWeights};
use flashinfer_rs_serve::server::{self, ModelSource, ServerOptions};

/// The reference server: a Qwen3-MoE model served OpenAI-style, returning routed experts.
#[derive(Debug, Parser)]
#[command(name = "flashinfer-serve", version)]
struct Args {
    /// A Hugging Face Qwen3-MoE checkpoint directory.
    #[arg(long, conflicts_with = "random_config")]
    model: Option<PathBuf>,
    /// A config.json to build random weights for (no checkpoint).
    #[arg(long)]
    random_config: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// MoE backend: cpu (flashinfer-rs's CPU reference), hopper (the CUTLASS MoE layer; GPU
    /// builds), auto.
    #[arg(long, value_enum, default_value_t = BackendKind::Auto)]
    backend: BackendKind,
    /// Where the model runs: cpu (f32, row by row) or cuda (CUDA device 0, batched; builds
    /// with `--features cuda`).
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// The dense parts' dtype: f32 or bf16 (default: f32 on cpu, the only one there; bf16 on
    /// cuda).
    #[arg(long, value_enum)]
    dtype: Option<DTypeArg>,
    /// How a fine-grained fp8 checkpoint's experts run: auto (fp8 on the Hopper backend where
    /// the layer takes the checkpoint's 128x128 blocks, else dequantized), dequantized (code
    /// times block scale, then bf16 / f32 experts: transformers' numbers), fp8 (the block-scale
    /// layer, activations quantised per 128 values: vLLM's numbers; half the experts' memory).
    #[arg(long, value_enum, default_value_t = MoeWeights::Auto)]
    moe_weights: MoeWeights,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0: any free port).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Return routed experts to requests that ask (`"return_routed_experts": true`).
    #[arg(long)]
    enable_return_routed_experts: bool,
    /// Tokens per step (prefill chunks + decode tokens).
    #[arg(long, default_value_t = 2048)]
    max_batch_tokens: usize,
    /// Requests running at once.
    #[arg(long, default_value_t = 64)]
    max_running: usize,
    /// Requests waiting for admission; beyond it, 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Longest sequence (prompt + generated); the config's max_position_embeddings by default.
    #[arg(long)]
    max_model_len: Option<usize>,
    /// The model name requests must use; the directory's name by default.
    #[arg(long)]
    served_model_name: Option<String>,
    /// Seconds a client may take to send a request's head (and a connection may stay idle).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    head_timeout: u64,
    /// Seconds a client may take to send a request's body (408 past it).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    body_timeout: u64,
    /// GiB the running requests' KV caches may hold together; each request reserves its
    /// prompt plus max_tokens when admitted (the queue waits for room). Default: on cuda 80%
    /// of the memory free once the model is loaded (at least 2 GiB left), on cpu no bound.
    #[arg(long)]
    kv_cache_memory: Option<f64>,
    /// Start, send one request with routed experts over HTTP, print, stop.
    #[arg(long)]
    demo: bool,
}

impl Args {
    fn options(&self) -> Result<ServerOptions> {
        let source = match (&self.model, &self.random_config) {
            (Some(dir), None) => ModelSource::Dir(dir.clone()),
            (None, Some(config)) => ModelSource::Random {
                config: config.clone(),
                seed: self.seed,
            },
            _ => bail!("give --model DIR or --random-config config.json"),
        };
        let port = if self.demo { 0 } else { self.port };
        let addr: SocketAddr = format!("{}:{port}", self.host)
            .parse()
            .with_context(|| format!("--host {}", self.host))?;
        let mut o = ServerOptions::new(source);
        o.backend = self.backend;
        o.device = self.device;
        o.dtype = self.dtype;
        o.moe_weights = self.moe_weights;
        o.addr = addr;
        o.capture = self.enable_return_routed_experts || self.demo;
        o.max_batch_tokens = self.max_batch_tokens;
        o.max_running = self.max_running;
        o.max_queue = self.max_queue;
        o.max_model_len = self.max_model_len;
        o.model_name = self.served_model_name.clone();
        o.kv_cache_memory = match self.kv_cache_memory {
            None => None,
            Some(g) if g.is_finite() && g > 0.0 && g < 1e6 => {
                Some((g * (1u64 << 30) as f64) as usize)
            }
            Some(g) => bail!("--kv-cache-memory must be a positive number of GiB, got {g}"),
        };
        o.timeouts = Timeouts {
            head: Duration::from_secs(self.head_timeout),
            body: Duration::from_secs(self.body_timeout),
        };
        Ok(o)
    }
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let opts = args.options()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let server = server::start(opts).await?;
        if args.demo {
            let addr = server.addr;
            let name = server.model_name.clone();
            let out = tokio::task::spawn_blocking(move || demo(addr, &name)).await?;
            server.shutdown().await?;
            return out;
        }
        println!(
            "flashinfer-serve: http://{} (model {})",
            server.addr, server.model_name
        );
        server.run_until(signal()).await
    })
}

/// The demo client: a plain HTTP/1.1 request, as any client would send it.
fn demo(addr: SocketAddr, model: &str) -> Result<()> {
    let body = serde_json::json!({
        "model": model, "prompt": "The capital of France is", "max_tokens": 8,
        "temperature": 0, "return_routed_experts": true,
    })
    .to_string();
    println!("POST /v1/completions {body}");
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, json) = raw.split_once("\r\n\r\n").context("no HTTP body")?;
    println!("{}", head.lines().next().unwrap_or_default());
    let v: serde_json::Value = serde_json::from_str(json).context("the answer is not JSON")?;
    let choice = &v["choices"][0];
    println!("text: {:?}", choice["text"].as_str().unwrap_or_default());
    println!(
        "finish_reason: {}, usage: {}",
        choice["finish_reason"], v["usage"]
    );
    let b64 = choice["routed_experts"]
        .as_str()
        .context("no routed_experts in the answer")?;
    let npy = base64::engine::general_purpose::STANDARD.decode(b64)?;
    let (descr, shape, data) = parse_npy(&npy)?;
    println!(
        "routed_experts: .npy {descr} shape {shape:?} ({} bytes base64)",
        b64.len()
    );
    let row = shape[1] * shape[2];
    for t in 0..shape[0].min(4) {
        let ids: Vec<String> = (0..shape[1])
            .map(|l| {
                format!(
                    "{:?}",
                    &data[t * row + l * shape[2]..t * row + (l + 1) * shape[2]]
                )
            })
            .collect();
        println!("  token {t}: {}", ids.join(" "));
    }
    Ok(())
}

/// A `.npy` of `|u1`, `<u2` or `<i2` elements: descr, shape, values.
fn parse_npy(b: &[u8]) -> Result<(String, Vec<usize>, Vec<i64>)> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        bail!("not a .npy");
    }
    let hlen = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = std::str::from_utf8(&b[10..10 + hlen])?;
    let descr = header
        .split("'descr': '")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .context("descr")?;
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .context("shape")?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    let data = &b[10 + hlen..];
    let values = match descr {
        "|u1" => data.iter().map(|&x| x as i64).collect(),
        "<u2" => data
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        "<i2" => data
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
            .collect(),
        d => bail!("unexpected dtype {d}"),
    };
    Ok((descr.to_owned(), shape, values))
}
