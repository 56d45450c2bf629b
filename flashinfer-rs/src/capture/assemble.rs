//! Per-request assembly: a step's rows, attributed to (request, position), accumulate into
//! each request's routing until it finishes and is exported.

use std::collections::HashMap;

use super::export::{check_ids, RoutedExperts, MAX_EXPORT_EXPERTS, UNKNOWN};
use super::replicas::ExpertMap;
use crate::alloc;
use crate::error::{ensure, Error, Result};

/// A request, as the serving loop names it.
pub type RequestId = u64;

/// Who one row of a step belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOwner {
    /// Token `position` (0 = first prompt token) of a request.
    Token {
        /// The request.
        request: RequestId,
        /// Position in the request's sequence.
        position: usize,
    },
    /// A row that is no token of this rank's requests (graph padding, another rank's row).
    Padding,
}

/// One step's captured rows, token-major: `ids[(row * layers + layer) * top_k + k]`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct StepRows {
    /// Rows of the step.
    pub tokens: usize,
    /// MoE layers.
    pub layers: usize,
    /// Experts per layer.
    pub top_k: usize,
    /// `tokens * layers * top_k` expert ids.
    pub ids: Vec<i16>,
    /// With weights capture: the routing weight of each id, same shape.
    pub weights: Option<Vec<f32>>,
}

/// One step's captured rows as they land from the device, layer-major:
/// `ids[(layer * tokens + row) * top_k + k]` ([`StepBuffer::rows`](super::StepBuffer::rows)).
#[derive(Debug, Clone, Copy)]
pub struct LayerMajorRows<'a> {
    /// Rows of the step.
    pub tokens: usize,
    /// MoE layers.
    pub layers: usize,
    /// Experts per layer.
    pub top_k: usize,
    /// `layers * tokens * top_k` expert ids.
    pub ids: &'a [i16],
    /// With weights capture: the weight of each id, same layout.
    pub weights: Option<&'a [f32]>,
}

/// Where one row of a step lies: contiguous (token-major) or one `top_k` run per layer
/// (layer-major, `rows` rows per layer).
#[derive(Clone, Copy)]
enum RowOf<'a, T> {
    Contiguous(&'a [T]),
    Strided {
        all: &'a [T],
        rows: usize,
        row: usize,
        top_k: usize,
    },
}

impl<T: Copy> RowOf<'_, T> {
    fn copy_to(self, dst: &mut [T]) {
        match self {
            RowOf::Contiguous(src) => dst.copy_from_slice(src),
            RowOf::Strided {
                all,
                rows,
                row,
                top_k,
            } => {
                for (layer, d) in dst.chunks_exact_mut(top_k).enumerate() {
                    d.copy_from_slice(&all[(layer * rows + row) * top_k..][..top_k]);
                }
            }
        }
    }
}

#[derive(Debug, Default)]
struct Track {
    prompt_start: usize,
    /// The first position [`Assembler::export_new`] has not exported yet.
    exported: usize,
    /// `positions * layers * top_k` ids, UNKNOWN where never written.
    ids: Vec<i16>,
    /// Their weights, NaN where never written: from the first step that brought weights.
    weights: Option<Vec<f32>>,
}

/// The shape of what an [`Assembler`] collects, and the bound on it. Made with
/// [`AssemblerConfig::new`] (non-exhaustive: a field added later breaks no caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AssemblerConfig {
    /// MoE layers per row (> 0).
    pub layers: usize,
    /// Experts per layer (> 0).
    pub top_k: usize,
    /// Experts in the model: every id pushed must be in `[0, num_experts)` or
    /// [`UNKNOWN`] (at most [`MAX_EXPORT_EXPERTS`]); with an [`ExpertMap`], the physical
    /// experts.
    pub num_experts: u32,
    /// Longest sequence a request may have (the server's maximum model length): positions
    /// are `< max_positions`, so a request holds at most `max_positions * layers * top_k`
    /// ids (2 bytes each, while tracked and again when exported). A stray position or token
    /// count is an error, never an allocation beyond that bound.
    pub max_positions: usize,
}

impl AssemblerConfig {
    /// `layers` MoE layers of `top_k` experts each, ids below `num_experts`, requests of at
    /// most `max_positions` positions (checked by [`Assembler::new`]).
    pub fn new(layers: usize, top_k: usize, num_experts: u32, max_positions: usize) -> Self {
        AssemblerConfig {
            layers,
            top_k,
            num_experts,
            max_positions,
        }
    }

