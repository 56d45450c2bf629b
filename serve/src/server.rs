//! Putting it together: load a model (a checkpoint, or random weights for a config), start
//! the engine and the HTTP server, stop them gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tokio::sync::oneshot;

use crate::engine::{Engine, EngineConfig, Metrics};
use crate::http::listen::{serve, Timeouts};
use crate::http::{router, AppState};
use crate::model::device::{free_memory, DTypeArg, DeviceKind, Placement};
use crate::model::moe::{BackendKind, MoeWeights, GPU_MAX_STEP_TOKENS};
use crate::model::random::{random_tensors, RandomSource};
use crate::model::weights::Checkpoint;
use crate::model::{Model, Qwen3MoeConfig};
use crate::text::TextModel;

/// Where the model comes from.
#[derive(Debug, Clone)]
pub enum ModelSource {
    /// A Hugging Face checkpoint directory.
    Dir(PathBuf),
    /// Random weights for `config` (a `config.json`) from `seed`; the tokenizer is the one
    /// beside the config if there is a `tokenizer.json`, else the built-in byte-level one.
    Random {
        /// The `config.json`.
        config: PathBuf,
        /// Seed of the weights.
        seed: u64,
    },
}

/// Everything the server is started with.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The model.
    pub source: ModelSource,
    /// The MoE backend.
    pub backend: BackendKind,
    /// Where the model runs (`--device`; the CPU by default).
    pub device: DeviceKind,
    /// The dense parts' dtype (`--dtype`; `None`: f32 on the CPU, bf16 on CUDA).
    pub dtype: Option<DTypeArg>,
    /// How a fine-grained fp8 checkpoint's experts run (`--moe-weights`).
    pub moe_weights: MoeWeights,
    /// Address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// `--enable-return-routed-experts`.
    pub capture: bool,
    /// Tokens per step.
    pub max_batch_tokens: usize,
    /// Requests running at once.
    pub max_running: usize,
    /// Requests waiting.
    pub max_queue: usize,
    /// Longest sequence; the config's `max_position_embeddings` when `None`.
    pub max_model_len: Option<usize>,
    /// Served model name; the directory's (or config's) name when `None`.
    pub model_name: Option<String>,
    /// Seconds in-flight requests get to finish after a shutdown signal.
    pub grace: Duration,
    /// How long a client may take to send a request's head and its body.
    pub timeouts: Timeouts,
    /// Bytes the running requests' KV caches may hold together (`--kv-cache-memory`); `None`:
    /// on a GPU, [`KV_SHARE_OF_FREE`] of the memory free once the model is loaded; on the
    /// CPU, no bound.
    pub kv_cache_memory: Option<usize>,
}

impl ServerOptions {
    /// Defaults for `source`: CPU backend, 127.0.0.1:0, capture off.
    pub fn new(source: ModelSource) -> Self {
        ServerOptions {
            source,
            backend: BackendKind::Cpu,
            device: DeviceKind::Cpu,
            dtype: None,
            moe_weights: MoeWeights::Auto,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            capture: false,
            max_batch_tokens: 2048,
            max_running: 64,
            max_queue: 256,
            max_model_len: None,
            model_name: None,
            grace: Duration::from_secs(10),
            timeouts: Timeouts::default(),
            kv_cache_memory: None,
        }
    }
}

/// The share of a GPU's free memory (once the model is loaded) the KV caches get by default;
/// the rest, and at least [`KV_HEADROOM`], is left for a step's activations, attention blocks
/// ([`crate::model::ATTENTION_SCORES_BYTES`]), cuBLAS' and the MoE layer's workspaces. An
/// allowance, not a measurement: give `--kv-cache-memory` where it does not fit.
pub const KV_SHARE_OF_FREE: f64 = 0.8;
/// See [`KV_SHARE_OF_FREE`].
pub const KV_HEADROOM: usize = 2 << 30;

/// The KV cache positions the running requests may hold together: `--kv-cache-memory`, or
/// the GPU's default share ([`KV_SHARE_OF_FREE`]), over the bytes one position takes.
fn kv_positions(opts: &ServerOptions, model: &Model) -> Result<Option<usize>> {
    let bytes = match opts.kv_cache_memory {
        Some(b) => Some(b),
        None => free_memory(model.device())?.map(|free| {
            ((free as f64 * KV_SHARE_OF_FREE) as usize).min(free.saturating_sub(KV_HEADROOM))
        }),
    };
    Ok(bytes.map(|b| b / model.kv_bytes_per_position().max(1)))
}

