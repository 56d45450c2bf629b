//! The thin layer over the C ABI: statuses become [`Error`]s, and the build and device
//! queries become plain Rust values.
use std::ffi::CStr;

use flashinfer_sys as sys;

use crate::error::{Error, Result};

/// Turns a C ABI status into a `Result`, reading the thread-local message on failure.
pub(crate) fn check(status: sys::fi_status) -> Result<()> {
    if status == sys::fi_status::FI_STATUS_OK {
        return Ok(());
    }
    // SAFETY: the C ABI always returns valid NUL-terminated strings owned by this thread
    // (or static), valid until its next failing call; both are copied here.
    let text = |p: *const std::os::raw::c_char| {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    let message = text(unsafe { sys::fi_last_error_message() });
    Err(match status {
        sys::fi_status::FI_STATUS_INVALID_ARGUMENT => Error::InvalidArgument {
            arg: "(C ABI)",
            rule: message,
        },
        sys::fi_status::FI_STATUS_CUDA_ERROR => Error::Cuda {
            call: text(unsafe { sys::fi_last_error_call() }),
            // SAFETY: plain thread-local read.
            code: unsafe { sys::fi_last_error_cuda_code() },
            message,
        },
        sys::fi_status::FI_STATUS_UPSTREAM_ERROR => Error::Upstream(message),
        sys::fi_status::FI_STATUS_KERNELS_NOT_BUILT => Error::KernelsNotBuilt,
        sys::fi_status::FI_STATUS_UNSUPPORTED_ARCH => Error::UnsupportedArch(message),
        sys::fi_status::FI_STATUS_CUBIN_ERROR => Error::Cubin(message),
        sys::fi_status::FI_STATUS_KERNELS_LIBRARY_ERROR => Error::KernelLibrary(message),
        _ => Error::Internal(message),
    })
}

/// What this build of the kernels holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildInfo {
    /// FlashInfer release the kernels are compiled from (`"0.6.13"`).
    pub flashinfer_version: String,
    /// Batched-GEMM cubin artifact the fused MoE loads.
    pub bmm_artifact: String,
    /// Whether any kernels were compiled in.
    pub kernels_built: bool,
    /// Routing kernels for Hopper (`sm_90a`).
    pub sm90: bool,
    /// Routing and the fused MoE for Blackwell: B200/GB200 (sm_100) and B300/GB300 (sm_103).
    pub sm100: bool,
    /// CUDA runtime version the kernels were built against (e.g. 13000), 0 without kernels.
    pub cuda_version: i32,
    /// Machine-code targets in the library: `sm_90a` (routing and the CUTLASS MoE on Hopper),
    /// `sm_100f` (the sm_100 family target: routing and the fused MoE's own kernels on sm_100
    /// and sm_103).
    pub targets: Vec<String>,
    /// Version of the flashinfer-sys crate that built the kernels (differs from this crate's
    /// only with a prebuilt kernel library, which is then refused).
    pub crate_version: String,
    /// Our patches to the FlashInfer sources in these kernels (`["0001", ..., "0008"]`; see
    /// flashinfer-sys/vendor/README.md).
    pub patches: Vec<String>,
    /// FlashInfer's CUTLASS fused MoE for Hopper ([`CutlassMoe`](crate::cutlass::CutlassMoe),
    /// feature `sm90-moe`).
    pub cutlass_moe: bool,
    /// ... with its fp8 per-tensor GEMMs
    /// ([`CutlassMoe::new_fp8`](crate::cutlass::CutlassMoe::new_fp8), feature `sm90-moe-fp8`).
    pub cutlass_moe_fp8: bool,
}