    /// Ids of one row (`layers * top_k`), or the rule the config breaks.
    fn validate(&self) -> Result<usize> {
        let AssemblerConfig {
            layers,
            top_k,
            num_experts,
            max_positions,
        } = *self;
        ensure(layers > 0, "layers", || "must be > 0".into())?;
        ensure(top_k > 0, "top_k", || "must be > 0".into())?;
        ensure(
            (1..=MAX_EXPORT_EXPERTS).contains(&num_experts),
            "num_experts",
            || format!("must be in 1..={MAX_EXPORT_EXPERTS}, got {num_experts}"),
        )?;
        ensure(max_positions > 0, "max_positions", || "must be > 0".into())?;
        let row = layers
            .checked_mul(top_k)
            .filter(|row| row.checked_mul(max_positions).is_some_and(|n| n <= isize::MAX as usize / 2))
            .ok_or_else(|| {
                Error::invalid(
                    "max_positions",
                    format!(
                        "{max_positions} positions x {layers} layers x top_k {top_k} ids do not fit memory"
                    ),
                )
            })?;
        Ok(row)
    }
}

/// Collects routed experts per request across steps.
///
/// What a serving loop tells the assembler, and what it does with it:
/// - [`Assembler::start`]: a request arrives (with the prompt prefix to skip on export);
/// - [`Assembler::push_step`]: a step's rows, each owned by `(request, position)` or padding;
///   padding and rows of requests no longer tracked (aborted) are dropped;
/// - [`Assembler::truncate`]: speculative decoding rejected the draft positions from `len` on:
///   their rows become unknown again (the next step rewrites the accepted ones);
/// - preemption needs no call: the re-prefill's step rows overwrite the same positions;
/// - [`Assembler::abort`] forgets a request; [`Assembler::finish`] exports it, and
///   [`Assembler::export_new`] / [`Assembler::export_range`] export a part of it while it runs
///   (multi-turn and streaming requests), copying only the rows asked for.
///
/// With an [`ExpertMap`] ([`Assembler::with_expert_map`]) the rows arrive with the physical
/// ids the kernels wrote and are kept, and exported, as logical ids.
#[derive(Debug)]
pub struct Assembler {
    config: AssemblerConfig,
    /// `layers * top_k`.
    row: usize,
    requests: HashMap<RequestId, Track>,
    dropped_rows: u64,
    /// Physical ids to logical ones, as rows enter.
    expert_map: Option<ExpertMap>,
}

/// A part of a request's routing: rows `[first_position, first_position + experts.tokens())`.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutedSpan {
    /// Position of the first exported row.
    pub first_position: usize,
    /// The rows, in the export formats.
    pub experts: RoutedExperts,
}

impl Assembler {
    /// An assembler for `config`, checked: zero sizes, an expert count the exports cannot
    /// carry and a per-request bound that overflows are refused.
    pub fn new(config: AssemblerConfig) -> Result<Assembler> {
        let row = config.validate()?;
        Ok(Assembler {
            config,
            row,
            requests: HashMap::new(),
            dropped_rows: 0,
            expert_map: None,
        })
    }

    /// An assembler whose rows carry physical expert ids (`config.num_experts` of them, the
    /// map's physical count), kept and exported as the logical ids `map` gives them.
    pub fn with_expert_map(config: AssemblerConfig, map: ExpertMap) -> Result<Assembler> {
        ensure(
            config.num_experts == map.num_physical(),
            "expert_map",
            || {
                format!(
                    "maps {} physical experts, the config has num_experts = {}",
                    map.num_physical(),
                    config.num_experts
                )
            },
        )?;
        Ok(Assembler {
            expert_map: Some(map),
            ..Assembler::new(config)?
        })
    }

    /// Experts of the exported ids: the logical ones with a map.
    fn export_experts(&self) -> u32 {
        self.expert_map
            .as_ref()
            .map_or(self.config.num_experts, ExpertMap::num_logical)
    }

    /// What this assembler was built with.
    pub fn config(&self) -> &AssemblerConfig {
        &self.config
    }

    fn check_position(&self, position: usize) -> Result<()> {
        let max = self.config.max_positions;
        ensure(position < max, "position", || {
            format!("{position} is not below max_positions ({max})")
        })
    }

    /// Starts tracking `request`; on export the first `prompt_start` positions are skipped
    /// (vLLM's `routed_experts_prompt_start`; at most `max_positions`).
    pub fn start(&mut self, request: RequestId, prompt_start: usize) -> Result<()> {
        ensure(!self.requests.contains_key(&request), "request", || {
            format!("{request} is already tracked")
        })?;
        let max = self.config.max_positions;
        ensure(prompt_start <= max, "prompt_start", || {
            format!("{prompt_start} is beyond max_positions ({max})")
        })?;
        self.requests.insert(
            request,
            Track {
                prompt_start,
                exported: prompt_start,
                ids: Vec::new(),
                weights: None,
            },
        );
        Ok(())
    }

