//! What every GPU test needs: a context, a stream and exclusive use of the GPU.
use std::fs::File;
use std::sync::Arc;

use flashinfer_rs::cudarc::driver::{CudaContext, CudaStream};

/// A GPU held for one test; dropping it releases the lock.
pub struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    _lock: File,
}

fn gpu_required() -> bool {
    std::env::var("FLASHINFER_RS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The GPU for `test`, or `None` (after saying so) when there is none and none is required.
pub fn gpu(test: &str) -> Option<Gpu> {
    if !flashinfer_rs::build_info().kernels_built {
        assert!(!gpu_required(), "FLASHINFER_RS_REQUIRE_GPU=1 but this build has no kernels ({test}): build with --features sm90,sm100");
        eprintln!("skipped: {test}: built without kernels");
        return None;
    }
    if flashinfer_rs::cuda_device_count() == 0 {
        assert!(
            !gpu_required(),
            "FLASHINFER_RS_REQUIRE_GPU=1 but no CUDA driver or device is present ({test})"
        );
        eprintln!("skipped: {test}: no CUDA device");
        return None;
    }
    // One lock file per machine: holds across threads (each test opens its own handle)
    // and across processes (nextest).
    let lock =
        File::create(std::env::temp_dir().join("flashinfer-rs-gpu-tests.lock")).expect("lock file");
    lock.lock().expect("lock the GPU");
    let ctx = flashinfer_rs::cuda_context(0).expect("CUDA context on device 0");
    let stream = ctx.new_stream().expect("stream");
    Some(Gpu {
        ctx,
        stream,
        _lock: lock,
    })
}

/// A list of numbers from the environment (`FLASHINFER_RS_ROUTING_TOKENS=1,5,300`), else `default`.
/// Lets the sanitizer script run a reduced matrix and the soak run longer.
pub fn env_list(var: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(var) {
        Ok(v) => v
            .split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{var}: bad number {x}"))
            })
            .collect(),
        Err(_) => default.to_vec(),
    }
}

/// Prints how many cases of `test` passed and fails it, listing every failure, if any failed.
pub fn report(test: &str, passed: usize, failures: Vec<String>) {
    eprintln!("{test}: {passed} cases passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
