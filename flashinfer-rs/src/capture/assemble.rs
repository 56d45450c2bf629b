//! Per-request assembly: a step's rows, attributed to (request, position), accumulate into
//! each request's routing until it finishes and is exported.
//!
//! What a serving loop tells the assembler, and what it does with it:
//! - [`Assembler::start`]: a request arrives (with the prompt prefix to skip on export);
//! - [`Assembler::push_step`]: a step's rows, each owned by `(request, position)` or padding;
//!   padding and rows of requests no longer tracked (aborted) are dropped;
//! - [`Assembler::truncate`]: speculative decoding rejected the draft positions from `len` on:
//!   their rows become unknown again (the next step rewrites the accepted ones);
//! - preemption needs no call: the re-prefill's step rows overwrite the same positions;
//! - [`Assembler::abort`] forgets a request; [`Assembler::finish`] exports it.
use std::collections::HashMap;

use super::export::{check_ids, RoutedExperts, MAX_EXPORT_EXPERTS, UNKNOWN};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRows {
    /// Rows of the step.
    pub tokens: usize,
    /// MoE layers.
    pub layers: usize,
    /// Experts per layer.
    pub top_k: usize,
    /// `tokens * layers * top_k` expert ids.
    pub ids: Vec<i16>,
}

#[derive(Debug, Default)]
struct Track {
    prompt_start: usize,
    /// `positions * layers * top_k` ids, UNKNOWN where never written.
    ids: Vec<i16>,
}

/// The shape of what an [`Assembler`] collects, and the bound on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AssemblerConfig {
    /// MoE layers per row (> 0).
    pub layers: usize,
    /// Experts per layer (> 0).
    pub top_k: usize,
    /// Experts in the model: every id pushed must be in `[0, num_experts)` or
    /// [`UNKNOWN`] (at most [`MAX_EXPORT_EXPERTS`]).
    pub num_experts: u32,
    /// Longest sequence a request may have (the server's maximum model length): positions
    /// are `< max_positions`, so a request holds at most `max_positions * layers * top_k`
    /// ids (2 bytes each, while tracked and again when exported). A stray position or token
    /// count is an error, never an allocation beyond that bound.
    pub max_positions: usize,
}

impl AssemblerConfig {
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
#[derive(Debug)]
pub struct Assembler {
    config: AssemblerConfig,
    /// `layers * top_k`.
    row: usize,
    requests: HashMap<RequestId, Track>,
    dropped_rows: u64,
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
        })
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
                ids: Vec::new(),
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
        let row = self.row;
        let (layers, top_k) = (self.config.layers, self.config.top_k);
        ensure(step.layers == layers && step.top_k == top_k, "step", || {
            format!(
                "has {} layers x top_k {}, the assembler {layers} x {top_k}",
                step.layers, step.top_k
            )
        })?;
        ensure(
            step.tokens.checked_mul(row) == Some(step.ids.len()),
            "step",
            || "ids do not match tokens x layers x top_k".into(),
        )?;
        ensure(owners.len() == step.tokens, "owners", || {
            format!("names {} rows, the step has {}", owners.len(), step.tokens)
        })?;
        for owner in owners {
            if let RowOwner::Token { position, .. } = *owner {
                self.check_position(position)?;
            }
        }
        check_ids(&step.ids, self.config.num_experts)?;
        for (r, owner) in owners.iter().enumerate() {
            let RowOwner::Token { request, position } = *owner else {
                continue;
            };
            match self.requests.get_mut(&request) {
                Some(track) => write_row(track, row, position, &step.ids[r * row..(r + 1) * row]),
                None => self.dropped_rows += 1,
            }
        }
        Ok(())
    }

    /// Sets one position's row from elsewhere, e.g. a prefix-cache hit's routing from a
    /// [`SlotStore`](super::SlotStore) (`layers * top_k` ids, each an expert or [`UNKNOWN`]).
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
        write_row(track, row, position, ids);
        Ok(())
    }

    /// Forgets every position from `len` on (rejected speculative tokens).
    pub fn truncate(&mut self, request: RequestId, len: usize) -> Result<()> {
        let row = self.row;
        let track = self
            .requests
            .get_mut(&request)
            .ok_or_else(|| unknown(request))?;
        track.ids.truncate(len.saturating_mul(row));
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
        let max = self.config.max_positions;
        ensure(num_tokens <= max + 1, "num_tokens", || {
            format!("{num_tokens} is beyond max_positions + 1 ({})", max + 1)
        })?;
        let track = self
            .requests
            .remove(&request)
            .ok_or_else(|| unknown(request))?;
        let row = self.row;
        let end = num_tokens.saturating_sub(1);
        let start = track.prompt_start.min(end);
        let mut ids = vec![UNKNOWN; (end - start) * row];
        let have = (track.ids.len() / row).min(end);
        if have > start {
            ids[..(have - start) * row].copy_from_slice(&track.ids[start * row..have * row]);
        }
        // Every id came in through check_ids: this cannot fail.
        RoutedExperts::new(
            end - start,
            self.config.layers,
            self.config.top_k,
            ids,
            self.config.num_experts,
        )
    }
}

