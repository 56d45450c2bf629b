use super::*;

fn is_permutation(order: &[usize]) -> bool {
    let mut seen = vec![false; order.len()];
    order
        .iter()
        .all(|&i| i < seen.len() && !std::mem::replace(&mut seen[i], true))
}

#[test]
fn gated_order_interleaves_the_halves() {
    assert_eq!(gated_row_order(6).unwrap(), vec![0, 3, 1, 4, 2, 5]);
}

#[test]
fn shuffle_order_matches_upstreams_maps() {
    // Upstream: row_indices[new_rows] = old_rows, new_row = blk * bs + map[old % bs].
    let o = shuffle_row_order(32, 128).unwrap();
    assert!(is_permutation(&o));
    assert_eq!(&o[..8], &[0, 4, 8, 12, 16, 20, 24, 28]);
    let o16 = shuffle_row_order(32, 64).unwrap();
    assert!(is_permutation(&o16));
    assert_eq!(&o16[..4], &[0, 2, 4, 6]);
    assert_eq!(o16[16], 16);
    for rows in [128, 256, 768] {
        assert!(is_permutation(&gemm1_row_order(rows, true, 128).unwrap()));
        assert!(is_permutation(&gemm1_row_order(rows, false, 64).unwrap()));
    }
}

#[test]
fn block_layout_and_permutation_move_whole_rows() {
    let (m, k) = (4, 6);
    let src: Vec<u32> = (0..(m * k) as u32).collect();
    let b = to_block_major_k(&src, m, k, 3).unwrap();
    // Block 0 holds columns 0..3 of every row, then block 1 columns 3..6.
    assert_eq!(&b[..6], &[0, 1, 2, 6, 7, 8]);
    assert_eq!(&b[12..15], &[3, 4, 5]);
    let p = permute_rows(&src, k, &[3, 0, 1, 2]).unwrap();
    assert_eq!(&p[..6], &src[18..24]);
}

#[test]
fn block_scaled_weights_keep_each_row_with_its_scales() {
    // Two experts, 128 rows; weight row r holds r in every column, its scales hold r too.
    let (e, m, wc, sc) = (2, 128, 3, 4);
    let w: Vec<u32> = (0..e * m * wc).map(|i| (i / wc) as u32).collect();
    let s: Vec<u32> = (0..e * m * sc).map(|i| (i / sc) as u32 + 1).collect();
    let (w1, s1, _, _) =
        shuffle_block_scaled_weights((&w, &s), (&w, &s), e, (m, wc, sc), (m, wc, sc), true, 128)
            .unwrap();
    let order = gemm1_row_order(m, true, 128).unwrap();
    for ex in 0..e {
        for (j, &src) in order.iter().enumerate() {
            let row = (ex * m + src) as u32;
            assert_eq!(w1[(ex * m + j) * wc], row);
            // Scale (j, 0) of this expert sits at its interleaved index.
            assert_eq!(
                s1[ex * m * sc + interleaved_scale_index(j, 0, sc).unwrap()],
                row + 1
            );
        }
    }
}

#[test]
fn interleaved_scales_are_a_padded_bijection() {
    let (rows, cols) = (200, 6);
    let src: Vec<u16> = (1..=(rows * cols) as u16).collect();
    let out = interleave_scales(&src, rows, cols).unwrap();
    assert_eq!(out.len(), 256 * 8);
    let mut values: Vec<u16> = out.iter().copied().filter(|&v| v != 0).collect();
    values.sort();
    assert_eq!(values, src);
    // The first 4 scales of row 0 are contiguous; row 32 follows row 0's 4 columns.
    assert_eq!(&out[..4], &src[..4]);
    assert_eq!(out[4], src[32 * cols]);
    assert_eq!(out[16], src[cols]);
}