    /// Requests being tracked.
    pub fn active(&self) -> usize {
        self.requests.len()
    }

    /// Rows dropped so far because their request was no longer tracked (aborted).
    pub fn dropped_rows(&self) -> u64 {
        self.dropped_rows
    }

    /// Records a step: row `r` of `step` belongs to `owners[r]`. The whole step is checked
    /// first (shape, every owner's position, every id: an expert of the model or
    /// [`UNKNOWN`]); a step that breaks a rule changes nothing.
    pub fn push_step(&mut self, step: &StepRows, owners: &[RowOwner]) -> Result<()> {
        let shape = (step.tokens, step.layers, step.top_k);
        self.check_step(shape, &step.ids, step.weights.as_deref(), owners)?;
        self.reserve(owners, step.weights.is_some())?;
        let row = self.row;
        self.write_rows(owners, |r| {
            let span = r * row..(r + 1) * row;
            (
                RowOf::Contiguous(&step.ids[span.clone()]),
                step.weights.as_ref().map(|w| RowOf::Contiguous(&w[span])),
            )
        });
        Ok(())
    }

    /// [`push_step`](Self::push_step) for rows as they landed from the device, layer-major:
    /// each row is gathered straight into its request, with no transpose of the step first.
    pub fn push_layer_major(
        &mut self,
        step: &LayerMajorRows<'_>,
        owners: &[RowOwner],
    ) -> Result<()> {
        let shape = (step.tokens, step.layers, step.top_k);
        self.check_step(shape, step.ids, step.weights, owners)?;
        self.reserve(owners, step.weights.is_some())?;
        let (rows, top_k) = (step.tokens, step.top_k);
        self.write_rows(owners, |row| {
            (
                RowOf::Strided {
                    all: step.ids,
                    rows,
                    row,
                    top_k,
                },
                step.weights.map(|all| RowOf::Strided {
                    all,
                    rows,
                    row,
                    top_k,
                }),
            )
        });
        Ok(())
    }

    /// The rules of a step, checked before any row is written.
    fn check_step(
        &self,
        (tokens, layers, top_k): (usize, usize, usize),
        ids: &[i16],
        weights: Option<&[f32]>,
        owners: &[RowOwner],
    ) -> Result<()> {
        let (want_layers, want_k) = (self.config.layers, self.config.top_k);
        ensure(layers == want_layers && top_k == want_k, "step", || {
            format!("has {layers} layers x top_k {top_k}, the assembler {want_layers} x {want_k}")
        })?;
        ensure(
            tokens.checked_mul(self.row) == Some(ids.len()),
            "step",
            || "ids do not match tokens x layers x top_k".into(),
        )?;
        ensure(owners.len() == tokens, "owners", || {
            format!("names {} rows, the step has {tokens}", owners.len())
        })?;
        ensure(weights.is_none_or(|w| w.len() == ids.len()), "step", || {
            "weights do not match its ids".into()
        })?;
        for owner in owners {
            if let RowOwner::Token { position, .. } = *owner {
                self.check_position(position)?;
            }
        }
        check_ids(ids, self.config.num_experts)
    }

    /// Reserves the host memory every owned row will be written into, before any is written:
    /// a step whose rows cannot all be had ([`Error::HostAllocation`]) changes nothing. A
    /// request that gets its first weights with this step gets its (empty) weight track here.
    fn reserve(&mut self, owners: &[RowOwner], weights: bool) -> Result<()> {
        let row = self.row;
        // Each request's furthest row of the step (positions are checked: the product fits).
        let mut ends: HashMap<RequestId, usize> = HashMap::new();
        for owner in owners {
            if let RowOwner::Token { request, position } = *owner {
                if self.requests.contains_key(&request) {
                    let end = ends.entry(request).or_default();
                    *end = (*end).max((position + 1) * row);
                }
            }
        }
        let mut new_weights = Vec::new();
        for (&request, &end) in &ends {
            let Some(track) = self.requests.get_mut(&request) else {
                continue; // `ends` holds tracked requests only
            };
            alloc::reserve("ids", &mut track.ids, end)?;
            match &mut track.weights {
                Some(w) => alloc::reserve("weights", w, end)?,
                None if weights => {
                    new_weights.push((request, alloc::with_capacity("weights", end)?))
                }
                None => {}
            }
        }
        for (request, w) in new_weights {
            if let Some(track) = self.requests.get_mut(&request) {
                track.weights = Some(w);
            }
        }
        Ok(())
    }

