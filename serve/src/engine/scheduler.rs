//! The scheduler loop: admit, plan a step under the token budget, run it as one batch,
//! attribute its capture rows, sample, stream.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::Result;
use flashinfer_rs::capture::{Assembler, AssemblerConfig, RoutedExperts, RowOwner};
use tokio::sync::mpsc as tmpsc;

use super::sampling::{logprobs, Sampler, TokenLogprob};
use super::{Command, EngineConfig, Event, FinishReason, GenRequest, Metrics};
use crate::model::moe::StepCapture;
use crate::model::{KvCache, Model, SeqInput};
use crate::text::{TextModel, TextStream};

struct Running {
    id: u64,
    req: GenRequest,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    /// KV cache positions reserved: the most it runs (prompt + max_tokens, within the context).
    positions: usize,
    cache: KvCache,
    sampler: Sampler,
    tx: tmpsc::UnboundedSender<Event>,
    /// Generated tokens already sent (streaming).
    sent_tokens: usize,
    /// Bytes of text already sent (streaming).
    sent_text: usize,
    finished: Option<FinishReason>,
    /// The generated text so far.
    text: TextStream,
    /// Where the text ends once a stop string is found in it.
    stop_at: Option<usize>,
    /// Each generated token's log-probabilities, when asked.
    logprobs: Vec<TokenLogprob>,
    gone: bool,
}

impl Running {
    fn prompt_len(&self) -> usize {
        self.req.prompt.len()
    }
    fn generated(&self) -> &[u32] {
        &self.tokens[self.prompt_len()..]
    }
    fn captures(&self) -> bool {
        self.req.capture.is_some()
    }
    /// The text taken so far, cut where a stop string was found.
    fn text(&self) -> &str {
        let text = self.text.as_str();
        &text[..self.stop_at.unwrap_or(text.len())]
    }
}

pub(super) struct Scheduler {
    model: Model,
    text: Arc<TextModel>,
    config: EngineConfig,
    metrics: Arc<Metrics>,
    queued: Arc<AtomicUsize>,
    assembler: Option<Assembler>,
    waiting: VecDeque<(u64, Box<GenRequest>, tmpsc::UnboundedSender<Event>)>,
    running: Vec<Running>,
    /// KV cache positions the running requests have reserved.
    reserved: usize,
    shutdown: bool,
}

impl Scheduler {
    pub(super) fn new(
        model: Model,
        text: Arc<TextModel>,
        config: EngineConfig,
        metrics: Arc<Metrics>,
        queued: Arc<AtomicUsize>,
    ) -> Result<Self> {
        let (layers, top_k, experts) = model.capture_shape();
        let assembler = if config.capture {
            let cfg = AssemblerConfig::new(layers, top_k, experts as u32, config.max_model_len);
            Some(Assembler::new(cfg)?)
        } else {
            None
        };
        Ok(Scheduler {
            model,
            text,
            config,
            metrics,
            queued,
            assembler,
            waiting: VecDeque::new(),
            running: Vec::new(),
            reserved: 0,
            shutdown: false,
        })
    }

