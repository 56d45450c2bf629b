use super::*;

fn step(rows: usize, base: i16) -> StepRows {
    StepRows {
        weights: None,
        tokens: rows,
        layers: 2,
        top_k: 3,
        ids: (0..rows).flat_map(|r| [base + r as i16; 6]).collect(),
    }
}

fn store(num_slots: usize, num_experts: u32) -> SlotStore {
    SlotStore::new(SlotStoreConfig {
        num_slots,
        layers: 2,
        top_k: 3,
        num_experts,
        max_bytes: 1 << 20,
    })
    .unwrap()
}

#[test]
fn recorded_slots_are_found_and_others_are_unknown() {
    let mut s = store(16, 64);
    assert_eq!(s.bytes(), 16 * 6, "one byte per id below 256 experts");
    s.record(&[Some(5), None, Some(9)], &step(3, 40)).unwrap();
    assert_eq!(s.lookup(5), Some(vec![40; 6]));
    assert_eq!(s.lookup(9), Some(vec![42; 6]));
    assert_eq!(s.lookup(6), None, "never recorded");
    assert_eq!(s.lookup(99), None, "out of range");
}

#[test]
fn freed_blocks_forget_their_routing() {
    let mut s = store(16, 64);
    s.record(&[Some(4), Some(5)], &step(2, 1)).unwrap();
    s.invalidate(4..5).unwrap();
    assert_eq!((s.lookup(4), s.lookup(5)), (None, Some(vec![2; 6])));
    s.invalidate(0..16).unwrap();
    assert_eq!(s.lookup(5), None);
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 5..2;
    assert!(
        s.invalidate(reversed).is_err(),
        "a reversed range is an error, not a panic"
    );
    assert!(s.invalidate(0..17).is_err(), "beyond num_slots");
}

#[test]
fn large_models_use_two_bytes_and_keep_every_expert_id() {
    let mut s = store(4, 384);
    assert_eq!(s.bytes(), 4 * 6 * 2);
    s.record(&[Some(0)], &step(1, 383)).unwrap();
    assert_eq!(s.lookup(0), Some(vec![383; 6]));
    // Expert 255 is a real id with 256 experts: stored in two bytes, not mistaken for unknown.
    let mut s = store(4, 256);
    s.record(&[Some(1)], &step(1, 255)).unwrap();
    assert_eq!(s.lookup(1), Some(vec![255; 6]));
}

#[test]
fn the_memory_budget_and_slot_range_are_enforced() {
    assert!(matches!(
        SlotStore::new(SlotStoreConfig {
            num_slots: 1 << 20,
            layers: 61,
            top_k: 8,
            num_experts: 256,
            max_bytes: 100 << 20
        }),
        Err(Error::InvalidArgument {
            arg: "max_bytes",
            ..
        })
    ));
    let mut s = store(4, 64);
    assert!(s.record(&[Some(4)], &step(1, 0)).is_err());
    assert!(s.record(&[Some(0), Some(1)], &step(1, 0)).is_err());
}

#[test]
fn zero_and_huge_sizes_are_refused_not_panics() {
    let ok = SlotStoreConfig {
        num_slots: 4,
        layers: 2,
        top_k: 3,
        num_experts: 64,
        max_bytes: 1 << 20,
    };
    for (bad, arg) in [
        (SlotStoreConfig { num_slots: 0, ..ok }, "num_slots"),
        (SlotStoreConfig { layers: 0, ..ok }, "layers"),
        (SlotStoreConfig { top_k: 0, ..ok }, "top_k"),
        (
            SlotStoreConfig {
                num_experts: 0,
                ..ok
            },
            "num_experts",
        ),
        (
            SlotStoreConfig {
                num_experts: 65_535,
                ..ok
            },
            "num_experts",
        ),
        (
            SlotStoreConfig {
                layers: usize::MAX,
                top_k: 2,
                ..ok
            },
            "num_slots",
        ),
        (
            SlotStoreConfig {
                num_slots: usize::MAX,
                ..ok
            },
            "num_slots",
        ),
        (
            SlotStoreConfig {
                num_slots: 1 << 40,
                ..ok
            },
            "max_bytes",
        ),
    ] {
        match SlotStore::new(bad) {
            Err(Error::InvalidArgument { arg: got, .. }) => assert_eq!(got, arg, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn unknown_ids_survive_and_ids_outside_the_model_are_refused() {
    for experts in [64, 384] {
        let mut s = store(4, experts);
        let mut st = step(1, 7);
        st.ids[2] = UNKNOWN;
        s.record(&[Some(1)], &st).unwrap();
        let row = s.lookup(1).unwrap();
        assert_eq!(
            row[2], UNKNOWN,
            "-1 stays -1 with {experts} experts, never 255"
        );
        assert_eq!(row[0], 7);
        st.ids[2] = experts as i16;
        assert!(s.record(&[Some(2)], &st).is_err());
        st.ids[2] = -5;
        assert!(s.record(&[Some(2)], &st).is_err());
        assert_eq!(s.lookup(2), None, "a refused step records nothing");
    }
}