    /// Writes each owned row `r` (`row_of(r)`: its ids and weights) into its request (whose
    /// memory [`reserve`](Self::reserve) took); rows of requests no longer tracked are counted
    /// as dropped.
    fn write_rows<'a>(
        &mut self,
        owners: &[RowOwner],
        row_of: impl Fn(usize) -> (RowOf<'a, i16>, Option<RowOf<'a, f32>>),
    ) {
        let row = self.row;
        for (r, owner) in owners.iter().enumerate() {
            let RowOwner::Token { request, position } = *owner else {
                continue;
            };
            match self.requests.get_mut(&request) {
                Some(track) => {
                    let (ids, weights) = row_of(r);
                    write_row(track, row, position, ids, weights, self.expert_map.as_ref());
                }
                None => self.dropped_rows += 1,
            }
        }
    }

    /// Sets one position's row from elsewhere, e.g. a prefix-cache hit's routing from a
    /// [`SlotStore`](super::SlotStore) (`layers * top_k` ids, each an expert or [`UNKNOWN`];
    /// physical ids, like a step's, where the assembler has an [`ExpertMap`]).
    pub fn set_row(&mut self, request: RequestId, position: usize, ids: &[i16]) -> Result<()> {
        let row = self.row;
        ensure(ids.len() == row, "ids", || {
            format!("holds {}, a row is layers x top_k = {row}", ids.len())
        })?;
        self.check_position(position)?;
        check_ids(ids, self.config.num_experts)?;
        let track = self
            .requests
            .get_mut(&request)
            .ok_or_else(|| unknown(request))?;
        alloc::reserve("ids", &mut track.ids, (position + 1) * row)?;
        if let Some(w) = &mut track.weights {
            alloc::reserve("weights", w, (position + 1) * row)?;
        }
        write_row(
            track,
            row,
            position,
            RowOf::Contiguous(ids),
            None,
            self.expert_map.as_ref(),
        );
        Ok(())
    }

    /// Forgets every position from `len` on (rejected speculative tokens); positions from
    /// `len` on that [`export_new`](Self::export_new) had exported are exported again by its
    /// next call.
    pub fn truncate(&mut self, request: RequestId, len: usize) -> Result<()> {
        let row = self.row;
        let track = self
            .requests
            .get_mut(&request)
            .ok_or_else(|| unknown(request))?;
        track.ids.truncate(len.saturating_mul(row));
        if let Some(w) = &mut track.weights {
            w.truncate(len.saturating_mul(row));
        }
        track.exported = track.exported.min(len.max(track.prompt_start));
        Ok(())
    }

    /// Stops tracking `request`; its later rows are dropped.
    pub fn abort(&mut self, request: RequestId) -> bool {
        self.requests.remove(&request).is_some()
    }

    /// Exports a finished request of `num_tokens` tokens (prompt + generated, at most
    /// `max_positions + 1`): rows `[prompt_start, num_tokens - 1)`, as vLLM returns them (the
    /// last sampled token is never run through the model). Rows never written are [`UNKNOWN`].
    /// On an error the request stays tracked.
    pub fn finish(&mut self, request: RequestId, num_tokens: usize) -> Result<RoutedExperts> {
        let end = self.end_of(num_tokens)?;
        let track = self
            .requests
            .get(&request)
            .ok_or_else(|| unknown(request))?;
        let experts = self.rows(track, track.prompt_start.min(end), end)?;
        self.requests.remove(&request);
        Ok(experts)
    }

    /// Exports the rows of a running request that no earlier call exported: from its prompt
    /// start the first time, then from where the last call ended, up to `num_tokens - 1` (as
    /// [`finish`](Self::finish) counts them). Only those rows are copied; the request stays
    /// tracked, and [`finish`](Self::finish) still returns all of it.
    ///
    /// ```
    /// use flashinfer_rs::capture::{Assembler, AssemblerConfig, RowOwner, StepRows};
    ///
    /// let config = AssemblerConfig::new(1, 1, 8, 64);
    /// let mut asm = Assembler::new(config)?;
    /// asm.start(7, 0)?;
    /// let owners = [0, 1, 2].map(|position| RowOwner::Token { request: 7, position });
    /// let rows = StepRows { tokens: 3, layers: 1, top_k: 1, ids: vec![5, 6, 7], weights: None };
    /// asm.push_step(&rows, &owners)?;
    /// // A streaming response of 4 tokens so far: rows 0..3, once.
    /// let span = asm.export_new(7, 4)?;
    /// assert_eq!((span.first_position, span.experts.ids()), (0, &[5i16, 6, 7][..]));
    /// assert_eq!(asm.export_new(7, 4)?.experts.tokens(), 0); // nothing new
    /// # Ok::<(), flashinfer_rs::Error>(())
    /// ```
    pub fn export_new(&mut self, request: RequestId, num_tokens: usize) -> Result<RoutedSpan> {
        let end = self.end_of(num_tokens)?;
        let track = self
            .requests
            .get(&request)
            .ok_or_else(|| unknown(request))?;
        let from = track.exported.min(end);
        let experts = self.rows(track, from, end)?;
        if let Some(track) = self.requests.get_mut(&request) {
            track.exported = track.exported.max(end);
        }
        Ok(RoutedSpan {
            first_position: from,
            experts,
        })
    }

    /// Exports rows `[from, num_tokens - 1)` of a running request (any `from` up to that end,
    /// the prompt start or a position the server remembers), copying only those rows; what
    /// [`export_new`](Self::export_new) has exported is not changed.
    pub fn export_range(
        &self,
        request: RequestId,
        from: usize,
        num_tokens: usize,
    ) -> Result<RoutedSpan> {
        let end = self.end_of(num_tokens)?;
        ensure(from <= end, "from", || {
            format!("{from} is beyond the request's last row ({end} rows for {num_tokens} tokens)")
        })?;
        let track = self
            .requests
            .get(&request)
            .ok_or_else(|| unknown(request))?;
        Ok(RoutedSpan {
            first_position: from,
            experts: self.rows(track, from, end)?,
        })
    }

    /// The end (exclusive) of the exported rows of a request of `num_tokens` tokens.
    fn end_of(&self, num_tokens: usize) -> Result<usize> {
        let max = self.config.max_positions;
        ensure(num_tokens <= max + 1, "num_tokens", || {
            format!("{num_tokens} is beyond max_positions + 1 ({})", max + 1)
        })?;
        Ok(num_tokens.saturating_sub(1))
    }

    /// Rows `[from, end)` of `track` (`from <= end`), UNKNOWN where never written.
    fn rows(&self, track: &Track, from: usize, end: usize) -> Result<RoutedExperts> {
        let row = self.row;
        let n = (end - from) * row;
        let mut ids = alloc::filled("ids", n, UNKNOWN)?;
        let have = (track.ids.len() / row).min(end);
        if have > from {
            ids[..(have - from) * row].copy_from_slice(&track.ids[from * row..have * row]);
        }
        // Every id came in through check_ids (and the map): this does not fail.
        let experts = RoutedExperts::new(
            end - from,
            self.config.layers,
            self.config.top_k,
            ids,
            self.export_experts(),
        )?;
        match &track.weights {
            None => Ok(experts),
            Some(w) => {
                let mut weights = alloc::filled("weights", n, f32::NAN)?;
                let have = (w.len() / row).min(end);
                if have > from {
                    weights[..(have - from) * row].copy_from_slice(&w[from * row..have * row]);
                }
                experts.with_weights(weights)
            }
        }
    }
}

