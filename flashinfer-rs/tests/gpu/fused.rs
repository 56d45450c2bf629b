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
        local_num_experts: 128,
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
            matches!(got, Err(Error::Cuda { ref call, code, ref message })
                if call == "cudaGetDevice" && code != 0 && message.contains("cudaGetDevice")),
            "{got:?}"
        );
        return;
    }
    let ctx = flashinfer_rs::cuda_context(0).unwrap();
    let device = flashinfer_rs::device_info(&ctx).unwrap();
    if device.fused_supported {
        let tactics = got.expect("tactics on Blackwell");
        assert!(!tactics.is_empty());
    } else {
        assert!(
            matches!(got, Err(Error::UnsupportedArch(ref m)) if m.contains("sm_100f")),
            "{got:?}"
        );
    }
}

mod calls {
    //! The four fused calls on this machine's GPU: off Blackwell each is refused with a typed
    //! `UnsupportedArch` before anything is launched (output and replay keep their sentinels);
    //! bad arguments are refused before the architecture is even asked.
    use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream};
    use flashinfer_rs::fused::{
        trtllm_bf16_moe, trtllm_fp8_block_scale_moe, Bf16, Bf16Inputs, Bf16Weights, E2m1x2, E4m3,
        Fp4ActivationKind, Fp4Activations, Fp4BlockScale, Fp4BlockScaleInputs,
        Fp4BlockScaleWeights, Fp4Weights, Fp8Activations, Fp8BlockInputScale, Fp8BlockScale,
        Fp8BlockScaleInputs, Fp8BlockScaleWeights, Fp8BlockWeightScales, Fp8PerTensor,
        Fp8PerTensorInputs, Fp8PerTensorWeights, FusedMoe, MoeBatch, MoeConfig, MoeOptions,
        MoeRoutingInput, Precision, SwigluParams, Ue8m0, WeightLayout,
    };
    use flashinfer_rs::half::bf16;
    use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
    use flashinfer_rs::{Error, ReplayView};
    use std::sync::Arc;

    use crate::common::gpu;

    const T: usize = 4;
    const H: usize = 256;
    const I: usize = 128;
    const E: usize = 8;
    const K: usize = 2;
    const SENTINEL: i16 = -7;

    fn zeros<
        T: flashinfer_rs::cudarc::driver::DeviceRepr + flashinfer_rs::cudarc::driver::ValidAsZeroBits,
    >(
        s: &Arc<CudaStream>,
        n: usize,
    ) -> CudaSlice<T> {
        s.alloc_zeros(n).unwrap()
    }

    struct Common {
        logits: CudaSlice<f32>,
        output: CudaSlice<bf16>,
        replay: CudaSlice<i16>,
    }

    impl Common {
        fn new(s: &Arc<CudaStream>) -> Common {
            Common {
                logits: s
                    .clone_htod(&(0..T * E).map(|i| i as f32 * 0.01).collect::<Vec<_>>())
                    .unwrap(),
                output: s.clone_htod(&vec![bf16::from_f32(1.5); T * H]).unwrap(),
                replay: s.clone_htod(&vec![SENTINEL; (T + 2) * K]).unwrap(),
            }
        }
        fn untouched(&self, s: &Arc<CudaStream>) -> bool {
            let out = s.clone_dtoh(&self.output).unwrap();
            let rep = s.clone_dtoh(&self.replay).unwrap();
            out.iter().all(|&v| v == bf16::from_f32(1.5)) && rep.iter().all(|&v| v == SENTINEL)
        }

        /// Builds a `P` layer and runs it once on this machine's buffers, with `replay_rows`
        /// rows of replay.
        fn forward<'a, P: Precision>(
            &'a mut self,
            s: &Arc<CudaStream>,
            options: MoeOptions,
            weights: P::Weights<'_>,
            inputs: P::Inputs<'a>,
            replay_rows: usize,
        ) -> Result<(), Error> {
            let Common {
                logits,
                output,
                replay,
            } = self;
            let moe = FusedMoe::<P>::new(config(options), weights)?;
            let mut out = output.as_view_mut();
            let mut rep =
                ReplayView::new(replay.slice_mut(..replay_rows * K), replay_rows, K).unwrap();
            let batch = MoeBatch {
                num_tokens: T,
                routing: routing(logits),
                inputs,
            };
            moe.forward(s, batch, &mut out, Some(&mut rep)).map(|_| ())
        }
    }

    fn config(options: MoeOptions) -> MoeConfig {
        MoeConfig {
            routing: RoutingConfig::new(RoutingMethod::Renormalize, E as u32, K as u32),
            hidden_size: H,
            intermediate_size: I,
            options,
        }
    }

    fn routing(logits: &CudaSlice<f32>) -> MoeRoutingInput<'_> {
        MoeRoutingInput::Logits {
            logits: logits.into(),
            bias: None,
        }
    }

    /// Runs each op once (bf16 and fp8 block-scale through the one-shot entry points, the
    /// others through a `FusedMoe`); returns the four results.
    fn run_all(
        s: &Arc<CudaStream>,
        c: &mut Common,
        replay_rows: usize,
    ) -> Vec<(&'static str, Result<(), Error>)> {
        let mut results = Vec::new();
        let m1 = 2 * I;
        let f32s = |n| zeros::<f32>(s, n);
        // bf16
        {
            let (hs, w1, w2) = (
                zeros::<bf16>(s, T * H),
                zeros::<bf16>(s, E * m1 * H),
                zeros::<bf16>(s, E * H * I),
            );
            let weights = Bf16Weights {
                gemm1_weights: w1.as_view(),
                gemm2_weights: w2.as_view(),
                swiglu: SwigluParams::default(),
            };
            let batch = MoeBatch::<Bf16> {
                num_tokens: T,
                routing: routing(&c.logits),
                inputs: Bf16Inputs {
                    hidden_states: hs.as_view(),
                    gemm1_lora_delta: None,
                },
            };
            let mut out = c.output.as_view_mut();
            let mut rep =
                ReplayView::new(c.replay.slice_mut(..replay_rows * K), replay_rows, K).unwrap();
            let res = trtllm_bf16_moe(
                s,
                &config(MoeOptions::new(WeightLayout::BlockMajorK)),
                weights,
                batch,
                &mut out,
                Some(&mut rep),
            );
            results.push(("bf16", res.map(|_| ())));
        }
        // fp8 per tensor
        {
            let hs = zeros::<E4m3>(s, T * H);
            let (w1, w2) = (zeros::<E4m3>(s, E * m1 * H), zeros::<E4m3>(s, E * H * I));
            let (s1, s2, s3) = (f32s(E), f32s(E), f32s(E));
            let weights = Fp8PerTensorWeights {
                gemm1_weights: w1.as_view(),
                output1_scales_scalar: s1.as_view(),
                output1_scales_gate_scalar: s2.as_view(),
                gemm2_weights: w2.as_view(),
                output2_scales_scalar: s3.as_view(),
                use_routing_scales_on_input: false,
            };
            let inputs = Fp8PerTensorInputs {
                hidden_states: Fp8Activations::E4m3(hs.as_view()),
            };
            let opts = MoeOptions::new(WeightLayout::MajorK);
            let res = c.forward::<Fp8PerTensor>(s, opts, weights, inputs, replay_rows);
            results.push(("fp8_per_tensor", res));
        }
        // fp8 block scale (DeepSeek)
        {
            let hs = zeros::<E4m3>(s, T * H);
            let (w1, w2) = (zeros::<E4m3>(s, E * m1 * H), zeros::<E4m3>(s, E * H * I));
            let (hsc, w1s, w2s) = (
                f32s(H / 128 * T),
                f32s(E * m1 / 128 * H / 128),
                f32s(E * H / 128 * I / 128),
            );
            let weights = Fp8BlockScaleWeights {
                gemm1_weights: w1.as_view(),
                gemm2_weights: w2.as_view(),
                scales: Fp8BlockWeightScales::DeepSeek {
                    gemm1_weights_scale: w1s.as_view(),
                    gemm2_weights_scale: w2s.as_view(),
                },
                swiglu: SwigluParams::default(),
            };
            let batch = MoeBatch::<Fp8BlockScale> {
                num_tokens: T,
                routing: routing(&c.logits),
                inputs: Fp8BlockScaleInputs {
                    hidden_states: hs.as_view(),
                    hidden_states_scale: Fp8BlockInputScale::DeepSeek(hsc.as_view()),
                    gemm1_lora_delta: None,
                },
            };
            let mut out = c.output.as_view_mut();
            let mut rep =
                ReplayView::new(c.replay.slice_mut(..replay_rows * K), replay_rows, K).unwrap();
            let mut opts = MoeOptions::new(WeightLayout::MajorK);
            opts.use_shuffled_weight = false;
            let res = trtllm_fp8_block_scale_moe(
                s,
                &config(opts),
                weights,
                batch,
                &mut out,
                Some(&mut rep),
            );
            results.push(("fp8_block_scale", res.map(|_| ())));
        }
        // fp4 block scale (nvfp4 x nvfp4)
        {
            let hs = zeros::<E2m1x2>(s, T * H / 2);
            // 128x4-interleaved activation scales: rows padded to 128.
            let hsc = zeros::<E4m3>(s, 128 * H / 16);
            let (w1, w2) = (
                zeros::<E2m1x2>(s, E * m1 * H / 2),
                zeros::<E2m1x2>(s, E * H * I / 2),
            );
            let (w1s, w2s) = (
                zeros::<E4m3>(s, E * m1 * H / 16),
                zeros::<E4m3>(s, E * H * I / 16),
            );
            let (s1, s2, s3) = (f32s(E), f32s(E), f32s(E));
            let mut ids = zeros::<i32>(s, T * K);
            let mut wts = zeros::<bf16>(s, T * K);
            let weights = Fp4BlockScaleWeights {
                activations: Fp4ActivationKind::Nvfp4,
                weights: Fp4Weights::Nvfp4 {
                    gemm1: w1.as_view(),
                    gemm1_scale: w1s.as_view(),
                    gemm2: w2.as_view(),
                    gemm2_scale: w2s.as_view(),
                },
                gemm1_bias: None,
                gemm2_bias: None,
                output1_scales_scalar: Some(s1.as_view()),
                output1_scales_gate_scalar: Some(s2.as_view()),
                output2_scales_scalar: Some(s3.as_view()),
                swiglu: SwigluParams::default(),
            };
            let inputs = Fp4BlockScaleInputs {
                hidden_states: Fp4Activations::Nvfp4 {
                    data: hs.as_view(),
                    scale: hsc.as_view(),
                },
                per_token_scales: None,
                topk_ids: ids.as_view_mut(),
                topk_weights: wts.as_view_mut(),
            };
            let opts = MoeOptions::new(WeightLayout::MajorK);
            let res = c.forward::<Fp4BlockScale>(s, opts, weights, inputs, replay_rows);
            results.push(("fp4_block_scale", res));
        }
        results
    }

    #[test]
    fn every_fused_call_is_refused_cleanly_off_blackwell() {
        let Some(g) = gpu("fused::calls::every_fused_call_is_refused_cleanly_off_blackwell") else {
            return;
        };
        let device = flashinfer_rs::device_info(&g.ctx).unwrap();
        if device.fused_supported {
            eprintln!("skipped: this GPU runs the fused MoE; the sm100 suite covers it");
            return;
        }
        let mut c = Common::new(&g.stream);
        let build = flashinfer_rs::build_info();
        for (op, res) in run_all(&g.stream, &mut c, T + 2) {
            eprintln!("{op}: {res:?}");
            if build.sm100 {
                assert!(
                    matches!(res, Err(Error::UnsupportedArch(ref m)) if m.contains("sm_100f")),
                    "{op}: {res:?}"
                );
            } else {
                assert_eq!(res, Err(Error::KernelsNotBuilt), "{op}");
            }
        }
        assert!(
            c.untouched(&g.stream),
            "a refused call wrote its output or replay buffer"
        );
    }

    #[test]
    fn bad_fused_arguments_are_refused_before_the_architecture_is_asked() {
        let Some(g) =
            gpu("fused::calls::bad_fused_arguments_are_refused_before_the_architecture_is_asked")
        else {
            return;
        };
        let mut c = Common::new(&g.stream);
        // A replay buffer one row short of the tokens: every op names `replay`.
        for (op, res) in run_all(&g.stream, &mut c, T - 1) {
            assert!(
                matches!(res, Err(Error::InvalidArgument { arg: "replay", .. })),
                "{op}: {res:?}"
            );
        }
        assert!(c.untouched(&g.stream));
    }

    /// A fused layer handed the views of a store that captures weights refuses them (it
    /// exposes no weights) before anything runs; an ids-only store's views go through to the
    /// call (which this machine then refuses off Blackwell).
    #[test]
    fn a_fused_layer_refuses_a_store_that_captures_weights() {
        use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepLayout};
        let Some(g) = gpu("fused::calls::a_fused_layer_refuses_a_store_that_captures_weights")
        else {
            return;
        };
        let s = &g.stream;
        let c = Common::new(s);
        let (hs, w1, w2) = (
            zeros::<bf16>(s, T * H),
            zeros::<bf16>(s, E * 2 * I * H),
            zeros::<bf16>(s, E * H * I),
        );
        let weights = Bf16Weights {
            gemm1_weights: w1.as_view(),
            gemm2_weights: w2.as_view(),
            swiglu: SwigluParams::default(),
        };
        let moe =
            FusedMoe::<Bf16>::new(config(MoeOptions::new(WeightLayout::BlockMajorK)), weights)
                .unwrap();
        for capture_weights in [true, false] {
            let cfg = CaptureConfig::new(1, T, K).with_weights(capture_weights);
            let mut store = CaptureStore::new(s, cfg).unwrap();
            let mut output = s.clone_htod(&vec![bf16::from_f32(1.5); T * H]).unwrap();
            let batch = MoeBatch::<Bf16> {
                num_tokens: T,
                routing: routing(&c.logits),
                inputs: Bf16Inputs {
                    hidden_states: hs.as_view(),
                    gemm1_lora_delta: None,
                },
            };
            let res = moe.forward_captured(
                s,
                batch,
                &mut output.as_view_mut(),
                store.layer_views(0).unwrap(),
            );
            if capture_weights {
                assert!(
                    matches!(res, Err(Error::InvalidArgument { arg: "views", .. })),
                    "{res:?}"
                );
            } else if flashinfer_rs::build_info().sm100 {
                // Blackwell kernels built: off Blackwell the call is refused at the gate.
                assert!(matches!(res, Err(Error::UnsupportedArch(_))), "{res:?}");
            } else {
                assert!(matches!(res, Err(Error::KernelsNotBuilt)), "{res:?}");
            }
            let out = s.clone_dtoh(&output).unwrap();
            assert!(
                out.iter().all(|&v| v == bf16::from_f32(1.5)),
                "output written"
            );
            store.begin_step(s, StepLayout::single(T)).unwrap();
            store.end_step(s).unwrap();
            let rows = store.collect().unwrap().expect("a step in flight").rows;
            assert!(rows.ids.iter().all(|&v| v == -1), "store rows written");
        }
    }

    #[test]
    fn inputs_of_another_variant_than_the_layer_are_refused() {
        let Some(g) = gpu("fused::calls::inputs_of_another_variant_than_the_layer_are_refused")
        else {
            return;
        };
        let s = &g.stream;
        let mut c = Common::new(s);
        let m1 = 2 * I;
        // A DeepSeek fp8 layer fed MX activation scales.
        let (w1, w2) = (zeros::<E4m3>(s, E * m1 * H), zeros::<E4m3>(s, E * H * I));
        let (w1s, w2s) = (
            zeros::<f32>(s, E * m1 / 128 * H / 128),
            zeros::<f32>(s, E * H * I / 128 / 128),
        );
        let (hs, mx) = (zeros::<E4m3>(s, T * H), zeros::<Ue8m0>(s, 128 * H / 32));
        let weights = Fp8BlockScaleWeights {
            gemm1_weights: w1.as_view(),
            gemm2_weights: w2.as_view(),
            scales: Fp8BlockWeightScales::DeepSeek {
                gemm1_weights_scale: w1s.as_view(),
                gemm2_weights_scale: w2s.as_view(),
            },
            swiglu: SwigluParams::default(),
        };
        let inputs = Fp8BlockScaleInputs {
            hidden_states: hs.as_view(),
            hidden_states_scale: Fp8BlockInputScale::Mx(mx.as_view()),
            gemm1_lora_delta: None,
        };
        let mut opts = MoeOptions::new(WeightLayout::MajorK);
        opts.use_shuffled_weight = false;
        let res = c.forward::<Fp8BlockScale>(s, opts, weights, inputs, T);
        assert!(
            matches!(res, Err(Error::InvalidArgument { arg: "hidden_states_scale", ref rule }) if rule.contains("DeepSeek")),
            "{res:?}"
        );
        // An fp4 layer built for nvfp4 activations fed bf16 ones.
        let (w1, w2) = (
            zeros::<E2m1x2>(s, E * m1 * H / 2),
            zeros::<E2m1x2>(s, E * H * I / 2),
        );
        let (w1s, w2s) = (
            zeros::<E4m3>(s, E * m1 * H / 16),
            zeros::<E4m3>(s, E * H * I / 16),
        );
        let scales = zeros::<f32>(s, E);
        let bf = zeros::<bf16>(s, T * H);
        let (mut ids, mut wts) = (zeros::<i32>(s, T * K), zeros::<bf16>(s, T * K));
        let weights = Fp4BlockScaleWeights {
            activations: Fp4ActivationKind::Nvfp4,
            weights: Fp4Weights::Nvfp4 {
                gemm1: w1.as_view(),
                gemm1_scale: w1s.as_view(),
                gemm2: w2.as_view(),
                gemm2_scale: w2s.as_view(),
            },
            gemm1_bias: None,
            gemm2_bias: None,
            output1_scales_scalar: Some(scales.as_view()),
            output1_scales_gate_scalar: Some(scales.as_view()),
            output2_scales_scalar: Some(scales.as_view()),
            swiglu: SwigluParams::default(),
        };
        let inputs = Fp4BlockScaleInputs {
            hidden_states: Fp4Activations::Bf16(bf.as_view()),
            per_token_scales: None,
            topk_ids: ids.as_view_mut(),
            topk_weights: wts.as_view_mut(),
        };
        let opts = MoeOptions::new(WeightLayout::MajorK);
        let res = c.forward::<Fp4BlockScale>(s, opts, weights, inputs, T);
        assert!(
            matches!(res, Err(Error::InvalidArgument { arg: "hidden_states", ref rule }) if rule.contains("built for Nvfp4")),
            "{res:?}"
        );
        assert!(c.untouched(s));
    }

    #[test]
    fn a_layer_and_its_calls_keep_to_one_cuda_context() {
        let Some(g) = gpu("fused::calls::a_layer_and_its_calls_keep_to_one_cuda_context") else {
            return;
        };
        let s = &g.stream;
        let other = flashinfer_rs::cudarc::driver::CudaContext::new_non_primary(0, 0).unwrap();
        let other_stream = other.default_stream();
        let m1 = 2 * I;
        let w1 = zeros::<bf16>(s, E * m1 * H);
        let foreign_w2 = zeros::<bf16>(&other_stream, E * H * I);
        let split = Bf16Weights {
            gemm1_weights: w1.as_view(),
            gemm2_weights: foreign_w2.as_view(),
            swiglu: SwigluParams::default(),
        };
        let opts = MoeOptions::new(WeightLayout::BlockMajorK);
        let res = FusedMoe::<Bf16>::new(config(opts), split).map(|_| ());
        assert_eq!(
            res,
            Err(Error::ContextMismatch {
                arg: "gemm2_weights"
            })
        );
        // A layer whose weights all live in the other context, called on this one's stream.
        let foreign_w1 = zeros::<bf16>(&other_stream, E * m1 * H);
        let foreign = Bf16Weights {
            gemm1_weights: foreign_w1.as_view(),
            gemm2_weights: foreign_w2.as_view(),
            swiglu: SwigluParams::default(),
        };
        let hs = zeros::<bf16>(s, T * H);
        let inputs = Bf16Inputs {
            hidden_states: hs.as_view(),
            gemm1_lora_delta: None,
        };
        let mut c = Common::new(s);
        let res = c.forward::<Bf16>(s, opts, foreign, inputs, T);
        g.ctx.bind_to_thread().unwrap();
        // Off the kernels' build, building the layer already answers KernelsNotBuilt.
        if flashinfer_rs::build_info().kernels_built {
            assert_eq!(res, Err(Error::ContextMismatch { arg: "weights" }));
        }
        assert!(c.untouched(s));
    }
}