    pub(super) fn run(mut self, rx: mpsc::Receiver<Command>) {
        while !self.shutdown {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(c) => self.command(c),
                    Err(_) => break,
                }
            }
            while let Ok(c) = rx.try_recv() {
                self.command(c);
            }
            if self.shutdown {
                break;
            }
            self.reap();
            // A panic inside the model (or the kernels' Rust side) fails this step's requests
            // as an error does, and the scheduler goes on with the next ones.
            let failure = match std::panic::catch_unwind(AssertUnwindSafe(|| self.step())) {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(panic) => Some(panic_message(panic.as_ref())),
            };
            if let Some(why) = failure {
                tracing::error!("step failed: {why}");
                self.metrics.failed_steps.fetch_add(1, Relaxed);
                for r in std::mem::take(&mut self.running) {
                    let _ =
                        r.tx.send(Event::Failed(format!("the model step failed: {why}")));
                    self.forget(r.id, false);
                }
            }
            self.reap();
        }
        for (id, _, tx) in std::mem::take(&mut self.waiting) {
            let _ = tx.send(Event::Failed("the server is shutting down".into()));
            self.dequeue();
            let _ = id;
        }
        for r in std::mem::take(&mut self.running) {
            let _ =
                r.tx.send(Event::Failed("the server is shutting down".into()));
            self.forget(r.id, false);
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Submit(id, req, tx) => self.waiting.push_back((id, req, tx)),
            Command::SubmitMany(batch) => self.waiting.extend(batch),
            Command::Cancel(id) => {
                if let Some(at) = self.waiting.iter().position(|w| w.0 == id) {
                    self.waiting.remove(at);
                    self.dequeue();
                    self.metrics.aborted_requests.fetch_add(1, Relaxed);
                } else if let Some(r) = self.running.iter_mut().find(|r| r.id == id) {
                    r.gone = true;
                }
            }
            Command::Shutdown => self.shutdown = true,
        }
    }

    fn dequeue(&self) {
        self.queued.fetch_sub(1, Relaxed);
        self.metrics.queue_depth.fetch_sub(1, Relaxed);
    }

    /// Forgets a request's capture rows (when `finished` is false, as an abort).
    fn forget(&mut self, id: u64, finished: bool) {
        if let Some(a) = self.assembler.as_mut() {
            a.abort(id);
            self.metrics
                .assembler_active
                .store(a.active() as u64, Relaxed);
        }
        self.metrics.active_requests.fetch_sub(1, Relaxed);
        if finished {
            self.metrics.finished_requests.fetch_add(1, Relaxed);
        } else {
            self.metrics.aborted_requests.fetch_add(1, Relaxed);
        }
    }

    /// Drops finished and cancelled requests.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            let r = &self.running[i];
            if r.gone || r.finished.is_some() || r.tx.is_closed() {
                let r = self.running.swap_remove(i);
                self.set_reserved(self.reserved - r.positions);
                let finished = r.finished.is_some() && !r.gone;
                self.forget(r.id, finished);
            } else {
                i += 1;
            }
        }
        // Keep admission order (swap_remove shuffles): a stable order keeps steps fair.
        self.running.sort_by_key(|r| r.id);
    }

    /// The KV cache positions `req` can run: its prompt plus its `max_tokens`, within the
    /// context.
    fn positions(&self, req: &GenRequest) -> usize {
        req.prompt
            .len()
            .saturating_add(req.max_tokens)
            .min(self.config.max_model_len)
    }

    /// The KV cache positions reserved, kept in the metrics too.
    fn set_reserved(&mut self, reserved: usize) {
        self.reserved = reserved;
        self.metrics
            .kv_reserved_positions
            .store(self.reserved as u64, Relaxed);
    }

    /// Moves waiting requests into `running` while there is room (requests, and KV cache
    /// positions: the queue's front waits for its own, in order); returns the budget left.
    fn admit(&mut self, mut budget: usize) -> usize {
        while budget > 0 && self.running.len() < self.config.max_running {
            let Some((_, front, _)) = self.waiting.front() else {
                break;
            };
            let positions = self.positions(front);
            let fits = self
                .config
                .kv_positions
                .is_none_or(|cap| self.reserved + positions <= cap);
            if !fits {
                break;
            }
            let Some((id, req, tx)) = self.waiting.pop_front() else {
                break;
            };
            self.dequeue();
            if tx.is_closed() {
                self.metrics.aborted_requests.fetch_add(1, Relaxed);
                continue;
            }
            if let (Some(a), Some(c)) = (self.assembler.as_mut(), req.capture) {
                if let Err(e) = a.start(id, c.start) {
                    let _ = tx.send(Event::Failed(format!("capture: {e}")));
                    continue;
                }
                self.metrics
                    .assembler_active
                    .store(a.active() as u64, Relaxed);
            }
            self.metrics.active_requests.fetch_add(1, Relaxed);
            let take = req.prompt.len().min(budget);
            budget -= take;
            self.set_reserved(self.reserved + positions);
            self.running.push(Running {
                id,
                tokens: req.prompt.clone(),
                positions,
                sampler: Sampler::new(req.sampling),
                req: *req,
                cache: KvCache::bounded(positions),
                tx,
                sent_tokens: 0,
                sent_text: 0,
                finished: None,
                text: TextStream::default(),
                stop_at: None,
                logprobs: Vec::new(),
                gone: false,
            });
        }
        budget
    }

    /// Tokens each running request runs this step (0 = not this step): decodes first, then
    /// prefill chunks, then newly admitted prompts, within `max_batch_tokens`.
    fn plan(&mut self) -> Vec<usize> {
        let mut budget = self.config.max_batch_tokens;
        let mut plan = vec![0; self.running.len()];
        for (p, r) in plan.iter_mut().zip(&self.running) {
            if r.tokens.len() - r.cache.len() == 1 && budget > 0 {
                *p = 1;
                budget -= 1;
            }
        }
        for (p, r) in plan.iter_mut().zip(&self.running) {
            let pending = r.tokens.len() - r.cache.len();
            if pending > 1 && budget > 0 {
                *p = pending.min(budget);
                budget -= *p;
            }
        }
        let before = self.running.len();
        let _ = self.admit(budget);
        for r in &self.running[before..] {
            let take = r.tokens.len().min(budget);
            budget -= take;
            plan.push(take);
        }
        plan
    }

    fn step(&mut self) -> Result<()> {
        let plan = self.plan();
        let tokens: usize = plan.iter().sum();
        if tokens == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let (layers, top_k, _) = self.model.capture_shape();
        let mut capture = StepCapture::new(tokens, layers, top_k, self.assembler.is_some());
        let mut owners = Vec::with_capacity(tokens);
        let mut inputs = Vec::new();
        let mut ran = Vec::new();
        for (i, (r, &n)) in self.running.iter_mut().zip(&plan).enumerate() {
            if n == 0 {
                continue;
            }
            let Running {
                id,
                tokens,
                cache,
                req,
                ..
            } = r;
            let from = cache.len();
            for position in from..from + n {
                owners.push(match req.capture {
                    Some(_) => RowOwner::Token {
                        request: *id,
                        position,
                    },
                    None => RowOwner::Padding,
                });
            }
            if from < req.prompt.len() {
                self.metrics.prompt_tokens.fetch_add(n as u64, Relaxed);
            }
            inputs.push(SeqInput {
                tokens: &tokens[from..from + n],
                cache,
            });
            ran.push(i);
        }
        // A step no request wants routed experts of: a device backend skips its capture.
        capture.set_wanted(owners.iter().any(|o| matches!(o, RowOwner::Token { .. })));
        let logits = self.model.forward(&mut inputs, &mut capture)?;
        drop(inputs);
        if let Some(a) = self.assembler.as_mut() {
            a.push_layer_major(&capture.as_layer_major(), &owners)?;
        }
        let logits = logits.to_vec2::<f32>()?;
        for (&i, row) in ran.iter().zip(&logits) {
            if self.running[i].cache.len() == self.running[i].tokens.len() {
                self.advance(i, row)?;
            }
        }
        self.metrics.steps.fetch_add(1, Relaxed);
        self.metrics.last_step_tokens.store(tokens as u64, Relaxed);
        self.metrics
            .last_step_us
            .store(started.elapsed().as_micros() as u64, Relaxed);
        Ok(())
    }

    /// Samples request `i`'s next token, checks its stops and sends what is due.
    fn advance(&mut self, i: usize, logits: &[f32]) -> Result<()> {
        let max_len = self.config.max_model_len;
        let r = &mut self.running[i];
        let token = r.sampler.sample(logits);
        r.tokens.push(token);
        if let Some(top) = r.req.logprobs {
            r.logprobs.push(logprobs(logits, token, top));
        }
        self.metrics.generated_tokens.fetch_add(1, Relaxed);
        let generated = r.tokens.len() - r.prompt_len();
        let eos = !r.req.ignore_eos && self.text.eos_ids().contains(&token);
        if eos || r.req.stop_token_ids.contains(&token) {
            r.finished = Some(FinishReason::Stop);
        } else if generated >= r.req.max_tokens || r.tokens.len() >= max_len {
            r.finished = Some(FinishReason::Length);
        }
        // The generated ids (not `r.generated()`: `r.text` is borrowed mutably beside them).
        let ids = &r.tokens[r.req.prompt.len()..];
        let new = match r.finished {
            Some(_) => r.text.finish(&self.text, ids)?,
            None => r.text.push(&self.text, ids)?,
        };
        if let Some(at) = first_stop(r.text.as_str(), new, &r.req.stop) {
            r.stop_at = Some(at);
            r.finished = Some(FinishReason::Stop);
        }
        if r.req.stream {
            self.send_delta(i)
        } else if r.finished.is_some() {
            self.send_whole(i)
        } else {
            Ok(())
        }
    }

    /// Streaming: the tokens now due (with capture, those whose rows exist: every token but
    /// the last sampled one, until the request ends), their text (held back where it may be
    /// the start of a stop string or an unfinished character) and their rows.
    fn send_delta(&mut self, i: usize) -> Result<()> {
        let r = &self.running[i];
        let generated = r.generated();
        let due = match (r.finished, r.captures()) {
            (Some(_), _) | (None, false) => generated.len(),
            (None, true) => generated.len() - 1,
        };
        // A stop string found has finished the request: `r.text()` is cut there.
        let text = match r.finished {
            Some(_) => r.text(),
            None => {
                let t = r.text.through(due);
                &t[..held_back(t, &r.req.stop)]
            }
        };
        let text_len = text.len();
        let new_text = text
            .get(r.sent_text.min(text_len)..)
            .unwrap_or_default()
            .to_owned();
        let ids = generated[r.sent_tokens..due].to_vec();
        if r.finished.is_none() && ids.is_empty() && new_text.is_empty() {
            return Ok(());
        }
        let logprobs = r
            .req
            .logprobs
            .map(|_| r.logprobs[r.sent_tokens..due].to_vec());
        let routed = self.export_new(i, due)?;
        let r = &mut self.running[i];
        r.sent_tokens = due;
        r.sent_text = r.sent_text.max(text_len);
        let (prompt_tokens, completion_tokens) = (r.prompt_len(), r.generated().len());
        let event = match r.finished {
            Some(reason) => Event::Finished {
                reason,
                ids,
                text: new_text,
                routed,
                logprobs,
                prompt_tokens,
                completion_tokens,
            },
            None => Event::Delta {
                ids,
                text: new_text,
                routed,
                logprobs,
            },
        };
        if r.tx.send(event).is_err() {
            r.gone = true;
        }
        Ok(())
    }

    /// Rows through generated token `due - 1` that no delta has carried yet.
    fn export_new(&mut self, i: usize, due: usize) -> Result<Option<RoutedExperts>> {
        let r = &self.running[i];
        let (Some(a), Some(_)) = (self.assembler.as_mut(), r.req.capture) else {
            return Ok(None);
        };
        let fed = r.cache.len();
        let upto = (r.prompt_len() + due).min(fed);
        let span = a.export_new(r.id, upto + 1)?;
        self.metrics
            .capture_bytes
            .fetch_add(routed_bytes(&span.experts), Relaxed);
        Ok(Some(span.experts))
    }

    /// Not streaming: everything at the end.
    fn send_whole(&mut self, i: usize) -> Result<()> {
        let r = &self.running[i];
        let text = r.text().to_owned();
        let routed = match (self.assembler.as_mut(), r.req.capture) {
            (Some(a), Some(_)) => {
                let experts = a.finish(r.id, r.tokens.len())?;
                self.metrics
                    .assembler_active
                    .store(a.active() as u64, Relaxed);
                self.metrics
                    .capture_bytes
                    .fetch_add(routed_bytes(&experts), Relaxed);
                Some(experts)
            }
            _ => None,
        };
        let event = Event::Finished {
            reason: r.finished.unwrap_or(FinishReason::Length),
            ids: r.generated().to_vec(),
            text,
            routed,
            logprobs: r.req.logprobs.map(|_| r.logprobs.clone()),
            prompt_tokens: r.prompt_len(),
            completion_tokens: r.generated().len(),
        };
        if r.tx.send(event).is_err() {
            self.running[i].gone = true;
        }
        Ok(())
    }
}