/// Writes `ids` (one checked row) at `position` of `track`, growing it with UNKNOWN rows as
/// needed, as logical ids where there is a `map`; and its `weights` (NaN where a row has
/// none, once the track keeps weights). The caller has bounded `position` by `max_positions`
/// and reserved the memory (so the growth below does not allocate).
fn write_row(
    track: &mut Track,
    row: usize,
    position: usize,
    ids: RowOf<'_, i16>,
    weights: Option<RowOf<'_, f32>>,
    map: Option<&ExpertMap>,
) {
    let span = position * row..(position + 1) * row;
    if track.ids.len() < span.end {
        track.ids.resize(span.end, UNKNOWN);
    }
    let dst = &mut track.ids[span.clone()];
    ids.copy_to(dst);
    if let Some(map) = map {
        map.to_logical(dst);
    }
    if weights.is_some() && track.weights.is_none() {
        track.weights = Some(Vec::new());
    }
    if let Some(kept) = &mut track.weights {
        if kept.len() < span.end {
            kept.resize(span.end, f32::NAN);
        }
        match weights {
            Some(w) => w.copy_to(&mut kept[span]),
            None => kept[span].fill(f32::NAN),
        }
    }
}

fn unknown(request: RequestId) -> Error {
    Error::invalid("request", format!("{request} is not tracked"))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod model_tests;
