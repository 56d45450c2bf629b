//! The fused MoE's tactic query: linked, and failing cleanly (a typed error, never a process
//! exit or a crash) wherever the fused kernels cannot run.
use flashinfer_rs::fused::{
    valid_tactics, Activation, Fp8Quantization, MoeDtype, TacticQuery, WeightLayout,
};
use flashinfer_rs::Error;

fn bf16_query(num_tokens: u32) -> TacticQuery {
    TacticQuery {
        dtype_act: MoeDtype::Bf16,
        dtype_weights: MoeDtype::Bf16,
        fp8_quantization: Fp8Quantization::None,
        top_k: 8,
        hidden_size: 4096,
        intermediate_size: 1024,
        num_local_experts: 128,
        activation: Activation::Swiglu,
        use_shuffled_weight: true,
        weight_layout: WeightLayout::BlockMajorK,
        use_per_token_scaling: false,
        num_tokens,
    }
}

/// What the query must answer here: kernels not built, no usable device (CUDA error),
/// a non-Blackwell device (unsupported architecture), or tactics on Blackwell.
#[test]
fn tactic_query_answers_for_the_machine_it_runs_on() {
    let got = valid_tactics(&bf16_query(128));
    eprintln!("bf16 tactic query here: {got:?}");
    let build = flashinfer_rs::build_info();
    if !build.sm100 {
        assert_eq!(got, Err(Error::KernelsNotBuilt));
        return;
    }
    if flashinfer_rs::cuda_device_count() == 0 {
        assert!(
            matches!(got, Err(Error::Cuda(ref m)) if m.contains("cudaGetDevice")),
            "{got:?}"
        );
        return;
    }
    let ctx = flashinfer_rs::cudarc::driver::CudaContext::new(0).unwrap();
    let device = flashinfer_rs::device_info(&ctx).unwrap();
    if device.fused_supported {
        let tactics = got.expect("tactics on Blackwell");
        assert!(!tactics.is_empty());
    } else {
        assert!(
            matches!(got, Err(Error::UnsupportedArch(ref m)) if m.contains("sm_100a")),
            "{got:?}"
        );
    }
}