fn routed_bytes(e: &RoutedExperts) -> u64 {
    let ids = e.ids().len() as u64;
    ids * 2 + e.weights().map_or(0, |w| w.len() as u64 * 4)
}

/// How much of `text` may be sent now: all but a trailing unfinished character (U+FFFD)
/// and the longest suffix that is the start of a stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    let mut end = text.len();
    while text[..end].ends_with('\u{FFFD}') {
        end -= '\u{FFFD}'.len_utf8();
    }
    let body = &text[..end];
    let mut keep = end;
    for s in stops {
        for (at, _) in s.char_indices().skip(1) {
            if body.ends_with(&s[..at]) {
                keep = keep.min(end - at);
            }
        }
    }
    keep
}

/// What a caught panic says (its `&str` or `String` payload).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
    format!("panicked: {}", text.unwrap_or("(no message)"))
}

/// Where the first stop string in `text` starts, given that none ended before `new` (the
/// start of the text taken last): only the tail a new match can reach is searched.
fn first_stop(text: &str, new: usize, stops: &[String]) -> Option<usize> {
    let longest = stops.iter().map(String::len).max()?;
    let mut from = new
        .saturating_sub(longest.saturating_sub(1))
        .min(text.len());
    while !text.is_char_boundary(from) {
        from -= 1;
    }
    stops
        .iter()
        .filter_map(|s| text[from..].find(s.as_str()))
        .min()
        .map(|at| from + at)
}

