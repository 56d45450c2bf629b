//! The one context rule of every kernel call: each buffer must live in the CUDA context of
//! the stream the call runs on (the kernels get raw device pointers, which mean nothing in
//! another context).

use std::sync::Arc;

use cudarc::driver::CudaStream;

use crate::error::{Error, Result};

/// `Err(ContextMismatch)` naming the first argument whose stream belongs to another context
/// than `stream`'s.
pub(crate) fn same_context<'s>(
    stream: &CudaStream,
    args: impl IntoIterator<Item = (&'static str, &'s Arc<CudaStream>)>,
) -> Result<()> {
    let ctx = stream.context().cu_ctx();
    match args.into_iter().find(|(_, s)| s.context().cu_ctx() != ctx) {
        Some((arg, _)) => Err(Error::ContextMismatch { arg }),
        None => Ok(()),
    }
}
