//! flashinfer-rs's `candle` module example (flashinfer-rs/src/candle_example.rs, shown in that
//! module's documentation), compiled here beside candle with CUDA, and run where a GPU with
//! the Hopper layer is (else skipped, saying so; `FLASHINFER_RS_REQUIRE_GPU=1` makes that a
//! failure). Here rather than as a doctest of the workspace, which would build candle and its
//! CUDA kernels a second time for the workspace's features and profile.

mod example {
    include!("../../../flashinfer-rs/src/candle_example.rs");

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

#[test]
fn the_candle_module_example_runs() {
    let info = flashinfer_rs::build_info();
    let why = if !info.cutlass_moe {
        "built without the Hopper layer (feature sm90)"
    } else if flashinfer_rs::cuda_device_count() == 0 {
        "no CUDA device"
    } else if !hopper() {
        "the GPU is not one the Hopper layer runs on (sm_90)"
    } else {
        example::run().expect("the candle module's example");
        return;
    };
    let required = std::env::var("FLASHINFER_RS_REQUIRE_GPU").is_ok_and(|v| v == "1");
    assert!(!required, "FLASHINFER_RS_REQUIRE_GPU=1 but {why}");
    eprintln!("skipped: candle_doc_example: {why}");
}

/// Whether device 0 runs the Hopper layer.
fn hopper() -> bool {
    let ctx = flashinfer_rs::cudarc::driver::CudaContext::new(0).expect("CUDA context 0");
    flashinfer_rs::device_info(&ctx)
        .expect("device info")
        .cutlass_moe_supported
}
