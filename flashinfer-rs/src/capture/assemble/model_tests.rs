//! The assembler against a naive model (a map from position to row per request) over random
//! serving histories: steps with padding and several requests, speculative truncation,
//! aborts, re-prefill, prompt offsets, and incremental export (`export_new`, `export_range`)
//! interleaved with all of them.
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
    ExportNew {
        request: u64,
        num_tokens: usize,
    },
    ExportRange {
        request: u64,
        from: usize,
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
        (req.clone(), 0usize..14).prop_map(|(request, num_tokens)| Op::Finish {
            request,
            num_tokens
        }),
        (req.clone(), 0usize..14).prop_map(|(request, num_tokens)| Op::ExportNew {
            request,
            num_tokens
        }),
        (req, 0usize..14, 0usize..14).prop_map(|(request, from, num_tokens)| Op::ExportRange {
            request,
            from,
            num_tokens
        }),
    ]
}

/// One request of the model: where its export starts, how far `export_new` has exported,
/// and its rows (one value per row).
struct Track {
    prompt_start: usize,
    exported: usize,
    rows: BTreeMap<usize, i16>,
}

impl Track {
    /// The ids of rows `[from, end)`, UNKNOWN where never written.
    fn ids(&self, from: usize, end: usize) -> Vec<i16> {
        (from..end)
            .flat_map(|p| [*self.rows.get(&p).unwrap_or(&UNKNOWN); L * K])
            .collect()
    }
}

#[derive(Default)]
struct Model {
    requests: HashMap<u64, Track>,
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
                        m.requests.insert(request, Track { prompt_start, exported: prompt_start, rows: BTreeMap::new() });
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
                        if let Some(track) = r.and_then(|r| m.requests.get_mut(&r)) {
                            track.rows.insert(position, next_value);
                        }
                    }
                    let step = StepRows { tokens: rows.len(), layers: L, top_k: K, ids, weights: None };
                    a.push_step(&step, &owners).unwrap();
                }
                Op::Truncate { request, len } => {
                    let known = m.requests.get_mut(&request);
                    prop_assert_eq!(a.truncate(request, len).is_ok(), known.is_some());
                    if let Some(track) = known {
                        track.rows.retain(|&p, _| p < len);
                        // What export_new had sent from `len` on is sent again.
                        track.exported = track.exported.min(len.max(track.prompt_start));
                    }
                }
                Op::Abort { request } => {
                    prop_assert_eq!(a.abort(request), m.requests.remove(&request).is_some());
                }
                Op::Finish { request, num_tokens } => {
                    let got = a.finish(request, num_tokens);
                    match m.requests.remove(&request) {
                        None => prop_assert!(got.is_err()),
                        Some(track) => {
                            let got = got.unwrap();
                            let end = num_tokens.saturating_sub(1);
                            let start = track.prompt_start.min(end);
                            prop_assert_eq!(got.tokens(), end - start);
                            prop_assert_eq!(got.ids(), &track.ids(start, end)[..]);
                        }
                    }
                }
                Op::ExportNew { request, num_tokens } => {
                    let got = a.export_new(request, num_tokens);
                    match m.requests.get_mut(&request) {
                        None => prop_assert!(got.is_err()),
                        Some(track) => {
                            let got = got.unwrap();
                            let end = num_tokens.saturating_sub(1);
                            let from = track.exported.min(end);
                            prop_assert_eq!(got.first_position, from);
                            prop_assert_eq!(got.experts.tokens(), end - from);
                            prop_assert_eq!(got.experts.ids(), &track.ids(from, end)[..]);
                            track.exported = track.exported.max(end);
                        }
                    }
                }
                Op::ExportRange { request, from, num_tokens } => {
                    let got = a.export_range(request, from, num_tokens);
                    let end = num_tokens.saturating_sub(1);
                    match m.requests.get(&request) {
                        Some(track) if from <= end => {
                            let got = got.unwrap();
                            prop_assert_eq!(got.first_position, from);
                            prop_assert_eq!(got.experts.ids(), &track.ids(from, end)[..]);
                        }
                        _ => prop_assert!(got.is_err()),
                    }
                }
            }
        }
    }
}
