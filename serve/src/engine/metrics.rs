//! Server counters, shared between the scheduler and the HTTP layer; `/metrics` renders them
//! in Prometheus' text format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// The counters and gauges.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// Tokens generated (sampled), all requests.
    pub generated_tokens: AtomicU64,
    /// Prompt tokens run.
    pub prompt_tokens: AtomicU64,
    /// Requests finished (stop or length).
    pub finished_requests: AtomicU64,
    /// Requests cancelled (client gone) or failed.
    pub aborted_requests: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected_requests: AtomicU64,
    /// Requests waiting for admission.
    pub queue_depth: AtomicU64,
    /// Requests running.
    pub active_requests: AtomicU64,
    /// Requests the capture assembler tracks.
    pub assembler_active: AtomicU64,
    /// KV cache positions the running requests have reserved.
    pub kv_reserved_positions: AtomicU64,
    /// Bytes of routed experts (ids and weights) exported to clients.
    pub capture_bytes: AtomicU64,
    /// Steps run.
    pub steps: AtomicU64,
    /// Steps that failed (an error or a panic of the model): their requests failed with it.
    pub failed_steps: AtomicU64,
    /// Tokens of the last step, and its duration in microseconds.
    pub last_step_tokens: AtomicU64,
    /// Duration of the last step in microseconds.
    pub last_step_us: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            generated_tokens: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            finished_requests: AtomicU64::new(0),
            aborted_requests: AtomicU64::new(0),
            rejected_requests: AtomicU64::new(0),
            queue_depth: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
            assembler_active: AtomicU64::new(0),
            kv_reserved_positions: AtomicU64::new(0),
            capture_bytes: AtomicU64::new(0),
            steps: AtomicU64::new(0),
            failed_steps: AtomicU64::new(0),
            last_step_tokens: AtomicU64::new(0),
            last_step_us: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Generated tokens per second since the server started.
    pub fn tokens_per_second(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.generated_tokens.load(Relaxed) as f64 / secs
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, value: f64| {
            let _ = writeln!(out, "# HELP flashinfer_serve_{name} {help}");
            let _ = writeln!(out, "# TYPE flashinfer_serve_{name} {kind}");
            let _ = writeln!(out, "flashinfer_serve_{name} {value}");
        };
        let get = |c: &AtomicU64| c.load(Relaxed) as f64;
        put(
            "generated_tokens_total",
            "counter",
            "Tokens generated.",
            get(&self.generated_tokens),
        );
        put(
            "prompt_tokens_total",
            "counter",
            "Prompt tokens run.",
            get(&self.prompt_tokens),
        );
        put(
            "finished_requests_total",
            "counter",
            "Requests finished.",
            get(&self.finished_requests),
        );
        put(
            "aborted_requests_total",
            "counter",
            "Requests cancelled or failed.",
            get(&self.aborted_requests),
        );
        put(
            "rejected_requests_total",
            "counter",
            "Requests refused: queue full.",
            get(&self.rejected_requests),
        );
        put(
            "queue_depth",
            "gauge",
            "Requests waiting for admission.",
            get(&self.queue_depth),
        );
        put(
            "active_requests",
            "gauge",
            "Requests running.",
            get(&self.active_requests),
        );
        put(
            "assembler_active_requests",
            "gauge",
            "Requests the routed-experts assembler tracks.",
            get(&self.assembler_active),
        );
        put(
            "kv_reserved_positions",
            "gauge",
            "KV cache positions the running requests have reserved (prompt + max_tokens each).",
            get(&self.kv_reserved_positions),
        );
        put(
            "capture_bytes_total",
            "counter",
            "Routed-experts bytes returned.",
            get(&self.capture_bytes),
        );
        put(
            "steps_total",
            "counter",
            "Model steps run.",
            get(&self.steps),
        );
        put(
            "failed_steps_total",
            "counter",
            "Model steps that failed; their requests failed with them.",
            get(&self.failed_steps),
        );
        put(
            "tokens_per_second",
            "gauge",
            "Generated tokens per second since start.",
            self.tokens_per_second(),
        );
        let us = get(&self.last_step_us).max(1.0);
        put(
            "last_step_tokens_per_second",
            "gauge",
            "Tokens per second of the last step.",
            get(&self.last_step_tokens) * 1e6 / us,
        );
        out
    }
}
