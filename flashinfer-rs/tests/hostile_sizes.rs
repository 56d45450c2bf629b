//! Sizes a caller (or a server's config file) can pass to the host-side public API, drawn
//! from the classes that broke it before (issue 26): zero sizes, sizes whose products wrap
//! `usize`, and sizes no machine can give. Every call must answer `Ok` or a typed `Err`; a
//! panic, an abort or a loop of ~2^64 steps fails (or hangs) the property.
//!
//! "Huge" sizes here are at least 2^47 elements: beyond any x86-64 user address space, so the
//! allocator refuses them whatever the machine's overcommit policy (a size a machine could
//! give, say 16 GiB, would be taken and filled: that is not an error, and not a test to run
//! on a CI machine).
use flashinfer_rs::capture::{
    Assembler, AssemblerConfig, CaptureConfig, RowOwner, SlotStore, SlotStoreConfig, StepRows,
};
use flashinfer_rs::cutlass::prepare as cutlass_prepare;
use flashinfer_rs::fused::oracle as moe_oracle;
use flashinfer_rs::fused::prepare as fused_prepare;
use flashinfer_rs::fused::Activation;
use flashinfer_rs::routing::oracle::{self, Regime};
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::Error;
use proptest::prelude::*;

/// A size: small (what tests and real layers use), or hostile.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..=16,
        1 => Just(0usize),
        1 => Just(1usize << 47),
        1 => Just(1usize << 50),
        1 => Just((1usize << 62) + 1),
        1 => Just(usize::MAX / 2),
        1 => Just(usize::MAX),
    ]
}

/// Every error these calls may give: a broken rule, or memory that cannot be had.
fn typed(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidArgument { .. } | Error::HostAllocation { .. }
    )
}

