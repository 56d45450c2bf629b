//! The engine: one scheduler thread doing continuous batching over the model, and the handle
//! requests come in through.
//!
//! A request is submitted as token ids with its sampling and capture options; it waits in a
//! bounded queue ([`SubmitError::Busy`] when full), is admitted when the step has room, runs
//! (its prompt as prefill, possibly in chunks, then one decode token per step) and streams
//! [`Event`]s back. Dropping its [`RequestStream`] cancels it: its slot is freed and its
//! capture rows are aborted.

pub mod metrics;
pub mod sampling;
mod scheduler;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use flashinfer_rs::capture::RoutedExperts;
use tokio::sync::mpsc as tmpsc;

use crate::model::Model;
use crate::text::TextModel;
pub use metrics::Metrics;
pub use sampling::{SamplingParams, TokenLogprob};

/// The engine's limits.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Tokens per step (prefill chunks and decode tokens together).
    pub max_batch_tokens: usize,
    /// Requests running at once.
    pub max_running: usize,
    /// Requests waiting for admission; more are refused with [`SubmitError::Busy`].
    pub max_queue: usize,
    /// Longest sequence (prompt + generated).
    pub max_model_len: usize,
    /// Capture routed experts for requests that ask (the server flag).
    pub capture: bool,
    /// KV cache positions the running requests may hold together (`None`: no bound). Each
    /// request reserves its prompt plus its `max_tokens` (at most `max_model_len`) when
    /// admitted, so a request admitted never runs the cache out of memory; the queue's front
    /// waits until that much is free. Must be at least `max_model_len`, or the largest request
    /// would wait for ever.
    pub kv_positions: Option<usize>,
}

/// What a request wants of its routed experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureOptions {
    /// Rows before this position are not returned (vLLM's `routed_experts_prompt_start`,
    /// SGLang's `routed_experts_start_len`).
    pub start: usize,
    /// Return the routing weights too.
    pub weights: bool,
}

/// One generation request, tokenized.
#[derive(Debug, Clone)]
pub struct GenRequest {
    /// Prompt token ids (at least one).
    pub prompt: Vec<u32>,
    /// Tokens to generate at most (> 0).
    pub max_tokens: usize,
    /// Sampling.
    pub sampling: SamplingParams,
    /// Stop strings: the text ends before the first one found.
    pub stop: Vec<String>,
    /// Tokens that end the request when generated (beside the model's end-of-sequence
    /// tokens, unless `ignore_eos`), kept in the output as an EOS is.
    pub stop_token_ids: Vec<u32>,
    /// Generate through the model's end-of-sequence tokens (to `max_tokens`).
    pub ignore_eos: bool,
    /// Stream deltas ([`Event::Delta`]) rather than one [`Event::Finished`] with everything.
    pub stream: bool,
    /// Routed experts wanted.
    pub capture: Option<CaptureOptions>,
    /// Log-probabilities wanted: the generated token's and this many most likely tokens'.
    pub logprobs: Option<usize>,
}

/// Why a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the model's length.
    Length,
}

impl FinishReason {
    /// OpenAI's name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What a request's stream carries.
#[derive(Debug, Clone)]
pub enum Event {
    /// Streaming only: new tokens, their text and, with capture, their routed experts (the
    /// first delta also the prompt's rows). The concatenated deltas equal the final result.
    Delta {
        /// New token ids.
        ids: Vec<u32>,
        /// New text.
        text: String,
        /// Rows of these tokens.
        routed: Option<RoutedExperts>,
        /// These tokens' log-probabilities, when asked.
        logprobs: Option<Vec<TokenLogprob>>,
    },
    /// The end. Streaming: only what no delta carried. Not streaming: everything.
    Finished {
        /// Why.
        reason: FinishReason,
        /// Token ids (all of the completion when not streaming; else the rest).
        ids: Vec<u32>,
        /// Text (as `ids`).
        text: String,
        /// Routed experts (as `ids`).
        routed: Option<RoutedExperts>,
        /// Log-probabilities (as `ids`), when asked.
        logprobs: Option<Vec<TokenLogprob>>,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Completion tokens.
        completion_tokens: usize,
    },
    /// The request could not complete.
    Failed(String),
}

/// Why a submission was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error("the server is busy: {0} requests are waiting already")]
    Busy(usize),
    /// The engine has stopped.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The request breaks a limit.
    #[error("{0}")]
    Invalid(String),
}

enum Command {
    Submit(u64, Box<GenRequest>, tmpsc::UnboundedSender<Event>),
    /// Several requests that arrive together (the scheduler sees them in one go).
    SubmitMany(Vec<(u64, Box<GenRequest>, tmpsc::UnboundedSender<Event>)>),
    Cancel(u64),
    Shutdown,
}

/// A running request's events; dropping it cancels the request.
pub struct RequestStream {
    /// The request's id.
    pub id: u64,
    rx: tmpsc::UnboundedReceiver<Event>,
    done: Arc<AtomicBool>,
    cmd: mpsc::Sender<Command>,
}

