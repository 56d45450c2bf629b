//! The one error type of flashinfer-rs. Every variant says what was wrong; argument errors
//! name the argument and the rule it broke.
use std::fmt;

/// Result of every fallible flashinfer-rs call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, from argument checks to the kernels.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An argument broke a rule; checked before anything is launched.
    #[error("invalid argument `{arg}`: {rule}")]
    InvalidArgument {
        /// The argument, as the API names it (`top_k`, `replay`, `logits`, ...).
        arg: &'static str,
        /// The rule broken, with the values involved.
        rule: String,
    },
    /// Two buffers (or a buffer and the stream) belong to different CUDA contexts.
    #[error("`{arg}` lives in another CUDA context than the stream")]
    ContextMismatch {
        /// The offending argument.
        arg: &'static str,
    },
    /// This build has no kernels for the call: enable the `sm90` and/or `sm100` feature
    /// (`sm90-moe` for [`CutlassMoe`](crate::cutlass::CutlassMoe)).
    #[error(
        "flashinfer-rs was built without these kernels; enable the `sm90` and/or `sm100` feature \
         (`sm90-moe` for the CUTLASS MoE)"
    )]
    KernelsNotBuilt,
    /// The current GPU's architecture has no kernels in this build.
    #[error("unsupported GPU architecture: {0}")]
    UnsupportedArch(String),
    /// FlashInfer rejected the call (one of its own checks); upstream's message.
    #[error("FlashInfer rejected the call: {0}")]
    Upstream(String),
    /// A CUDA runtime call made by the C shim failed: which call, and its `cudaError_t`
    /// (e.g. 2 = `cudaErrorMemoryAllocation`, 700 = `cudaErrorIllegalAddress`).
    #[error("CUDA error in `{call}`: {message} (cudaError_t {code})")]
    Cuda {
        /// The runtime call that failed (`cudaMallocAsync`, `routing kernel launch`, ...).
        call: String,
        /// Its `cudaError_t` value.
        code: i32,
        /// Its name and description, as the CUDA runtime gives them.
        message: String,
    },
    /// No CUDA driver (`libcuda.so.1`) can be loaded here, so no CUDA context can be made
    /// ([`cuda_context`](crate::cuda_context) answers this where cudarc's `CudaContext::new`
    /// panics).
    #[error("no CUDA driver: libcuda.so.1 cannot be loaded on this machine")]
    NoDriver,
    /// A CUDA driver call made from Rust (through cudarc) failed; keeps cudarc's error, whose
    /// `.0` is the driver's `CUresult`.
    #[error("CUDA driver error: {0}")]
    Driver(cudarc::driver::DriverError),
    /// An NCCL call failed (feature `nccl`): which call, and its `ncclResult_t` (e.g. 2 =
    /// `ncclSystemError`, 3 = `ncclInternalError`, 4 = `ncclInvalidArgument`).
    #[error("NCCL error in `{call}` (ncclResult_t {code})")]
    Nccl {
        /// The NCCL call that failed.
        call: &'static str,
        /// Its `ncclResult_t` value.
        code: i32,
    },
    /// A capture call out of protocol order (`end_step` without `begin_step`, a step begun
    /// twice, ...): a bug in the caller's serving loop, not in its data.
    #[error("capture protocol: `{call}` {rule}")]
    CaptureProtocol {
        /// The capture call that was made out of order.
        call: &'static str,
        /// What the protocol asks instead.
        rule: String,
    },
    /// Every readback buffer still holds a step that was not collected: collect one, then
    /// end the step again (back-pressure, not a failure of the data).
    #[error("all {in_flight} capture readback buffers are in flight; collect() a step first")]
    Backpressure {
        /// Steps in flight (= readback buffers of the store).
        in_flight: usize,
    },
    /// The prebuilt kernel library (`FLASHINFER_RS_KERNELS_LIB`) cannot be used: missing,
    /// altered, or built for another crate, FlashInfer or ABI version or without an
    /// architecture this build asks for. The message names both sides.
    #[error("prebuilt kernel library: {0}")]
    KernelLibrary(String),
    /// Host memory a call needed could not be had (the allocation was refused: the sizes the
    /// caller gave ask for more than this machine has). Nothing was changed; a server keeps
    /// running and answers the request that asked for it with this error.
    #[error("cannot allocate {bytes} bytes of host memory for `{what}`")]
    HostAllocation {
        /// What the memory was for (`ids`, `weights`, `logits`, ...).
        what: &'static str,
        /// How many bytes were asked for (`u128`: a request may not even fit `usize`).
        bytes: u128,
    },
    /// A candle operation this crate ran for the caller failed (feature `candle`: weight
    /// preparation's concatenations and dtype conversions); candle's message.
    #[error("candle: {0}")]
    Candle(String),
    /// A cubin is missing, unreadable or fails its sha256.
    #[error("cubin error: {0}")]
    Cubin(String),
    /// Something that should not happen; please report it.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn invalid(arg: &'static str, rule: impl fmt::Display) -> Error {
        Error::InvalidArgument {
            arg,
            rule: rule.to_string(),
        }
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Driver(e)
    }
}

/// Returns `Err(InvalidArgument)` unless `ok`.
pub(crate) fn ensure(ok: bool, arg: &'static str, rule: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(arg, rule()))
    }
}

/// Returns `Err(InvalidArgument)` naming the first of `sizes` that is 0 ("must be > 0").
pub(crate) fn ensure_nonzero(sizes: &[(&'static str, usize)]) -> Result<()> {
    for &(arg, v) in sizes {
        ensure(v > 0, arg, || "must be > 0".into())?;
    }
    Ok(())
}

/// Returns `Err(InvalidArgument)` unless `arg` holds exactly `want` elements; `shape` says
/// what shape `want` is.
pub(crate) fn ensure_len(
    arg: &'static str,
    have: usize,
    want: usize,
    shape: impl FnOnce() -> String,
) -> Result<()> {
    ensure(have == want, arg, || {
        format!("holds {have} elements, {} is {want}", shape())
    })
}

/// Whether `len` elements cover `a * b` of them; false when the product overflows (no buffer
/// can hold it). Every size rule uses this, so a huge count can never wrap into a small one.
pub(crate) fn covers(len: usize, a: usize, b: usize) -> bool {
    a.checked_mul(b).is_some_and(|need| len >= need)
}

/// The largest row count the kernels index: upstream's token counts are `int32`.
pub(crate) const MAX_TOKENS: usize = i32::MAX as usize;