#[cfg(test)]
mod tests {
    use super::{first_stop, held_back, panic_message};

    #[test]
    fn a_stop_string_is_found_where_it_ends_in_the_new_text() {
        let stops = vec!["END".to_string(), "é!".to_string()];
        // "EN" was there before, "D" is new: the match starts in the old text.
        assert_eq!(first_stop("abc END", 6, &stops), Some(4));
        assert_eq!(first_stop("abc EN", 4, &stops), None);
        assert_eq!(first_stop("xé!", 3, &stops), Some(1));
        // The earliest of two ending in the new text; a search start inside a two-byte
        // character backs up to its start.
        let two = ["D".to_string(), "ND".to_string()];
        assert_eq!(first_stop("aND", 2, &two), Some(1));
        let wide = ["ND!".to_string(), "zzzz".to_string()];
        assert_eq!(first_stop("aéND!", 5, &wide), Some(3));
        assert_eq!(first_stop("abc", 0, &[]), None);
    }

    #[test]
    fn text_that_may_start_a_stop_string_waits() {
        let stops = vec!["END".to_string()];
        assert_eq!(held_back("abc EN", &stops), 4);
        assert_eq!(held_back("abc E", &stops), 4);
        assert_eq!(held_back("abc", &stops), 3);
        assert_eq!(held_back("ab\u{FFFD}", &[]), 2);
    }

    #[test]
    fn a_panics_message_is_kept() {
        let caught = |f: fn()| std::panic::catch_unwind(f).unwrap_err();
        assert_eq!(
            panic_message(caught(|| panic!("boom")).as_ref()),
            "panicked: boom"
        );
        let n = 3;
        let owned = std::panic::catch_unwind(move || panic!("{n} rows")).unwrap_err();
        assert_eq!(panic_message(owned.as_ref()), "panicked: 3 rows");
    }
}