fn check<T>(r: flashinfer_rs::Result<T>) -> Result<Option<T>, TestCaseError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if typed(&e) => Ok(None),
        Err(e) => Err(TestCaseError::fail(format!("unexpected error {e:?}"))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn cutlass_weight_preparation(
        experts in size(), inter in size(), hidden in size(), len in 0usize..64,
    ) {
        let data = vec![1u8; len];
        if let Some(fc1) = check(cutlass_prepare::fc1_from_gate_up(&data, &data, experts, inter, hidden))? {
            prop_assert_eq!(fc1.len(), 2 * len);
        }
        if let Some(fc1) = check(cutlass_prepare::fc1_from_gate_first_w13(&data, experts, inter, hidden))? {
            prop_assert_eq!(fc1.len(), len);
        }
    }

    #[test]
    fn fused_weight_preparation(
        experts in size(), m1 in size(), k1 in size(), m2 in size(), k2 in size(),
        block in size(), len1 in 0usize..96, len2 in 0usize..96, gated in any::<bool>(),
    ) {
        let (w1, w2) = (vec![1u16; len1], vec![2u16; len2]);
        let block_k = (block % 3 != 0).then_some(block);
        if let Some((a, b)) = check(fused_prepare::shuffle_expert_weights(
            &w1, &w2, experts, (m1, k1), (m2, k2), gated, 128, block_k,
        ))? {
            prop_assert_eq!((a.len(), b.len()), (len1, len2));
        }
        let scales = vec![3u8; len1];
        check(fused_prepare::shuffle_block_scaled_weights(
            (&w1, &scales), (&w2, &scales), experts, (m1, k1, k2), (m2, k1, k2), gated, 128,
        ))?;
        check(fused_prepare::interleave_scales(&scales, m1, k1))?;
        check(fused_prepare::to_block_major_k(&w1, m1, k1, block))?;
        // An order that names rows outside the matrix, or a matrix of another size.
        let order: Vec<usize> = (0..len1.min(8)).map(|i| i.wrapping_mul(m2)).collect();
        check(fused_prepare::permute_rows(&w1, k1, &order))?;
        if m1 <= 16 {
            check(fused_prepare::gated_row_order(m1))?;
            check(fused_prepare::gemm1_row_order(m1, gated, 64))?;
        } else {
            prop_assert!(check(fused_prepare::gated_row_order(m1))?.is_none());
        }
    }

    #[test]
    fn reference_moe_and_quantisers(
        rows in size(), cols in size(), tokens in size(), hidden in size(), inter in size(),
        top_k in size(), local in size(), len in 0usize..300,
    ) {
        let x = vec![0.5f32; len];
        check(moe_oracle::quantize_fp8_blocks(&x, rows, cols))?;
        check(moe_oracle::quantize_fp8_activation_blocks(&x, rows, cols))?;
        check(moe_oracle::quantize_mxfp4(&x, rows, cols))?;
        check(moe_oracle::quantize_mxfp8(&x, rows, cols))?;
        check(moe_oracle::quantize_nvfp4(&x, rows, cols, 1.0))?;
        let p = moe_oracle::ReferenceProblem {
            num_tokens: tokens,
            hidden_size: hidden,
            intermediate_size: inter,
            top_k,
            local_expert_offset: 0,
            local_num_experts: local,
            activation: Activation::Swiglu,
            routing_scales_on_input: false,
        };
        let w = moe_oracle::ExpertWeights { w1: x.clone(), w2: x.clone() };
        let ids = vec![0usize; len];
        let out = check(moe_oracle::moe(&p, &x, &ids, &x, &w, moe_oracle::ActivationRounding::Bf16))?;
        if let Some(out) = out {
            prop_assert_eq!(out.len(), tokens * hidden);
        }
    }

    #[test]
    fn assembly_at_any_position(
        layers in size(), top_k in size(), max_positions in size(), position in size(),
        num_tokens in size(), experts in 1u32..600,
    ) {
        let config = AssemblerConfig::new(layers, top_k, experts, max_positions);
        let Some(mut asm) = check(Assembler::new(config))? else { return Ok(()) };
        asm.start(1, 0).unwrap();
        let row = layers * top_k; // validated: fits
        if row <= 64 {
            let step = StepRows { tokens: 1, layers, top_k, ids: vec![0; row], weights: Some(vec![0.5; row]) };
            check(asm.push_step(&step, &[RowOwner::Token { request: 1, position }]))?;
        }
        check(asm.export_range(1, 0, num_tokens))?;
        check(asm.finish(1, num_tokens))?;
    }

    #[test]
    fn slot_store_and_capture_configs(
        num_slots in size(), layers in size(), top_k in size(), max_tokens in size(),
        readback_buffers in size(), max_bytes in size(), experts in 1u32..600,
    ) {
        check(SlotStore::new(SlotStoreConfig::new(num_slots, layers, top_k, experts, max_bytes)))?;
        let cfg = CaptureConfig::new(layers, max_tokens, top_k).with_readback_buffers(readback_buffers);
        if let Some(total) = check(cfg.check())? {
            prop_assert_eq!(Some(total), max_tokens.checked_mul(top_k).and_then(|n| n.checked_mul(layers)));
        }
    }

    #[test]
    fn oracle_test_data_at_any_token_count(tokens in size(), seed in any::<u64>(), bias_len in 0usize..300) {
        let cfg = RoutingConfig::new(
            RoutingMethod::DeepSeekV3 { n_group: 8, topk_group: 4, routed_scaling_factor: 2.5 },
            256,
            8,
        );
        let small = tokens <= 16;
        for regime in [Regime::Separated, Regime::LargeBias, Regime::Underflow] {
            let got = check(oracle::regime_logits(&cfg, regime, tokens, false, seed))?;
            prop_assert_eq!(got.is_some(), small);
        }
        // A bias of any length: right only at 256.
        let bias = vec![0.001f32; bias_len];
        let got = check(oracle::separated_logits_for_bias(&cfg, tokens.min(4), false, seed, Some(&bias)))?;
        prop_assert_eq!(got.is_some(), bias_len == 256);
        prop_assert!(check(oracle::separated_logits_for_bias(&cfg, 1, false, seed, None))?.is_none());
    }
}

