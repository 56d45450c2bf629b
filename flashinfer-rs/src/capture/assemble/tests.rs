use super::*;
use crate::capture::ExpertMap;

/// A step whose row r holds value `base + r` everywhere.
fn step(rows: usize, base: i16) -> StepRows {
    StepRows {
        weights: None,
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
        weights: None,
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

#[test]
fn export_new_returns_only_what_is_new_and_finish_still_returns_everything() {
    let mut a = asm(2, 2, 64);
    a.start(1, 2).unwrap(); // two prompt positions skipped
    a.push_step(&step(4, 10), &[tok(1, 0), tok(1, 1), tok(1, 2), tok(1, 3)])
        .unwrap(); // prefill of a 4-token prompt
    let first = a.export_new(1, 5).unwrap(); // rows 2..4
    assert_eq!(first.first_position, 2);
    assert_eq!(firsts(&first.experts), vec![12, 13]);
    // Nothing new yet: an empty span at the end.
    let none = a.export_new(1, 5).unwrap();
    assert_eq!((none.first_position, none.experts.tokens()), (4, 0));
    a.push_step(&step(1, 20), &[tok(1, 4)]).unwrap(); // decode
    a.push_step(&step(1, 30), &[tok(1, 5)]).unwrap(); // decode
    let second = a.export_new(1, 7).unwrap();
    assert_eq!(second.first_position, 4);
    assert_eq!(firsts(&second.experts), vec![20, 30]);
    // Any range on request, without moving export_new's position.
    let range = a.export_range(1, 3, 7).unwrap();
    assert_eq!(
        (range.first_position, firsts(&range.experts)),
        (3, vec![13, 20, 30])
    );
    assert!(a.export_range(1, 7, 7).is_err()); // past the last row (6 rows for 7 tokens)
    assert_eq!(a.export_new(1, 7).unwrap().experts.tokens(), 0);
    assert_eq!(firsts(&a.finish(1, 7).unwrap()), vec![12, 13, 20, 30]);
}

#[test]
fn rows_exported_then_rejected_by_speculation_are_exported_again() {
    let mut a = asm(2, 2, 64);
    a.start(1, 0).unwrap();
    a.push_step(&step(3, 0), &[tok(1, 0), tok(1, 1), tok(1, 2)])
        .unwrap();
    assert_eq!(firsts(&a.export_new(1, 4).unwrap().experts), vec![0, 1, 2]);
    a.truncate(1, 2).unwrap(); // position 2 was a rejected draft
    a.push_step(&step(1, 40), &[tok(1, 2)]).unwrap();
    let again = a.export_new(1, 4).unwrap();
    assert_eq!(
        (again.first_position, firsts(&again.experts)),
        (2, vec![40])
    );
}

#[test]
fn an_expert_map_exports_logical_ids_and_is_checked_against_the_config() {
    // 4 physical experts serving 3 logical ones (logical 1 replicated on 1 and 3).
    let map = ExpertMap::new(&[0, 1, 2, 1], 3).unwrap();
    let config = AssemblerConfig {
        layers: 1,
        top_k: 2,
        num_experts: 4,
        max_positions: 16,
    };
    let mut a = Assembler::with_expert_map(config, map.clone()).unwrap();
    a.start(9, 0).unwrap();
    let rows = StepRows {
        weights: None,
        tokens: 2,
        layers: 1,
        top_k: 2,
        ids: vec![3, 0, 2, 1],
    };
    a.push_step(&rows, &[tok(9, 0), tok(9, 1)]).unwrap();
    a.set_row(9, 2, &[3, UNKNOWN]).unwrap();
    let r = a.finish(9, 4).unwrap();
    assert_eq!(r.ids(), &[1, 0, 2, 1, 1, UNKNOWN]);
    assert_eq!(r.num_experts(), 3);
    // Physical ids are checked against the physical count, before the map.
    let mut b = Assembler::with_expert_map(config, map.clone()).unwrap();
    b.start(1, 0).unwrap();
    let bad = StepRows {
        weights: None,
        ids: vec![4, 0],
        tokens: 1,
        ..rows
    };
    assert!(b.push_step(&bad, &[tok(1, 0)]).is_err());
    // A map of another physical count than the config's is refused.
    let other = AssemblerConfig {
        num_experts: 5,
        ..config
    };
    assert!(Assembler::with_expert_map(other, map).is_err());
}

#[test]
fn weights_travel_with_their_ids_and_rows_without_weights_export_nan() {
    let mut a = asm(1, 2, 64);
    a.start(3, 0).unwrap();
    let mut rows = StepRows {
        tokens: 2,
        layers: 1,
        top_k: 2,
        ids: vec![1, 2, 3, 4],
        weights: Some(vec![0.5, 0.25, 0.75, 0.125]),
    };
    a.push_step(&rows, &[tok(3, 0), tok(3, 1)]).unwrap();
    a.set_row(3, 2, &[5, 6]).unwrap(); // a prefix-cache row: ids only
    let span = a.export_new(3, 3).unwrap();
    assert_eq!(span.experts.weights().unwrap(), &[0.5, 0.25, 0.75, 0.125]);
    let r = a.finish(3, 5).unwrap(); // rows 0..4; row 3 never written
    let w = r.weights().unwrap();
    assert_eq!(&w[..4], &[0.5, 0.25, 0.75, 0.125]);
    assert!(w[4..].iter().all(|x| x.is_nan()));
    assert_eq!(r.ids()[6..], [UNKNOWN, UNKNOWN]);
    // Weights of another shape than the ids are refused, and change nothing.
    a.start(4, 0).unwrap();
    rows.weights = Some(vec![0.5; 3]);
    assert!(a.push_step(&rows, &[tok(4, 0), tok(4, 1)]).is_err());
    assert_eq!(a.finish(4, 3).unwrap().weights(), None);
}

#[test]
fn layer_major_rows_assemble_exactly_as_their_token_major_transpose() {
    let (tokens, layers, top_k) = (7, 3, 2);
    let mut rng = crate::routing::oracle::SplitMix64(3);
    let token_major: Vec<i16> = (0..tokens * layers * top_k)
        .map(|_| rng.below(64) as i16)
        .collect();
    let weights: Vec<f32> = (0..token_major.len()).map(|i| i as f32 / 8.0).collect();
    let (mut ids_lm, mut w_lm) = (vec![0i16; token_major.len()], vec![0f32; weights.len()]);
    for r in 0..tokens {
        for l in 0..layers {
            for j in 0..top_k {
                ids_lm[(l * tokens + r) * top_k + j] = token_major[(r * layers + l) * top_k + j];
                w_lm[(l * tokens + r) * top_k + j] = weights[(r * layers + l) * top_k + j];
            }
        }
    }
    // Rows 0, 2, 4, 6 to request 1, the others padding.
    let owners: Vec<RowOwner> = (0..tokens)
        .map(|r| {
            if r % 2 == 0 {
                tok(1, r / 2)
            } else {
                RowOwner::Padding
            }
        })
        .collect();
    let (mut a, mut b) = (asm(layers, top_k, 64), asm(layers, top_k, 64));
    a.start(1, 0).unwrap();
    b.start(1, 0).unwrap();
    let step = StepRows {
        tokens,
        layers,
        top_k,
        ids: token_major,
        weights: Some(weights),
    };
    a.push_step(&step, &owners).unwrap();
    let lm = LayerMajorRows {
        tokens,
        layers,
        top_k,
        ids: &ids_lm,
        weights: Some(&w_lm),
    };
    b.push_layer_major(&lm, &owners).unwrap();
    assert_eq!(a.finish(1, 5).unwrap(), b.finish(1, 5).unwrap());
    // The same rules: a short weights array is refused.
    b.start(2, 0).unwrap();
    let short = LayerMajorRows {
        weights: Some(&w_lm[1..]),
        ..lm
    };
    assert!(b.push_layer_major(&short, &owners).is_err());
}
