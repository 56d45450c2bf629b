//! Where a step's time goes, for the profiling pass of the benchmark: with profiling on, the
//! batched forward synchronizes the device after each phase and adds the time since the last
//! fence to that phase. The fences serialize the GPU with the host, so a profiled step is
//! slower than an unprofiled one: run the timed passes with profiling off and the profile in
//! a pass of its own. Off (the default), a phase mark is one relaxed atomic load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use candle_core::Device;

/// A phase of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Token ids up, embedding rows, the RoPE tables, causal masks.
    Embed,
    /// Every layer's attention: q/k/v projections, q/k norms, RoPE, the KV cache writes,
    /// attention per request, o_proj.
    Attention,
    /// Every MoE layer (router and experts, through the backend).
    Moe,
    /// Dense MLP layers.
    DenseMlp,
    /// Layer norms and residual adds.
    Norms,
    /// The backend's end of step (the routed experts' readback).
    Capture,
    /// Final norm, lm_head, logits to f32.
    Head,
}

impl Phase {
    /// Every phase, in step order.
    pub const ALL: [Phase; 7] = [
        Phase::Embed,
        Phase::Attention,
        Phase::Moe,
        Phase::DenseMlp,
        Phase::Norms,
        Phase::Capture,
        Phase::Head,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Embed => "embed",
            Phase::Attention => "attention",
            Phase::Moe => "moe",
            Phase::DenseMlp => "dense_mlp",
            Phase::Norms => "norms",
            Phase::Capture => "capture",
            Phase::Head => "head",
        }
    }
}

/// Accumulated phase times.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseTimes {
    /// Forward passes profiled.
    pub steps: u64,
    /// Tokens they ran.
    pub tokens: u64,
    /// See [`Phase`].
    pub embed: Duration,
    /// See [`Phase`].
    pub attention: Duration,
    /// See [`Phase`].
    pub moe: Duration,
    /// See [`Phase`].
    pub dense_mlp: Duration,
    /// See [`Phase`].
    pub norms: Duration,
    /// See [`Phase`].
    pub capture: Duration,
    /// See [`Phase`].
    pub head: Duration,
    /// Host time between consecutive forward passes (the engine's scheduling, logits to the
    /// host, sampling, capture assembly and streaming), from the end of one pass to the start
    /// of the next; the first pass after [`Profiler::take`] has none.
    pub host: Duration,
    /// The gaps `host` adds up.
    pub host_gaps: u64,
}

impl PhaseTimes {
    fn slot(&mut self, p: Phase) -> &mut Duration {
        match p {
            Phase::Embed => &mut self.embed,
            Phase::Attention => &mut self.attention,
            Phase::Moe => &mut self.moe,
            Phase::DenseMlp => &mut self.dense_mlp,
            Phase::Norms => &mut self.norms,
            Phase::Capture => &mut self.capture,
            Phase::Head => &mut self.head,
        }
    }

    /// The time of `p`.
    pub fn get(&self, p: Phase) -> Duration {
        match p {
            Phase::Embed => self.embed,
            Phase::Attention => self.attention,
            Phase::Moe => self.moe,
            Phase::DenseMlp => self.dense_mlp,
            Phase::Norms => self.norms,
            Phase::Capture => self.capture,
            Phase::Head => self.head,
        }
    }

    /// The forward passes' whole time (the sum of the phases).
    pub fn total(&self) -> Duration {
        self.embed
            + self.attention
            + self.moe
            + self.dense_mlp
            + self.norms
            + self.capture
            + self.head
    }
}

/// The model's profiler (shared: the benchmark keeps a handle while the engine runs).
#[derive(Debug, Default)]
pub struct Profiler {
    enabled: AtomicBool,
    times: Mutex<(PhaseTimes, Option<Instant>)>,
}

impl Profiler {
    /// Turns profiling on or off.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether profiling is on.
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The times so far, and resets them (the next pass starts a new run: no host gap).
    pub fn take(&self) -> PhaseTimes {
        self.times
            .lock()
            .map(|mut t| std::mem::take(&mut *t).0)
            .unwrap_or_default()
    }

    /// A step's timer: fences the device now (when profiling), adds the host gap since the
    /// last pass ended, and starts the clock.
    pub(crate) fn pass<'a>(&'a self, device: &'a Device) -> Result<Pass<'a>> {
        let on = self.enabled();
        if on {
            device.synchronize()?;
            if let Ok(mut t) = self.times.lock() {
                if let Some(end) = t.1.take() {
                    t.0.host += end.elapsed();
                    t.0.host_gaps += 1;
                }
            }
        }
        Ok(Pass {
            profiler: self,
            device,
            on,
            last: Instant::now(),
            times: PhaseTimes::default(),
        })
    }
}

/// One forward pass's timer.
pub(crate) struct Pass<'a> {
    profiler: &'a Profiler,
    device: &'a Device,
    on: bool,
    last: Instant,
    times: PhaseTimes,
}

impl Pass<'_> {
    /// Ends a stretch of `phase`: fences the device and adds the time since the last mark.
    pub(crate) fn mark(&mut self, phase: Phase) -> Result<()> {
        if self.on {
            self.device.synchronize()?;
            let now = Instant::now();
            *self.times.slot(phase) += now - self.last;
            self.last = now;
        }
        Ok(())
    }

    /// Adds the pass (of `tokens` rows) to the profiler's totals.
    pub(crate) fn finish(self, tokens: usize) {
        if !self.on {
            return;
        }
        if let Ok(mut guard) = self.profiler.times.lock() {
            let (t, end) = &mut *guard;
            let p = &self.times;
            t.steps += 1;
            t.tokens += tokens as u64;
            for phase in Phase::ALL {
                *t.slot(phase) += p.get(phase);
            }
            *end = Some(Instant::now());
        }
    }
}