/// Writes `ids` (one row) at `position` of `track`, growing it with UNKNOWN rows as needed.
/// The caller has bounded `position` by `max_positions`.
fn write_row(track: &mut Track, row: usize, position: usize, ids: &[i16]) {
    let end = (position + 1) * row;
    if track.ids.len() < end {
        track.ids.resize(end, UNKNOWN);
    }
    track.ids[position * row..end].copy_from_slice(ids);
}

fn unknown(request: RequestId) -> Error {
    Error::invalid("request", format!("{request} is not tracked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step whose row r holds value `base + r` everywhere.
    fn step(rows: usize, base: i16) -> StepRows {
        StepRows {
            tokens: rows,
            layers: 2,
            top_k: 2,
            ids: (0..rows).flat_map(|r| [base + r as i16; 4]).collect(),
        }
    }
    /// An assembler of `layers x top_k` for `num_experts` experts, up to 1024 positions.
    fn asm(layers: usize, top_k: usize, num_experts: u32) -> Assembler {
        Assembler::new(AssemblerConfig {
            layers,
            top_k,
            num_experts,
            max_positions: 1024,
        })
        .unwrap()
    }
    fn tok(request: RequestId, position: usize) -> RowOwner {
        RowOwner::Token { request, position }
    }
    /// The first id of each exported row.
    fn firsts(r: &RoutedExperts) -> Vec<i16> {
        r.ids().chunks(4).map(|c| c[0]).collect()
    }

    #[test]
    fn prefill_and_decode_rows_land_at_their_positions_and_export_drops_the_last_token() {
        let mut a = asm(2, 2, 64);
        a.start(1, 0).unwrap();
        a.push_step(&step(3, 10), &[tok(1, 0), tok(1, 1), tok(1, 2)])
            .unwrap(); // prefill
        a.push_step(&step(1, 20), &[tok(1, 3)]).unwrap(); // decode
        let r = a.finish(1, 5).unwrap(); // 3 prompt + 2 generated; last one never ran
        assert_eq!((r.tokens(), r.layers(), r.top_k()), (4, 2, 2));
        assert_eq!(firsts(&r), vec![10, 11, 12, 20]);
    }

    #[test]
    fn padding_and_other_requests_rows_go_where_they_belong() {
        let mut a = asm(2, 2, 64);
        a.start(1, 0).unwrap();
        a.start(2, 0).unwrap();
        a.push_step(
            &step(4, 0),
            &[tok(2, 0), RowOwner::Padding, tok(1, 0), tok(2, 1)],
        )
        .unwrap();
        assert_eq!(firsts(&a.finish(1, 2).unwrap()), vec![2]);
        assert_eq!(firsts(&a.finish(2, 3).unwrap()), vec![0, 3]);
    }

    #[test]
    fn rejected_speculative_rows_are_forgotten_and_rewritten() {
        let mut a = asm(2, 2, 64);
        a.start(7, 0).unwrap();
        a.push_step(&step(2, 0), &[tok(7, 0), tok(7, 1)]).unwrap();
        // Verify step: the draft proposed positions 2..5; only 2 and 3 are accepted.
        a.push_step(&step(3, 30), &[tok(7, 2), tok(7, 3), tok(7, 4)])
            .unwrap();
        a.truncate(7, 4).unwrap();
        let r = a.finish(7, 6).unwrap();
        // Position 4 was rejected and never rewritten: unknown, not a stale draft row.
        assert_eq!(firsts(&r), vec![0, 1, 30, 31, UNKNOWN]);
        assert_eq!(r.dtype(), super::super::export::ExportDtype::I16);
    }

    #[test]
    fn aborted_requests_drop_their_in_flight_rows() {
        let mut a = asm(2, 2, 64);
        a.start(1, 0).unwrap();
        assert!(a.abort(1));
        a.push_step(&step(2, 0), &[tok(1, 0), tok(1, 1)]).unwrap();
        assert_eq!((a.active(), a.dropped_rows()), (0, 2));
        assert!(a.finish(1, 3).is_err());
    }

    #[test]
    fn preemption_and_re_prefill_overwrite_the_same_positions() {
        let mut a = asm(2, 2, 64);
        a.start(3, 0).unwrap();
        a.push_step(&step(3, 0), &[tok(3, 0), tok(3, 1), tok(3, 2)])
            .unwrap();
        // Preempted, then recomputed from scratch in a later step.
        a.push_step(&step(3, 40), &[tok(3, 0), tok(3, 1), tok(3, 2)])
            .unwrap();
        assert_eq!(firsts(&a.finish(3, 4).unwrap()), vec![40, 41, 42]);
    }

    #[test]
    fn the_prompt_start_offset_skips_a_prefix_and_unwritten_rows_are_unknown() {
        let mut a = asm(2, 2, 64);
        a.start(5, 2).unwrap();
        // A prefix-cache hit: positions 0..3 never ran; 3 and 4 did.
        a.push_step(&step(2, 50), &[tok(5, 3), tok(5, 4)]).unwrap();
        let r = a.finish(5, 6).unwrap();
        assert_eq!(firsts(&r), vec![UNKNOWN, 50, 51]);
        // A prompt_start beyond the sequence exports nothing rather than failing.
        a.start(6, 10).unwrap();
        assert_eq!(a.finish(6, 4).unwrap().tokens(), 0);
    }

    #[test]
    fn a_prefix_cache_hit_takes_its_rows_from_the_slot_store() {
        use crate::capture::{SlotStore, SlotStoreConfig};
        let mut slots = SlotStore::new(SlotStoreConfig {
            num_slots: 8,
            layers: 2,
            top_k: 2,
            num_experts: 128, // ids 60..71 below
            max_bytes: 1 << 10,
        })
        .unwrap();
        // An earlier request computed KV slots 0 and 1.
        slots.record(&[Some(0), Some(1)], &step(2, 60)).unwrap();
        let mut a = asm(2, 2, 128);
        a.start(9, 0).unwrap();
        // The new request's prompt reuses slots 0, 1 (cached) and 2 (never computed), then runs.
        for (position, slot) in [(0, 0), (1, 1), (2, 2)] {
            if let Some(row) = slots.lookup(slot) {
                a.set_row(9, position, &row).unwrap();
            }
        }
        a.push_step(&step(1, 70), &[tok(9, 3)]).unwrap();
        assert_eq!(firsts(&a.finish(9, 5).unwrap()), vec![60, 61, UNKNOWN, 70]);
    }

    #[test]
    fn malformed_steps_are_refused() {
        let mut a = asm(2, 2, 64);
        assert!(a.push_step(&step(2, 0), &[RowOwner::Padding]).is_err());
        let wrong = StepRows {
            tokens: 1,
            layers: 3,
            top_k: 2,
            ids: vec![0; 6],
        };
        assert!(a.push_step(&wrong, &[RowOwner::Padding]).is_err());
        a.start(1, 0).unwrap();
        assert!(a.start(1, 0).is_err());
    }

    #[test]
    fn zero_and_overflowing_sizes_are_refused_at_construction() {
        let ok = AssemblerConfig {
            layers: 2,
            top_k: 2,
            num_experts: 64,
            max_positions: 8,
        };
        for (bad, arg) in [
            (AssemblerConfig { layers: 0, ..ok }, "layers"),
            (AssemblerConfig { top_k: 0, ..ok }, "top_k"),
            (
                AssemblerConfig {
                    num_experts: 0,
                    ..ok
                },
                "num_experts",
            ),
            (
                AssemblerConfig {
                    num_experts: 40_000,
                    ..ok
                },
                "num_experts",
            ),
            (
                AssemblerConfig {
                    max_positions: 0,
                    ..ok
                },
                "max_positions",
            ),
            (
                AssemblerConfig {
                    max_positions: usize::MAX,
                    ..ok
                },
                "max_positions",
            ),
            (
                AssemblerConfig {
                    layers: usize::MAX,
                    ..ok
                },
                "max_positions",
            ),
        ] {
            match Assembler::new(bad) {
                Err(Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg, "{bad:?}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn stray_positions_and_token_counts_are_errors_not_allocations() {
        let mut a = asm(2, 2, 64);
        a.start(1, 0).unwrap();
        for position in [1024, usize::MAX / 4, usize::MAX] {
            let e = a.push_step(&step(1, 0), &[tok(1, position)]).unwrap_err();
            assert!(e.to_string().contains("max_positions"), "{e}");
            assert!(a.set_row(1, position, &[0; 4]).is_err());
        }
        assert!(
            a.start(2, 1025).is_err(),
            "prompt_start beyond max_positions"
        );
        assert!(
            a.truncate(1, usize::MAX).is_ok(),
            "truncating past the end is a no-op"
        );
        let e = a.finish(1, usize::MAX).unwrap_err();
        assert!(e.to_string().contains("num_tokens"), "{e}");
        assert_eq!(a.active(), 1, "a refused finish keeps the request");
        assert_eq!(a.finish(1, 1025).unwrap().tokens(), 1024);
    }

    #[test]
    fn ids_outside_the_model_are_refused_and_a_refused_step_changes_nothing() {
        let mut a = asm(2, 2, 64);
        a.start(1, 0).unwrap();
        let mut bad = step(2, 10);
        bad.ids[6] = 64; // row 1
        assert!(a.push_step(&bad, &[tok(1, 0), tok(1, 1)]).is_err());
        bad.ids[6] = -2;
        assert!(a.push_step(&bad, &[tok(1, 0), tok(1, 1)]).is_err());
        assert!(a.set_row(1, 0, &[0, 1, 2, 300]).is_err());
        // Row 0 was fine, but the step was refused as a whole: nothing was recorded.
        assert_eq!(firsts(&a.finish(1, 3).unwrap()), vec![UNKNOWN, UNKNOWN]);
        // UNKNOWN is a valid id: it stays unknown through the export.
        let mut a = asm(2, 2, 64);
        a.start(1, 0).unwrap();
        a.set_row(1, 0, &[3, UNKNOWN, 5, 6]).unwrap();
        assert_eq!(a.finish(1, 2).unwrap().ids(), &[3, UNKNOWN, 5, 6]);
    }
}

#[cfg(test)]
mod model_tests {
    //! The assembler against a naive model (a map from position to row per request) over random
    //! serving histories: steps with padding and several requests, speculative truncation,
    //! aborts, re-prefill, prompt offsets.
    use std::collections::{BTreeMap, HashMap};

    use proptest::prelude::*;

    use super::*;

    const L: usize = 2;
    const K: usize = 2;

    #[derive(Debug, Clone)]
    enum Op {
        Start {
            request: u64,
            prompt_start: usize,
        },
        /// Rows for (request, position), or padding when `request` is None.
        Step(Vec<(Option<u64>, usize)>),
        Truncate {
            request: u64,
            len: usize,
        },
        Abort {
            request: u64,
        },
        Finish {
            request: u64,
            num_tokens: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let req = 0u64..4;
        prop_oneof![
            (req.clone(), 0usize..4).prop_map(|(request, prompt_start)| Op::Start {
                request,
                prompt_start
            }),
            prop::collection::vec((prop::option::weighted(0.8, 0u64..4), 0usize..12), 0..8)
                .prop_map(Op::Step),
            (req.clone(), 0usize..12).prop_map(|(request, len)| Op::Truncate { request, len }),
            req.clone().prop_map(|request| Op::Abort { request }),
            (req, 0usize..14).prop_map(|(request, num_tokens)| Op::Finish {
                request,
                num_tokens
            }),
        ]
    }

    #[derive(Default)]
    struct Model {
        requests: HashMap<u64, (usize, BTreeMap<usize, i16>)>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn assembler_matches_a_naive_model(ops in prop::collection::vec(op(), 1..40)) {
            let mut a = Assembler::new(AssemblerConfig { layers: L, top_k: K, num_experts: 64, max_positions: 16 }).unwrap();
            let mut m = Model::default();
            let mut next_value = 0i16;
            for op in ops {
                match op {
                    Op::Start { request, prompt_start } => {
                        let fresh = !m.requests.contains_key(&request);
                        prop_assert_eq!(a.start(request, prompt_start).is_ok(), fresh);
                        if fresh {
                            m.requests.insert(request, (prompt_start, BTreeMap::new()));
                        }
                    }
                    Op::Step(rows) => {
                        // Each row holds one distinct value everywhere.
                        let owners: Vec<RowOwner> = rows
                            .iter()
                            .map(|&(r, position)| match r {
                                Some(request) => RowOwner::Token { request, position },
                                None => RowOwner::Padding,
                            })
                            .collect();
                        let mut ids = Vec::new();
                        for &(r, position) in &rows {
                            next_value = next_value.wrapping_add(1) & 0x3f;
                            ids.extend([next_value; L * K]);
                            if let Some((_, track)) = r.and_then(|r| m.requests.get_mut(&r)) {
                                track.insert(position, next_value);
                            }
                        }
                        let step = StepRows { tokens: rows.len(), layers: L, top_k: K, ids };
                        a.push_step(&step, &owners).unwrap();
                    }
                    Op::Truncate { request, len } => {
                        let known = m.requests.get_mut(&request);
                        prop_assert_eq!(a.truncate(request, len).is_ok(), known.is_some());
                        if let Some((_, track)) = known {
                            track.retain(|&p, _| p < len);
                        }
                    }
                    Op::Abort { request } => {
                        prop_assert_eq!(a.abort(request), m.requests.remove(&request).is_some());
                    }
                    Op::Finish { request, num_tokens } => {
                        let got = a.finish(request, num_tokens);
                        match m.requests.remove(&request) {
                            None => prop_assert!(got.is_err()),
                            Some((start, track)) => {
                                let got = got.unwrap();
                                let end = num_tokens.saturating_sub(1);
                                let want: Vec<i16> = (start.min(end)..end)
                                    .flat_map(|p| [*track.get(&p).unwrap_or(&UNKNOWN); L * K])
                                    .collect();
                                prop_assert_eq!(got.tokens(), end - start.min(end));
                                prop_assert_eq!(got.ids(), &want[..]);
                            }
                        }
                    }
                }
            }
        }
    }
}
