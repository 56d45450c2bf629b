//! Host-side weight preparation for the fused kernels, once per model load: the row orders and
//! layouts upstream's Python applies before calling them (`reorder_rows_for_gated_act_gemm`,
//! `shuffle_matrix_a`, `convert_to_block_layout`, `block_scale_interleave` of FlashInfer
//! 0.6.13), ported index for index.
//!
//! Row orders are "gather" maps: row `j` of the result is row `order[j]` of the source.
//!
//! # Panics
//! Load-time helpers: they assert their shape preconditions (sizes matching the stated
//! dimensions, rows a multiple of the shuffle block) and panic with the rule.

/// The epilogue tile the bf16, fp8 per-tensor, MxFp8 and fp4 kernels are shuffled for
/// (upstream: "FIXME: this depends on the kernel internals").
pub const EPILOGUE_TILE_M: usize = 128;
/// DeepSeek fp8's epilogue tile.
pub const EPILOGUE_TILE_M_DEEPSEEK: usize = 64;

const SRC_TO_DST_BLK16: [usize; 16] = [0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15];
const SRC_TO_DST_BLK32: [usize; 32] = [
    0, 8, 16, 24, 1, 9, 17, 25, 2, 10, 18, 26, 3, 11, 19, 27, 4, 12, 20, 28, 5, 13, 21, 29, 6, 14,
    22, 30, 7, 15, 23, 31,
];

/// Interleaves the two halves of a gated GEMM1 (`[x1 rows; x2 rows]` → `x1_0, x2_0, x1_1,
/// ...`): upstream's `get_reorder_rows_for_gated_act_gemm_row_indices`.
pub fn gated_row_order(rows: usize) -> Vec<usize> {
    let half = rows.div_ceil(2);
    let mut order = vec![0; rows];
    for (j, slot) in order.iter_mut().enumerate() {
        *slot = if j % 2 == 0 { j / 2 } else { half + j / 2 };
    }
    order
}

/// The row shuffle of `shuffle_matrix_a` (blocks of 32 rows for a 128-row epilogue tile, else
/// 16). `rows` must be a multiple of the block.
pub fn shuffle_row_order(rows: usize, epilogue_tile_m: usize) -> Vec<usize> {
    let map: &[usize] = if epilogue_tile_m.is_multiple_of(128) {
        &SRC_TO_DST_BLK32
    } else {
        &SRC_TO_DST_BLK16
    };
    let bs = map.len();
    assert!(
        rows.is_multiple_of(bs),
        "rows ({rows}) must be a multiple of {bs}"
    );
    let mut order = vec![0; rows];
    for old in 0..rows {
        let new = old / bs * bs + map[old % bs];
        order[new] = old;
    }
    order
}

/// GEMM1's full order: the gated interleave (if `gated`), then the shuffle.
pub fn gemm1_row_order(rows: usize, gated: bool, epilogue_tile_m: usize) -> Vec<usize> {
    let first: Vec<usize> = if gated {
        gated_row_order(rows)
    } else {
        (0..rows).collect()
    };
    shuffle_row_order(rows, epilogue_tile_m)
        .into_iter()
        .map(|j| first[j])
        .collect()
}

/// Gathers rows of a row-major `[rows, cols]` matrix: result row `j` = source row `order[j]`.
pub fn permute_rows<T: Copy>(src: &[T], cols: usize, order: &[usize]) -> Vec<T> {
    assert_eq!(src.len(), order.len() * cols, "matrix size");
    let mut out = Vec::with_capacity(src.len());
    for &r in order {
        out.extend_from_slice(&src[r * cols..(r + 1) * cols]);
    }
    out
}

/// `[m, k]` row-major → BlockMajorK `[k / block_k, m, block_k]` (`convert_to_block_layout`).
pub fn to_block_major_k<T: Copy>(src: &[T], m: usize, k: usize, block_k: usize) -> Vec<T> {
    assert_eq!(src.len(), m * k, "matrix size");
    assert!(
        k.is_multiple_of(block_k),
        "k ({k}) must be a multiple of {block_k}"
    );
    let mut out = Vec::with_capacity(src.len());
    for kb in 0..k / block_k {
        for r in 0..m {
            out.extend_from_slice(&src[r * k + kb * block_k..r * k + (kb + 1) * block_k]);
        }
    }
    out
}

/// Index of scale `(row, col)` in the 128x4 interleaved layout of a `[rows, cols]` scale
/// matrix padded to `[round_up(rows, 128), round_up(cols, 4)]` (`block_scale_interleave`).
pub fn interleaved_scale_index(row: usize, col: usize, cols: usize) -> usize {
    let k_tiles = cols.div_ceil(4);
    (row / 128) * k_tiles * 512
        + (col / 4) * 512
        + (row % 32) * 16
        + ((row % 128) / 32) * 4
        + col % 4
}

