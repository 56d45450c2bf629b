//! The replay buffer: an int16 `[rows, top_k]` device matrix the kernels write expert ids
//! into. Its checks are the ones FlashInfer 0.6.13 forgets (it writes out of bounds when
//! `rows < num_tokens`).

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaViewMut, DeviceSlice};

use crate::error::{ensure, Result};

/// A mutable, contiguous int16 `[rows, cols]` view of device memory that a routing or fused
/// MoE call writes the chosen expert ids into (`cols` must equal the call's `top_k`).
///
/// The element type is `i16` by construction and cudarc views are contiguous, so what is left
/// to check per call is the shape: `cols == top_k` and `rows >= num_tokens`.
#[derive(Debug)]
pub struct ReplayView<'a> {
    data: CudaViewMut<'a, i16>,
    rows: usize,
    cols: usize,
}

impl<'a> ReplayView<'a> {
    /// Views `data` as `[rows, cols]`; its length must be exactly `rows * cols`.
    pub fn new(data: CudaViewMut<'a, i16>, rows: usize, cols: usize) -> Result<ReplayView<'a>> {
        ensure(cols > 0, "replay", || "cols must be > 0".into())?;
        ensure(rows.checked_mul(cols) == Some(data.len()), "replay", || {
            format!(
                "holds {} elements, not rows ({rows}) x cols ({cols})",
                data.len()
            )
        })?;
        Ok(ReplayView { data, rows, cols })
    }

    /// Views a whole slice as `[len / cols, cols]`.
    pub fn from_slice(slice: &'a mut CudaSlice<i16>, cols: usize) -> Result<ReplayView<'a>> {
        ensure(
            cols > 0 && slice.len().is_multiple_of(cols),
            "replay",
            || format!("length {} is not a multiple of cols ({cols})", slice.len()),
        )?;
        let rows = slice.len() / cols;
        ReplayView::new(slice.as_view_mut(), rows, cols)
    }

    /// Rows of the view.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of the view (the top-k it can record).
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        self.data.stream()
    }

    pub(crate) fn data_mut(&mut self) -> &mut CudaViewMut<'a, i16> {
        &mut self.data
    }
}

/// The replay rule of every routing (and fused) call: `[rows >= num_tokens, top_k]`.
/// FlashInfer 0.6.13 checks neither and writes out of bounds past a short buffer.
pub(crate) fn check_replay(
    rows: usize,
    cols: usize,
    num_tokens: usize,
    top_k: usize,
) -> Result<()> {
    ensure(cols == top_k, "replay", || {
        format!("has {cols} columns, top_k is {top_k}")
    })?;
    ensure(rows >= num_tokens, "replay", || {
        format!("has {rows} rows, the call routes {num_tokens} tokens")
    })
}
