//! Host-side weight preparation for the fused kernels, once per model load: the row orders and
//! layouts upstream's Python applies before calling them (`reorder_rows_for_gated_act_gemm`,
//! `shuffle_matrix_a`, `convert_to_block_layout`, `block_scale_interleave` of FlashInfer
//! 0.6.13), ported index for index.
//!
//! Row orders are "gather" maps: row `j` of the result is row `order[j]` of the source.
//!
//! Every function checks its shape rules (sizes matching the stated dimensions with checked
//! arithmetic, rows a multiple of the shuffle block, indices inside the source) and answers a
//! broken one with [`Error::InvalidArgument`] naming it; memory
//! is taken fallibly ([`Error::HostAllocation`]).

use crate::alloc::{self, product};
use crate::error::{ensure, ensure_len, Error, Result};

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
pub fn gated_row_order(rows: usize) -> Result<Vec<usize>> {
    let half = rows.div_ceil(2);
    let mut order = alloc::with_capacity("order", rows)?;
    order.extend((0..rows).map(|j| if j % 2 == 0 { j / 2 } else { half + j / 2 }));
    Ok(order)
}

/// The row shuffle of `shuffle_matrix_a` (blocks of 32 rows for a 128-row epilogue tile, else
/// 16). `rows` must be a multiple of the block.
pub fn shuffle_row_order(rows: usize, epilogue_tile_m: usize) -> Result<Vec<usize>> {
    let map: &[usize] = if epilogue_tile_m.is_multiple_of(128) {
        &SRC_TO_DST_BLK32
    } else {
        &SRC_TO_DST_BLK16
    };
    let bs = map.len();
    ensure(rows.is_multiple_of(bs), "rows", || {
        format!("{rows} must be a multiple of {bs}")
    })?;
    let mut order = alloc::filled("order", rows, 0)?;
    for old in 0..rows {
        let new = old / bs * bs + map[old % bs];
        order[new] = old;
    }
    Ok(order)
}

/// GEMM1's full order: the gated interleave (if `gated`), then the shuffle.
pub fn gemm1_row_order(rows: usize, gated: bool, epilogue_tile_m: usize) -> Result<Vec<usize>> {
    let mut order = shuffle_row_order(rows, epilogue_tile_m)?;
    if gated {
        let first = gated_row_order(rows)?;
        order.iter_mut().for_each(|j| *j = first[*j]);
    }
    Ok(order)
}

/// Gathers rows of a row-major `[rows, cols]` matrix: result row `j` = source row `order[j]`.
/// Every `order[j]` must be a row of `src`.
pub fn permute_rows<T: Copy>(src: &[T], cols: usize, order: &[usize]) -> Result<Vec<T>> {
    let rows = order.len();
    ensure_len("src", src.len(), product("src", &[rows, cols])?, || {
        format!("[rows {rows}, cols {cols}]")
    })?;
    if let Some(&bad) = order.iter().find(|&&r| r >= rows) {
        return Err(Error::invalid(
            "order",
            format!("names row {bad} of a {rows}-row matrix"),
        ));
    }
    let mut out = alloc::with_capacity("rows", src.len())?;
    for &r in order {
        out.extend_from_slice(&src[r * cols..(r + 1) * cols]);
    }
    Ok(out)
}

/// `[m, k]` row-major → BlockMajorK `[k / block_k, m, block_k]` (`convert_to_block_layout`).
pub fn to_block_major_k<T: Copy>(src: &[T], m: usize, k: usize, block_k: usize) -> Result<Vec<T>> {
    ensure_len("src", src.len(), product("src", &[m, k])?, || {
        format!("[m {m}, k {k}]")
    })?;
    ensure(block_k > 0 && k.is_multiple_of(block_k), "block_k", || {
        format!("k ({k}) must be a multiple of block_k ({block_k} > 0)")
    })?;
    let mut out = alloc::with_capacity("block-major", src.len())?;
    if src.is_empty() {
        // m or k is 0: nothing to move (and the loops below must not count to the other).
        return Ok(out);
    }
    for kb in 0..k / block_k {
        for r in 0..m {
            out.extend_from_slice(&src[r * k + kb * block_k..r * k + (kb + 1) * block_k]);
        }
    }
    Ok(out)
}

/// Index of scale `(row, col)` in the 128x4 interleaved layout of a `[rows, cols]` scale
/// matrix padded to `[round_up(rows, 128), round_up(cols, 4)]` (`block_scale_interleave`);
/// `None` when it does not fit `usize`.
pub fn interleaved_scale_index(row: usize, col: usize, cols: usize) -> Option<usize> {
    let k_tiles = cols.div_ceil(4);
    (row / 128)
        .checked_mul(k_tiles)?
        .checked_mul(512)?
        .checked_add((col / 4).checked_mul(512)?)?
        .checked_add((row % 32) * 16 + ((row % 128) / 32) * 4 + col % 4)
}