/// Interleaves a row-major `[rows, cols]` scale matrix (padding with zero bytes).
pub fn interleave_scales<T: Copy + Default>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    assert_eq!(src.len(), rows * cols, "scale matrix size");
    let mut out = vec![T::default(); rows.div_ceil(128) * 128 * cols.div_ceil(4) * 4];
    for r in 0..rows {
        for c in 0..cols {
            out[interleaved_scale_index(r, c, cols)] = src[r * cols + c];
        }
    }
    out
}

/// Prepares per-expert row-major weights for the shuffled kernels: `w1` `[experts, m1, k1]`,
/// `w2` `[experts, m2, k2]`; GEMM1's rows interleaved when `gated`, both shuffled for
/// `epilogue_tile_m`, then (with `block_k`) converted to BlockMajorK. Elements are bytes of
/// any width: `block_k` counts elements (upstream uses 128 bytes: 64 bf16 or 128 fp8).
#[allow(clippy::too_many_arguments)]
pub fn shuffle_expert_weights<T: Copy>(
    w1: &[T],
    w2: &[T],
    experts: usize,
    (m1, k1): (usize, usize),
    (m2, k2): (usize, usize),
    gated: bool,
    epilogue_tile_m: usize,
    block_k: Option<usize>,
) -> (Vec<T>, Vec<T>) {
    assert_eq!(w1.len(), experts * m1 * k1, "w1 size");
    assert_eq!(w2.len(), experts * m2 * k2, "w2 size");
    let order1 = gemm1_row_order(m1, gated, epilogue_tile_m);
    let order2 = shuffle_row_order(m2, epilogue_tile_m);
    let mut out1 = Vec::with_capacity(w1.len());
    let mut out2 = Vec::with_capacity(w2.len());
    for e in 0..experts {
        let a = permute_rows(&w1[e * m1 * k1..(e + 1) * m1 * k1], k1, &order1);
        let b = permute_rows(&w2[e * m2 * k2..(e + 1) * m2 * k2], k2, &order2);
        match block_k {
            Some(bk) => {
                out1.extend(to_block_major_k(&a, m1, k1, bk));
                out2.extend(to_block_major_k(&b, m2, k2, bk));
            }
            None => {
                out1.extend(a);
                out2.extend(b);
            }
        }
    }
    (out1, out2)
}

/// Prepares block-scaled (fp4, MxFp8) expert weights the way upstream's FP4 tests do: the
/// weight rows and their linear scale rows get the same order as [`shuffle_expert_weights`]
/// (GEMM1 interleaved when `gated`, both shuffled), then each expert's scales are interleaved
/// 128x4 ([`interleave_scales`]). Widths are in storage units: `(rows, weight_cols,
/// scale_cols)` per GEMM (fp4: `K / 2` bytes and `K / block` scales).
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn shuffle_block_scaled_weights<W: Copy, S: Copy + Default>(
    (w1, s1): (&[W], &[S]),
    (w2, s2): (&[W], &[S]),
    experts: usize,
    (m1, w1_cols, s1_cols): (usize, usize, usize),
    (m2, w2_cols, s2_cols): (usize, usize, usize),
    gated: bool,
    epilogue_tile_m: usize,
) -> (Vec<W>, Vec<S>, Vec<W>, Vec<S>) {
    assert_eq!(w1.len(), experts * m1 * w1_cols, "w1 size");
    assert_eq!(s1.len(), experts * m1 * s1_cols, "w1 scales size");
    assert_eq!(w2.len(), experts * m2 * w2_cols, "w2 size");
    assert_eq!(s2.len(), experts * m2 * s2_cols, "w2 scales size");
    let order1 = gemm1_row_order(m1, gated, epilogue_tile_m);
    let order2 = shuffle_row_order(m2, epilogue_tile_m);
    let (mut ow1, mut os1, mut ow2, mut os2) = (vec![], vec![], vec![], vec![]);
    for e in 0..experts {
        let part =
            |v: &[W], rows: usize, cols: usize| v[e * rows * cols..(e + 1) * rows * cols].to_vec();
        let spart =
            |v: &[S], rows: usize, cols: usize| v[e * rows * cols..(e + 1) * rows * cols].to_vec();
        ow1.extend(permute_rows(&part(w1, m1, w1_cols), w1_cols, &order1));
        let s = permute_rows(&spart(s1, m1, s1_cols), s1_cols, &order1);
        os1.extend(interleave_scales(&s, m1, s1_cols));
        ow2.extend(permute_rows(&part(w2, m2, w2_cols), w2_cols, &order2));
        let s = permute_rows(&spart(s2, m2, s2_cols), s2_cols, &order2);
        os2.extend(interleave_scales(&s, m2, s2_cols));
    }
    (ow1, os1, ow2, os2)
}

#[cfg(test)]
mod tests;