/// Describes this build: pinned upstream version, artifact and architectures.
pub fn build_info() -> BuildInfo {
    let mut raw = sys::fi_build_info::default();
    // SAFETY: `raw` is a valid out-pointer; the call only writes it.
    let status = unsafe { sys::fi_get_build_info(&mut raw) };
    if status != sys::fi_status::FI_STATUS_OK {
        // Only a prebuilt kernel library that cannot be used gets here: this build then has
        // no kernels (every call says why: Error::KernelLibrary).
        return BuildInfo {
            flashinfer_version: sys::FLASHINFER_VERSION.into(),
            bmm_artifact: sys::BMM_ARTIFACT.into(),
            kernels_built: false,
            sm90: false,
            sm100: false,
            cuda_version: 0,
            targets: Vec::new(),
            crate_version: String::new(),
            patches: Vec::new(),
            cutlass_moe: false,
            cutlass_moe_fp8: false,
        };
    }
    // SAFETY: the strings are static NUL-terminated literals of the C library.
    let text = |p: *const std::os::raw::c_char| {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    let list = |p| {
        text(p)
            .split(',')
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect()
    };
    BuildInfo {
        flashinfer_version: text(raw.flashinfer_version),
        bmm_artifact: text(raw.bmm_artifact),
        kernels_built: raw.kernels_built != 0,
        sm90: raw.has_sm90 != 0,
        sm100: raw.has_sm100 != 0,
        cuda_version: raw.cuda_version,
        targets: list(raw.targets),
        crate_version: text(raw.crate_version),
        patches: list(raw.patches),
        cutlass_moe: raw.has_cutlass_moe != 0,
        cutlass_moe_fp8: raw.has_cutlass_moe_fp8 != 0,
    }
}

/// The calling thread's current device, as the kernels see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// CUDA device ordinal.
    pub ordinal: i32,
    /// Compute capability (major, minor).
    pub compute_capability: (i32, i32),
    /// Streaming multiprocessors.
    pub sm_count: i32,
    /// This build can route on this device.
    pub routing_supported: bool,
    /// This build can run the fused MoE on this device.
    pub fused_supported: bool,
    /// This build can run the CUTLASS fused MoE ([`CutlassMoe`](crate::cutlass::CutlassMoe))
    /// on this device.
    pub cutlass_moe_supported: bool,
}

/// Queries the device of `ctx` (binding it to the calling thread first).
pub fn device_info(ctx: &cudarc::driver::CudaContext) -> Result<DeviceInfo> {
    ctx.bind_to_thread()?;
    let mut raw = sys::fi_device_info::default();
    // SAFETY: `raw` is a valid out-pointer; the call only writes it.
    check(unsafe { sys::fi_get_device_info(&mut raw) })?;
    Ok(DeviceInfo {
        ordinal: raw.device,
        compute_capability: (raw.sm_major, raw.sm_minor),
        sm_count: raw.sm_count,
        routing_supported: raw.routing_supported != 0,
        fused_supported: raw.fused_supported != 0,
        cutlass_moe_supported: raw.cutlass_moe_supported != 0,
    })
}

/// CUDA devices visible to this process; 0 when there is no driver at all (never panics,
/// unlike `CudaContext::new` without a driver).
pub fn cuda_device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    cudarc::driver::CudaContext::device_count().map_or(0, |n| n.max(0) as usize)
}

/// The primary CUDA context of device `ordinal`, or a typed error: [`Error::NoDriver`] where
/// no driver can be loaded (cudarc's `CudaContext::new` panics there),
/// [`Error::InvalidArgument`] for an ordinal past [`cuda_device_count`], and the driver's own
/// error otherwise. Every context this crate's examples and tests make comes from here.
///
/// ```no_run
/// let ctx = flashinfer_rs::cuda_context(0)?;
/// let stream = ctx.default_stream();
/// # Ok::<(), flashinfer_rs::Error>(())
/// ```
pub fn cuda_context(ordinal: usize) -> Result<std::sync::Arc<cudarc::driver::CudaContext>> {
    if !driver_present() {
        return Err(Error::NoDriver);
    }
    let count = cuda_device_count();
    crate::error::ensure(ordinal < count, "ordinal", || {
        format!("device {ordinal} does not exist: {count} CUDA devices are visible")
    })?;
    // cudarc panics on what it cannot load or bind; a panic must not cross into the caller's
    // server (the driver probe above rules out the usual cause).
    std::panic::catch_unwind(|| cudarc::driver::CudaContext::new(ordinal))
        .map_err(|_| {
            Error::Internal(format!(
                "cudarc panicked creating the context of device {ordinal}"
            ))
        })?
        .map_err(Error::from)
}

/// Whether the CUDA driver library can be loaded. Asked of the dynamic loader directly, not of
/// cudarc: `cudarc::driver::sys::is_culib_present` exists only when cudarc loads the driver at
/// run time, while a binary that links it (candle's `dynamic-linking`) cannot start without it.
fn driver_present() -> bool {
    ["libcuda.so.1", "libcuda.so"].iter().any(|name| {
        // SAFETY: loading the CUDA driver runs only its own initialisers; the handle is
        // dropped at once (the library stays loaded for cudarc).
        unsafe { libloading::Library::new(*name) }.is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where there is no driver (CI) this is `NoDriver`, never cudarc's panic; where there is
    /// one, an ordinal past the last device is refused by name.
    #[test]
    fn a_context_is_a_typed_error_where_it_cannot_be_made() {
        let count = cuda_device_count();
        match cuda_context(count) {
            Err(Error::NoDriver) => assert_eq!(count, 0),
            Err(Error::InvalidArgument { arg: "ordinal", .. }) => {}
            other => panic!("device {count} of {count}: {other:?}"),
        }
        if count == 0 {
            assert!(matches!(
                cuda_context(0),
                Err(Error::NoDriver | Error::InvalidArgument { .. })
            ));
        }
    }
}