/// Interleaves a row-major `[rows, cols]` scale matrix (padding with zero bytes).
pub fn interleave_scales<T: Copy + Default>(src: &[T], rows: usize, cols: usize) -> Result<Vec<T>> {
    ensure_len(
        "scales",
        src.len(),
        product("scales", &[rows, cols])?,
        || format!("[rows {rows}, cols {cols}]"),
    )?;
    let padded = product("scales", &[rows.div_ceil(128), 128, cols.div_ceil(4), 4])?;
    let mut out = alloc::filled("scales", padded, T::default())?;
    if src.is_empty() {
        // rows or cols is 0: nothing to place (and the loops must not count to the other).
        return Ok(out);
    }
    for r in 0..rows {
        for c in 0..cols {
            // Below `padded` for every (r, c) of a matrix whose padded size fits.
            let i = interleaved_scale_index(r, c, cols)
                .ok_or_else(|| Error::Internal("a scale index past the padded size".into()))?;
            out[i] = src[r * cols + c];
        }
    }
    Ok(out)
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
) -> Result<(Vec<T>, Vec<T>)> {
    let (e1, e2) = (product("w1", &[m1, k1])?, product("w2", &[m2, k2])?);
    ensure(experts > 0 && e1 > 0 && e2 > 0, "experts", || {
        format!("need experts > 0 and non-empty matrices, got {experts} x [{m1}, {k1}] and [{m2}, {k2}]")
    })?;
    ensure_len("w1", w1.len(), product("w1", &[experts, e1])?, || {
        format!("[experts {experts}, {m1}, {k1}]")
    })?;
    ensure_len("w2", w2.len(), product("w2", &[experts, e2])?, || {
        format!("[experts {experts}, {m2}, {k2}]")
    })?;
    let order1 = gemm1_row_order(m1, gated, epilogue_tile_m)?;
    let order2 = shuffle_row_order(m2, epilogue_tile_m)?;
    let mut out1 = alloc::with_capacity("w1", w1.len())?;
    let mut out2 = alloc::with_capacity("w2", w2.len())?;
    // One expert per chunk: the loop runs over the checked data.
    for (x1, x2) in w1.chunks_exact(e1).zip(w2.chunks_exact(e2)) {
        let a = permute_rows(x1, k1, &order1)?;
        let b = permute_rows(x2, k2, &order2)?;
        match block_k {
            Some(bk) => {
                out1.extend(to_block_major_k(&a, m1, k1, bk)?);
                out2.extend(to_block_major_k(&b, m2, k2, bk)?);
            }
            None => {
                out1.extend(a);
                out2.extend(b);
            }
        }
    }
    Ok((out1, out2))
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
) -> Result<(Vec<W>, Vec<S>, Vec<W>, Vec<S>)> {
    let per = [
        ("w1", product("w1", &[m1, w1_cols])?, w1.len()),
        ("w1 scales", product("w1 scales", &[m1, s1_cols])?, s1.len()),
        ("w2", product("w2", &[m2, w2_cols])?, w2.len()),
        ("w2 scales", product("w2 scales", &[m2, s2_cols])?, s2.len()),
    ];
    ensure(
        experts > 0 && per.iter().all(|p| p.1 > 0),
        "experts",
        || format!("need experts > 0 and non-empty matrices, got {experts} experts"),
    )?;
    for (arg, one, len) in per {
        ensure_len(arg, len, product(arg, &[experts, one])?, || {
            format!("[experts {experts}] of {one} elements")
        })?;
    }
    let order1 = gemm1_row_order(m1, gated, epilogue_tile_m)?;
    let order2 = shuffle_row_order(m2, epilogue_tile_m)?;
    // One expert's weights of one GEMM, their rows in `order`, and its scales, the same rows
    // in the same order, then interleaved.
    let gemm = |w: &[W], s: &[S], order: &[usize], (m, w_cols, s_cols): (usize, usize, usize)| {
        let scales = interleave_scales(&permute_rows(s, s_cols, order)?, m, s_cols)?;
        Ok::<_, Error>((permute_rows(w, w_cols, order)?, scales))
    };
    let (mut ow1, mut os1, mut ow2, mut os2) = (vec![], vec![], vec![], vec![]);
    let chunks = w1
        .chunks_exact(per[0].1)
        .zip(s1.chunks_exact(per[1].1))
        .zip(w2.chunks_exact(per[2].1).zip(s2.chunks_exact(per[3].1)));
    for ((x1, y1), (x2, y2)) in chunks {
        let (w, s) = gemm(x1, y1, &order1, (m1, w1_cols, s1_cols))?;
        ow1.extend(w);
        os1.extend(s);
        let (w, s) = gemm(x2, y2, &order2, (m2, w2_cols, s2_cols))?;
        ow2.extend(w);
        os2.extend(s);
    }
    Ok((ow1, os1, ow2, os2))
}

#[cfg(test)]
mod tests;