/// The model, its text side and its served name.
///
/// On `--device cuda` the model is built tensor by tensor on the GPU; random weights are then
/// [`RandomSource`]'s (each tensor from its own seed, never the whole model on the host),
/// not the CPU mode's [`random_tensors`].
pub fn load_model(opts: &ServerOptions) -> Result<(Model, TextModel, String)> {
    let mut place = Placement::open(opts.device, opts.dtype)?;
    place.moe_weights = opts.moe_weights;
    match &opts.source {
        ModelSource::Dir(dir) => {
            let cfg = Qwen3MoeConfig::from_file(&dir.join("config.json"))?;
            let text = TextModel::load(dir, &cfg.eos_ids())?;
            let ckpt = Checkpoint::open(dir)?;
            let model = Model::load_on(&cfg, &ckpt, opts.backend, &place)?;
            Ok((model, text, name_of(dir)))
        }
        ModelSource::Random { config, seed } => {
            let cfg = Qwen3MoeConfig::from_file(config)?;
            let beside = config.parent().map(|d| d.join("tokenizer.json"));
            let text = match beside
                .filter(|p| p.exists())
                .and_then(|p| p.parent().map(PathBuf::from))
            {
                Some(dir) => TextModel::load(&dir, &cfg.eos_ids())?,
                None => TextModel::byte_level(&cfg.eos_ids())?,
            };
            let model = if place.is_cuda() {
                Model::load_on(&cfg, &RandomSource::new(&cfg, *seed), opts.backend, &place)?
            } else {
                Model::load(&cfg, &random_tensors(&cfg, *seed)?, opts.backend)?
            };
            let name = config
                .parent()
                .map(name_of)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "random-qwen3-moe".into());
            Ok((model, text, format!("{name}-random-{seed}")))
        }
    }
}

fn name_of(dir: &std::path::Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A started server.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The served model's name.
    pub model_name: String,
    engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl RunningServer {
    /// The engine (its counters, whether its scheduler runs; `shutdown` stops it while the
    /// HTTP side goes on answering, as when the scheduler thread ends on its own).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The engine's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.engine.metrics()
    }

    /// Stops accepting, lets in-flight requests finish (up to the grace period), stops the
    /// engine.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.context("the server task")?
    }

    /// Runs until `signal` resolves, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) -> Result<()> {
        signal.await;
        tracing::info!("shutting down");
        self.shutdown().await
    }
}

/// Loads the model and starts serving on `opts.addr` (must run inside a tokio runtime).
pub async fn start(opts: ServerOptions) -> Result<RunningServer> {
    let (model, text, default_name) = tokio::task::spawn_blocking({
        let opts = opts.clone();
        move || load_model(&opts)
    })
    .await??;
    start_with(opts, model, text, default_name).await
}

/// Starts serving an already loaded model.
pub async fn start_with(
    opts: ServerOptions,
    model: Model,
    text: TextModel,
    default_name: String,
) -> Result<RunningServer> {
    let cfg = model.config().clone();
    let max_model_len = opts.max_model_len.unwrap_or(cfg.max_position_embeddings);
    ensure!(max_model_len >= 2, "max_model_len must be >= 2");
    ensure!(
        text.vocab_size() <= cfg.vocab_size,
        "the tokenizer has {} tokens, the model's vocabulary {}",
        text.vocab_size(),
        cfg.vocab_size
    );
    if model.moe().name() != "cpu" {
        ensure!(
            opts.max_batch_tokens <= GPU_MAX_STEP_TOKENS,
            "--max-batch-tokens {} is over the GPU backend's {GPU_MAX_STEP_TOKENS} rows a step",
            opts.max_batch_tokens
        );
    }
    let kv_positions = kv_positions(&opts, &model)?;
    if let Some(cap) = kv_positions {
        ensure!(
            cap >= max_model_len,
            "the KV cache holds {cap} positions ({} bytes each) in {}, fewer than \
             --max-model-len {max_model_len}: the longest request could never run; lower \
             --max-model-len or raise --kv-cache-memory",
            model.kv_bytes_per_position(),
            opts.kv_cache_memory
                .map_or("the GPU's default share".into(), |b| format!(
                    "--kv-cache-memory {b} bytes"
                )),
        );
        tracing::info!(positions = cap, "KV cache budget");
    }
    let text = Arc::new(text);
    let engine = Arc::new(Engine::start(
        model,
        text.clone(),
        EngineConfig {
            max_batch_tokens: opts.max_batch_tokens,
            max_running: opts.max_running,
            max_queue: opts.max_queue,
            max_model_len,
            capture: opts.capture,
            kv_positions,
        },
    )?);
    let model_name = opts.model_name.clone().unwrap_or(default_name);
    let state = Arc::new(AppState {
        engine: engine.clone(),
        text,
        model_name: model_name.clone(),
        max_model_len,
        vocab_size: cfg.vocab_size,
        capture: opts.capture,
    });
    let listener = tokio::net::TcpListener::bind(opts.addr)
        .await
        .with_context(|| format!("binding {}", opts.addr))?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let (grace, timeouts) = (opts.grace, opts.timeouts);
    let engine_for_task = engine.clone();
    let task = tokio::spawn(async move {
        let (signalled_tx, signalled_rx) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
            let _ = signalled_tx.send(());
        };
        // After the signal, in-flight requests get `grace`; then the engine stops and fails
        // what is left, which ends their responses.
        let engine_stop = engine_for_task.clone();
        tokio::spawn(async move {
            if signalled_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
                let _ = tokio::task::spawn_blocking(move || engine_stop.shutdown()).await;
            }
        });
        serve(listener, router(state), timeouts, shutdown).await;
        let _ = tokio::task::spawn_blocking(move || engine_for_task.shutdown()).await;
        Ok(())
    });
    tracing::info!(%addr, model = %model_name, "serving");
    Ok(RunningServer {
        addr,
        model_name,
        engine,
        stop: Some(stop),
        task,
    })
}