/// The cases the issue names, each once.
#[test]
fn the_reported_crash_inputs_are_typed_errors() {
    // cutlass::prepare with zero sizes and usize::MAX experts (used to loop ~2^64 times).
    assert!(cutlass_prepare::fc1_from_gate_up::<u8>(&[], &[], usize::MAX, 0, 2).is_err());
    assert!(cutlass_prepare::fc1_from_gate_first_w13::<u8>(&[], usize::MAX, 2, 0).is_err());
    // An assembler with 1e12 positions: a far position or a long finish asks for ~1 PB.
    let config = AssemblerConfig::new(48, 8, 128, 1_000_000_000_000);
    let mut asm = Assembler::new(config).unwrap();
    asm.start(7, 0).unwrap();
    let step = StepRows {
        tokens: 1,
        layers: 48,
        top_k: 8,
        ids: vec![3; 384],
        weights: None,
    };
    let far = RowOwner::Token {
        request: 7,
        position: 999_999_999_999,
    };
    let e = asm.push_step(&step, &[far]).unwrap_err();
    assert!(
        matches!(e, Error::HostAllocation { what: "ids", .. }),
        "{e}"
    );
    let e = asm.finish(7, 1_000_000_000_000).unwrap_err();
    assert!(matches!(e, Error::HostAllocation { .. }), "{e}");
    // The request is still tracked and the assembler still works.
    let near = RowOwner::Token {
        request: 7,
        position: 0,
    };
    asm.push_step(&step, &[near]).unwrap();
    assert_eq!(asm.finish(7, 2).unwrap().ids(), &[3i16; 384][..]);
    // A KV-slot store with no budget that needs 384 TB.
    let e = SlotStore::new(SlotStoreConfig::new(1 << 40, 48, 8, 128, usize::MAX)).unwrap_err();
    assert!(
        matches!(e, Error::HostAllocation { what: "slots", .. }),
        "{e}"
    );
    // A capture store with usize::MAX readback buffers, or 2^40 tokens.
    let capture = |max_tokens, readback_buffers| {
        CaptureConfig::new(48, max_tokens, 8)
            .with_readback_buffers(readback_buffers)
            .with_weights(true)
    };
    let e = capture(8192, usize::MAX).check().unwrap_err();
    assert!(e.to_string().contains("readback_buffers"), "{e}");
    let e = capture(1 << 40, 2).check().unwrap_err();
    assert!(e.to_string().contains("int32 token count"), "{e}");
    assert_eq!(capture(8192, 2).check().unwrap(), 8192 * 8 * 48);
    // The oracle's test data: a short or missing bias, 2^40 tokens.
    let cfg = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 1,
            topk_group: 1,
            routed_scaling_factor: 2.5,
        },
        256,
        8,
    );
    assert!(oracle::separated_logits_for_bias(&cfg, 4, false, 1, Some(&[0.0; 3])).is_err());
    assert!(oracle::separated_logits_for_bias(&cfg, 4, false, 1, None).is_err());
    let e = oracle::separated_logits(&cfg, 1 << 40, false, 1).unwrap_err();
    assert!(matches!(e, Error::HostAllocation { .. }), "{e}");
    let e = oracle::regime_logits(&cfg, Regime::LargeBias, 1 << 40, false, 1).unwrap_err();
    assert!(matches!(e, Error::HostAllocation { .. }), "{e}");
    // A regime that does not apply to the method.
    assert!(oracle::regime_logits(&cfg, Regime::Extreme, 4, false, 1).is_err());
    // fused::prepare's wrapping product: experts * m * k = (2^62 + 1) * 4 wraps to 4.
    let w = [0u8; 4];
    let e = fused_prepare::shuffle_expert_weights(
        &w,
        &w,
        (1 << 62) + 1,
        (2, 2),
        (2, 2),
        false,
        128,
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("overflows"), "{e}");
}
