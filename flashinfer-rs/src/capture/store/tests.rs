use super::*;

#[test]
fn token_major_transpose_matches_the_definition_serial_and_threaded() {
    for (rows, layers, k) in [(3, 2, 4), (0, 5, 8), (8192, 61, 8), (5000, 3, 22)] {
        let layer_major: Vec<i16> = (0..rows * layers * k).map(|i| (i % 32749) as i16).collect();
        let mut out = vec![-7i16; rows * layers * k];
        to_token_major(&layer_major, &mut out, rows, layers, k);
        for r in 0..rows {
            for l in 0..layers {
                for j in 0..k {
                    assert_eq!(
                        out[(r * layers + l) * k + j],
                        layer_major[(l * rows + r) * k + j]
                    );
                }
            }
        }
    }
}

#[test]
fn layouts_route_and_keep_the_right_rows() {
    assert_eq!(
        StepLayout::single(5),
        StepLayout {
            routed_rows: 5,
            keep: 0..5
        }
    );
    assert_eq!(
        StepLayout::padded(5, 8).unwrap(),
        StepLayout {
            routed_rows: 8,
            keep: 0..5
        }
    );
    assert!(StepLayout::padded(9, 8).is_err());
    // Rank 1 of [3, 4, 2]: rows 3..7 of 9.
    assert_eq!(
        StepLayout::data_parallel(1, &[3, 4, 2]).unwrap(),
        StepLayout {
            routed_rows: 9,
            keep: 3..7
        }
    );
    assert_eq!(StepLayout::data_parallel(2, &[3, 4, 2]).unwrap().keep, 7..9);
    assert!(StepLayout::data_parallel(3, &[3, 4, 2]).is_err());
    assert_eq!(StepLayout::per_rank(4), StepLayout::single(4));
    assert_eq!(
        StepLayout::sequence_parallel_gathered(6),
        StepLayout::single(6)
    );
}

#[test]
fn layouts_must_fit_the_store() {
    assert!(StepLayout::single(8).check(8).is_ok());
    assert!(StepLayout::single(9).check(8).is_err());
    assert!(StepLayout {
        routed_rows: 4,
        keep: 2..6
    }
    .check(8)
    .is_err());
    assert!(StepLayout::data_parallel(0, &[0, 3])
        .unwrap()
        .check(8)
        .is_ok());
}