impl RequestStream {
    /// The next event; `None` once the engine has nothing more to say.
    pub async fn next(&mut self) -> Option<Event> {
        let ev = self.rx.recv().await;
        if matches!(ev, Some(Event::Finished { .. } | Event::Failed(_)) | None) {
            self.done.store(true, Ordering::Relaxed);
        }
        ev
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done.load(Ordering::Relaxed) {
            let _ = self.cmd.send(Command::Cancel(self.id));
        }
    }
}

/// The handle of a running engine.
pub struct Engine {
    cmd: mpsc::Sender<Command>,
    next_id: std::sync::atomic::AtomicU64,
    queued: Arc<std::sync::atomic::AtomicUsize>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    stopped: AtomicBool,
}

impl Engine {
    /// Starts the scheduler thread over `model`.
    pub fn start(model: Model, text: Arc<TextModel>, config: EngineConfig) -> anyhow::Result<Self> {
        anyhow::ensure!(config.max_batch_tokens > 0, "max_batch_tokens must be > 0");
        anyhow::ensure!(config.max_running > 0, "max_running must be > 0");
        if let Some(cap) = config.kv_positions {
            anyhow::ensure!(
                cap >= config.max_model_len,
                "the KV cache holds {cap} positions, fewer than max_model_len {}: the longest \
                 request would never be admitted (lower max_model_len or give the cache more \
                 memory)",
                config.max_model_len
            );
        }
        let (tx, rx) = mpsc::channel();
        let metrics = Arc::new(Metrics::default());
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sched =
            scheduler::Scheduler::new(model, text, config, metrics.clone(), queued.clone())?;
        let thread = std::thread::Builder::new()
            .name("flashinfer-serve-scheduler".into())
            .spawn(move || sched.run(rx))?;
        Ok(Engine {
            cmd: tx,
            next_id: std::sync::atomic::AtomicU64::new(1),
            queued,
            config,
            metrics,
            thread: std::sync::Mutex::new(Some(thread)),
            stopped: AtomicBool::new(false),
        })
    }

    /// The limits.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Queues `req`; its events come through the returned stream.
    pub fn submit(&self, req: GenRequest) -> Result<RequestStream, SubmitError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown);
        }
        let max = self.config.max_queue;
        let reserved = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q < max).then_some(q + 1)
            });
        if reserved.is_err() {
            self.metrics
                .rejected_requests
                .fetch_add(1, Ordering::Relaxed);
            return Err(SubmitError::Busy(max));
        }
        self.metrics.queue_depth.fetch_add(1, Ordering::Relaxed);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tmpsc::unbounded_channel();
        if self
            .cmd
            .send(Command::Submit(id, Box::new(req), tx))
            .is_err()
        {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.metrics.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(SubmitError::ShuttingDown);
        }
        Ok(RequestStream {
            id,
            rx,
            done: Arc::new(AtomicBool::new(false)),
            cmd: self.cmd.clone(),
        })
    }

    /// Queues `reqs` together: the scheduler takes all of them in the same pass (a step is
    /// planned with every one of them), where separate [`submit`](Self::submit)s may be
    /// split across steps. All or none: [`SubmitError::Busy`] when the queue has no room
    /// for all.
    pub fn submit_many(&self, reqs: Vec<GenRequest>) -> Result<Vec<RequestStream>, SubmitError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(SubmitError::ShuttingDown);
        }
        let (n, max) = (reqs.len(), self.config.max_queue);
        let reserved = self
            .queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |q| {
                (q + n <= max).then_some(q + n)
            });
        if reserved.is_err() {
            self.metrics
                .rejected_requests
                .fetch_add(n as u64, Ordering::Relaxed);
            return Err(SubmitError::Busy(max));
        }
        self.metrics
            .queue_depth
            .fetch_add(n as u64, Ordering::Relaxed);
        let mut batch = Vec::with_capacity(n);
        let mut streams = Vec::with_capacity(n);
        for req in reqs {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = tmpsc::unbounded_channel();
            batch.push((id, Box::new(req), tx));
            streams.push(RequestStream {
                id,
                rx,
                done: Arc::new(AtomicBool::new(false)),
                cmd: self.cmd.clone(),
            });
        }
        if self.cmd.send(Command::SubmitMany(batch)).is_err() {
            self.queued.fetch_sub(n, Ordering::SeqCst);
            self.metrics
                .queue_depth
                .fetch_sub(n as u64, Ordering::Relaxed);
            for s in &streams {
                s.done.store(true, Ordering::Relaxed);
            }
            return Err(SubmitError::ShuttingDown);
        }
        Ok(streams)
    }

    /// Whether the scheduler runs: not shut down, its thread not ended (a step's error or panic
    /// fails that step's requests and the thread goes on; only something outside a step, or a
    /// shutdown, ends it).
    pub fn is_running(&self) -> bool {
        !self.stopped.load(Ordering::Relaxed)
            && self
                .thread
                .lock()
                .is_ok_and(|t| t.as_ref().is_some_and(|h| !h.is_finished()))
    }

    /// Stops the scheduler: running and waiting requests fail with "shutting down".
    pub fn shutdown(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _ = self.cmd.send(Command::Shutdown);
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
