#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| flashinfer_rs_fuzz::cutlass_plan(data));
