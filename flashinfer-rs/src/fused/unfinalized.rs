//! The per-expert results of a call with `do_finalize = false`.

use std::sync::Arc;

use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::CudaStream;
use flashinfer_sys as sys;
use sys::fi_dtype::Type as Dtype;

use crate::error::Result;
use crate::ffi::check;

/// Per-expert results of a call with `do_finalize = false`, owned by this handle and freed
/// (stream-ordered, on the call's stream) when it drops.
#[derive(Debug)]
pub struct Unfinalized {
    raw: *mut sys::fi_moe_outputs,
    tensors: Vec<RawTensor>,
    // Keeps the stream the memory is freed on alive.
    _stream: Arc<CudaStream>,
}

/// A device tensor upstream returned, described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawTensor {
    /// Device address (valid while the [`Unfinalized`] lives).
    pub ptr: CUdeviceptr,
    /// `fi_dtype` value of its elements.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<i64>,
}

impl Unfinalized {
    /// Takes ownership of `raw`, a live handle from `fi_moe_run`, and reads its tensors.
    pub(crate) fn from_raw(
        raw: *mut sys::fi_moe_outputs,
        stream: &Arc<CudaStream>,
    ) -> Result<Unfinalized> {
        let mut handle = Unfinalized {
            raw,
            tensors: Vec::new(),
            _stream: stream.clone(),
        };
        // SAFETY: `raw` is a live handle from fi_moe_run.
        let n = unsafe { sys::fi_moe_outputs_count(raw) };
        for i in 0..n {
            // SAFETY: fi_tensor is plain data; the handle is live and `i` in range.
            let mut t: sys::fi_tensor = unsafe { std::mem::zeroed() };
            check(unsafe { sys::fi_moe_outputs_get(raw, i, &mut t) })?;
            let ndim = t.ndim.clamp(0, 4) as usize;
            handle.tensors.push(RawTensor {
                ptr: t.data as CUdeviceptr,
                dtype: t.dtype as Dtype,
                shape: t.shape[..ndim].to_vec(),
            });
        }
        Ok(handle)
    }

    /// `[gemm2_output [padded, hidden] bf16, expert_weights [T, top_k],
    /// expanded_idx_to_permuted_idx [T * top_k] i32]` (an entry upstream left undefined has
    /// `ptr == 0`).
    pub fn tensors(&self) -> &[RawTensor] {
        &self.tensors
    }
}

impl Drop for Unfinalized {
    fn drop(&mut self) {
        // SAFETY: `raw` came from fi_moe_run and is freed exactly once, here.
        unsafe { sys::fi_moe_outputs_free(self.raw) }
    }
}
