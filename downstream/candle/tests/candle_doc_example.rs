//! flashinfer-rs's `candle` module example (flashinfer-rs/src/candle_example.rs, shown in that
//! module's documentation), compiled here beside candle with CUDA, and run where a GPU with
//! the Hopper layer is (else skipped, saying so; `FLASHINFER_RS_REQUIRE_GPU=1` makes that a
//! failure). Here rather than as a doctest of the workspace, which would build candle and its
//! CUDA kernels a second time for the workspace's features and profile.

mod common;

mod example {
    include!("../../../flashinfer-rs/src/candle_example.rs");

    pub fn run() -> Result<(), Box<dyn std::error::Error>> {
        main()
    }
}

#[test]
fn the_candle_module_example_runs() {
    if common::hopper("candle_doc_example").is_some() {
        example::run().expect("the candle module's example");
    }
}
