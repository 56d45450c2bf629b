//! What the GPU tests of this check share: whether a GPU is required, and the device they
//! run on.
use candle_core::Device;

/// `FLASHINFER_RS_REQUIRE_GPU=1`: a test that cannot run is a failure, not a skip.
pub fn required() -> bool {
    std::env::var("FLASHINFER_RS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// candle's CUDA device 0 on a machine whose build has the Hopper layer, or `None` after
/// saying why (`test` names the skipped test).
pub fn hopper(test: &str) -> Option<Device> {
    let info = flashinfer_rs::build_info();
    let why = if !info.kernels_built {
        "built without kernels (feature sm90)".to_string()
    } else if flashinfer_rs::cuda_device_count() == 0 {
        "no CUDA device".to_string()
    } else {
        let info = flashinfer_rs::cuda_context(0).and_then(|c| flashinfer_rs::device_info(&c));
        match info {
            Ok(d) if d.cutlass_moe_supported => {
                return Some(Device::new_cuda(0).expect("candle CUDA device 0"))
            }
            Ok(d) => format!(
                "no Hopper layer here (sm_{}{}, or built without sm90-moe)",
                d.compute_capability.0, d.compute_capability.1
            ),
            Err(e) => format!("device 0: {e}"),
        }
    };
    assert!(!required(), "FLASHINFER_RS_REQUIRE_GPU=1 but {why}");
    eprintln!("skipped: {test}: {why}");
    None
}
