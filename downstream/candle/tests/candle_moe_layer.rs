//! A whole MoE layer from candle tensors, as a candle model runs it: the gate's matmul in
//! candle, then routing and the Hopper layer through `flashinfer_rs::candle` (weights
//! prepared on the GPU from checkpoint-shaped tensors, routed experts captured), the output
//! a candle tensor; against candle's own f32 computation of the same layer (softmax, top-k by
//! `arg_sort`, renormalised, SwiGLU experts), which is Qwen3-MoE's `Qwen3MoeSparseMoeBlock`.
//!
//! The GPU test skips (saying so) without a GPU or without the `sm90` kernels;
//! `FLASHINFER_RS_REQUIRE_GPU=1` makes that a failure. The argument checks run everywhere.
use candle_core::{DType, Device, Tensor};
use flashinfer_rs::candle::{cuda_stream, cutlass_weights, Fc1, RoutedTensors, TensorRouting};
use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepLayout};
use flashinfer_rs::cutlass::{CutlassMoe, CutlassMoeConfig};
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod, TopKRouter};
use flashinfer_rs::Error;

mod common;

const EXPERTS: usize = 32;
const TOP_K: usize = 4;
const HIDDEN: usize = 256;
const INTER: usize = 128;

/// Qwen3-MoE's sparse block in candle f32: probabilities, top-k ids (best first) with their
/// renormalised weights, and the layer's output.
struct Reference {
    ids: Vec<Vec<u32>>,
    /// Tokens whose k-th and (k+1)-th probabilities are too close to order (excused).
    near_ties: Vec<bool>,
    out: Tensor,
}

fn reference(
    x: &Tensor,
    logits: &Tensor,
    gate: &Tensor,
    up: &Tensor,
    down: &Tensor,
) -> candle_core::Result<Reference> {
    let shifted = logits.broadcast_sub(&logits.max_keepdim(1)?)?.exp()?;
    let probs = shifted.broadcast_div(&shifted.sum_keepdim(1)?)?; // [T, E] f32
    let order = probs.arg_sort_last_dim(false)?; // [T, E] u32, best first
    let top = order.narrow(1, 0, TOP_K)?.contiguous()?;
    let chosen = probs.gather(&top, 1)?;
    let weights = chosen.broadcast_div(&chosen.sum_keepdim(1)?)?;
    let dense = probs.zeros_like()?.scatter_add(&top, &weights, 1)?; // [T, E]
    let probs_host: Vec<Vec<f32>> = probs.to_vec2()?;
    let order_host: Vec<Vec<u32>> = order.to_vec2()?;
    let near_ties = order_host
        .iter()
        .zip(&probs_host)
        .map(|(o, p)| p[o[TOP_K - 1] as usize] - p[o[TOP_K] as usize] < 1e-6)
        .collect();
    // Every expert on every token (dense), then the routing weights pick: [E, T, H].
    let (t, e) = (x.dim(0)?, EXPERTS);
    let xs = x
        .to_dtype(DType::F32)?
        .unsqueeze(0)?
        .broadcast_as((e, t, HIDDEN))?;
    let f32 = |w: &Tensor| w.to_dtype(DType::F32);
    let g = xs.matmul(&f32(gate)?.transpose(1, 2)?)?; // [E, T, I]
    let u = xs.matmul(&f32(up)?.transpose(1, 2)?)?;
    let silu = (&g / (g.neg()?.exp()? + 1.0)?)?;
    let act = (silu * u)?;
    let y = act.matmul(&f32(down)?.transpose(1, 2)?)?; // [E, T, H]
    let w = dense.t()?.unsqueeze(2)?; // [E, T, 1]
    let out = y.broadcast_mul(&w)?.sum(0)?; // [T, H]
    Ok(Reference {
        ids: top.to_vec2()?,
        near_ties,
        out,
    })
}

fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    let d = (got.to_dtype(DType::F32).unwrap() - want).unwrap();
    let num = d.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    let den = want.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
    (num / den).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn a_whole_moe_layer_from_candle_tensors_equals_candle_f32_with_capture() {
    let Some(device) = common::hopper("candle_moe_layer") else {
        return;
    };
    let stream = cuda_stream(&device).unwrap();
    let tokens = 37;
    // A checkpoint's per-expert tensors, stacked as a loader would (bf16, as checkpoints are).
    let rand = |dims: (usize, usize, usize), std: f64| {
        Tensor::randn(0f32, std as f32, dims, &device)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap()
    };
    let gate = rand((EXPERTS, INTER, HIDDEN), 0.06);
    let up = rand((EXPERTS, INTER, HIDDEN), 0.06);
    let down = rand((EXPERTS, HIDDEN, INTER), 0.09);
    let gate_weight = Tensor::randn(0f32, 0.1, (EXPERTS, HIDDEN), &device).unwrap();
    let x = Tensor::randn(0f32, 1.0, (tokens, HIDDEN), &device)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();

    let config = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, EXPERTS as u32, TOP_K as u32),
        hidden_size: HIDDEN,
        intermediate_size: INTER,
        max_tokens: 64,
    };
    let weights = cutlass_weights(
        Fc1::GateUp {
            gate: &gate,
            up: &up,
        },
        &down,
    )
    .unwrap();
    // The fused gate-first layout (vLLM, SGLang, transformers' fused experts) prepares the
    // same bytes.
    let w13 = Tensor::cat(&[&gate, &up], 1).unwrap();
    let same = cutlass_weights(Fc1::GateFirst(&w13), &down).unwrap();
    assert_eq!(
        stream.clone_dtoh(&weights.fc1).unwrap(),
        stream.clone_dtoh(&same.fc1).unwrap()
    );
    assert_eq!(
        stream.clone_dtoh(&weights.fc2).unwrap(),
        stream.clone_dtoh(&same.fc2).unwrap()
    );
    let layer = CutlassMoe::new(config, weights).unwrap();
    let mut workspace = layer.workspace(&stream).unwrap();
    let mut store =
        CaptureStore::new(&stream, CaptureConfig::new(1, 64, TOP_K).with_weights(true)).unwrap();

    // The model's forward: the gate in candle, the rest in one call.
    let logits = x
        .to_dtype(DType::F32)
        .unwrap()
        .matmul(&gate_weight.t().unwrap())
        .unwrap();
    store
        .begin_step(&stream, StepLayout::single(tokens))
        .unwrap();
    let y = layer
        .forward_tensor(
            &mut workspace,
            &x,
            TensorRouting::Logits {
                logits: &logits,
                bias: None,
            },
            Some(store.layer_views(0).unwrap()),
        )
        .unwrap();
    store.end_step(&stream).unwrap();
    assert_eq!(y.dims(), &[tokens, HIDDEN]);
    assert_eq!(y.dtype(), DType::BF16);

    let want = reference(&x, &logits, &gate, &up, &down).unwrap();
    let err = rel_err(&y, &want.out);
    assert!(
        err < 2e-2,
        "relative L2 error {err} against candle's f32 layer"
    );

    // The captured rows are the reference's experts, in order.
    let step = store.collect().unwrap().expect("the step's rows");
    let mut excused = 0;
    for (t, ids) in want.ids.iter().enumerate() {
        let got: Vec<u32> = step.rows.ids[t * TOP_K..(t + 1) * TOP_K]
            .iter()
            .map(|&i| i as u32)
            .collect();
        if want.near_ties[t] {
            excused += 1;
            continue;
        }
        assert_eq!(
            &got, ids,
            "token {t}: captured experts against candle's top-k"
        );
    }
    let captured_weights = step.rows.weights.as_ref().expect("weights captured");
    assert_eq!(captured_weights.len(), tokens * TOP_K);

    // The router alone gives tensors a candle op consumes; the layer takes them back.
    let router = TopKRouter::new(config.routing).unwrap();
    let routed = router.route_tensor(&logits, None, None).unwrap();
    assert_eq!(routed.ids.dtype(), DType::I32);
    let ids: Vec<Vec<i32>> = routed.ids.to_vec2().unwrap();
    for (t, (got, ids)) in ids.iter().zip(&want.ids).enumerate() {
        if !want.near_ties[t] {
            assert_eq!(
                got.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                *ids,
                "token {t}"
            );
        }
    }
    let weights_sum = routed.weights.sum(1).unwrap().to_vec1::<f32>().unwrap();
    assert!(
        weights_sum.iter().all(|s| (s - 1.0).abs() < 1e-5),
        "renormalised: {weights_sum:?}"
    );
    let again = layer
        .forward_tensor(&mut workspace, &x, TensorRouting::Routed(&routed), None)
        .unwrap();
    let diff = (y.to_dtype(DType::F32).unwrap() - again.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(
        diff, 0.0,
        "the same routing through the tensor ids gives the same bits"
    );
    eprintln!(
        "candle MoE layer: {tokens} tokens, {EXPERTS} experts top-{TOP_K}: relative L2 error \
         {err:.2e} against candle f32, captured ids = candle's top-k ({excused} near ties excused)"
    );
}

#[test]
fn tensors_that_do_not_fit_are_refused_before_any_launch() {
    let router = TopKRouter::new(RoutingConfig::new(RoutingMethod::Renormalize, 32, 4)).unwrap();
    // A CPU tensor: refused by name (no GPU needed to see this).
    let cpu = Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap();
    let e = router.route_tensor(&cpu, None, None).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { arg: "logits", .. }),
        "{e}"
    );
    assert!(cuda_stream(&Device::Cpu).is_err());
    let Some(device) = common::hopper("candle_moe_layer") else {
        return;
    };
    let on = |dims: (usize, usize), dtype| Tensor::zeros(dims, dtype, &device).unwrap();
    for (what, logits) in [
        ("wrong expert count", on((3, 31), DType::F32)),
        ("wrong dtype", on((3, 32), DType::F16)),
        ("not contiguous", on((32, 3), DType::F32).t().unwrap()),
        (
            "rank 3",
            Tensor::zeros((1, 3, 32), DType::F32, &device).unwrap(),
        ),
    ] {
        let e = router.route_tensor(&logits, None, None).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { arg: "logits", .. }),
            "{what}: {e}"
        );
    }
    // Weights of the wrong shape or dtype never reach the layer.
    let down = on((4, 64), DType::BF16);
    assert!(cutlass_weights(Fc1::UpFirst(&down), &down).is_err());
    let ints = Tensor::zeros((2, 128, 64), DType::U32, &device).unwrap();
    let down = Tensor::zeros((2, 64, 64), DType::BF16, &device).unwrap();
    let e = cutlass_weights(Fc1::UpFirst(&ints), &down).unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { arg: "fc1", .. }),
        "{e}"
    );
    // Routing handed over as tensors is checked too: ids must be i32 [tokens, top_k].
    let layer_config = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, 32, 4),
        hidden_size: 64,
        intermediate_size: 64,
        max_tokens: 8,
    };
    let gate = Tensor::zeros((32, 64, 64), DType::BF16, &device).unwrap();
    let down = Tensor::zeros((32, 64, 64), DType::BF16, &device).unwrap();
    let layer = CutlassMoe::new(
        layer_config,
        cutlass_weights(
            Fc1::GateUp {
                gate: &gate,
                up: &gate,
            },
            &down,
        )
        .unwrap(),
    )
    .unwrap();
    let stream = cuda_stream(&device).unwrap();
    let mut workspace = layer.workspace(&stream).unwrap();
    let x = on((3, 64), DType::BF16);
    let bad = RoutedTensors {
        ids: on((3, 4), DType::U32),
        weights: on((3, 4), DType::F32),
    };
    let e = layer
        .forward_tensor(&mut workspace, &x, TensorRouting::Routed(&bad), None)
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { arg: "ids", .. }),
        "{e}"
    );
    let e = layer
        .forward_tensor(
            &mut workspace,
            &on((3, 64), DType::F32),
            TensorRouting::Routed(&bad),
            None,
        )
        .unwrap_err();
    assert!(
        matches!(e, Error::InvalidArgument { arg: "hidden", .. }),
        "{e}"
    );
    let too_many = on((9, 64), DType::BF16);
    let logits = on((9, 32), DType::F32);
    let e = layer
        .forward_tensor(
            &mut workspace,
            &too_many,
            TensorRouting::Logits {
                logits: &logits,
                bias: None,
            },
            None,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::InvalidArgument {
                arg: "num_tokens",
                ..
            }
        ),
        "{e}"
    );
}

/// A fine-grained fp8 checkpoint's tensors on the GPU (e4m3 codes and f32 `weight_scale_inv`
/// per 128x128 block, per projection) become the block-scale layer's weights through
/// `cutlass_block_weights`: the bytes the host arrangement (`prepare::fc1_from_gate_up` of the
/// codes and of the scales) makes, from the gate/up halves and from a gate-first `w13` alike,
/// and a layer on them answers bit for bit as a layer on the host-arranged copy. Codes given
/// as bf16 weights, bf16 given as codes, scales of the wrong shape and sizes off the blocks
/// are refused by name.
#[test]
fn fp8_checkpoint_tensors_become_the_block_scale_layer() {
    use flashinfer_rs::candle::cutlass_block_weights;
    use flashinfer_rs::cutlass::prepare::{fc1_from_gate_up, fp8_blocks};
    use flashinfer_rs::cutlass::{CutlassBlockScales, CutlassWeights};
    use flashinfer_rs::fused::E4m3;
    let Some(device) = common::hopper("candle_moe_layer") else {
        return;
    };
    let stream = cuda_stream(&device).unwrap();
    let (e, h, i) = (EXPERTS, HIDDEN, INTER);
    // Host codes and scales of random weights, and the same as candle tensors on the GPU.
    let quantised = |rows: usize, cols: usize, seed: u64| {
        let mut rng = flashinfer_rs::routing::oracle::SplitMix64(seed);
        let v: Vec<f32> = (0..e * rows * cols)
            .map(|_| (rng.unit() as f32 - 0.5) * 0.2)
            .collect();
        let (codes, scales) = fp8_blocks(&v, e, rows, cols).unwrap();
        let values: Vec<f32> = codes.iter().map(|q| q.to_f32()).collect();
        let t = Tensor::from_vec(values, (e, rows, cols), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap()
            .to_device(&device)
            .unwrap();
        let s = Tensor::from_vec(scales.clone(), (e, rows / 128, cols / 128), &device).unwrap();
        (codes, scales, t, s)
    };
    let (gate_q, gate_s, gate, gate_st) = quantised(i, h, 1);
    let (up_q, up_s, up, up_st) = quantised(i, h, 2);
    let (down_q, down_s, down, down_st) = quantised(h, i, 3);
    let (weights, scales) = cutlass_block_weights(
        Fc1::GateUp {
            gate: &gate,
            up: &up,
        },
        Fc1::GateUp {
            gate: &gate_st,
            up: &up_st,
        },
        &down,
        &down_st,
    )
    .unwrap();
    let want_fc1: Vec<E4m3> = fc1_from_gate_up(&gate_q, &up_q, e, i, h).unwrap();
    let want_s1 = fc1_from_gate_up(&gate_s, &up_s, e, i / 128, h / 128).unwrap();
    assert_eq!(stream.clone_dtoh(&weights.fc1).unwrap(), want_fc1);
    assert_eq!(stream.clone_dtoh(&weights.fc2).unwrap(), down_q);
    assert_eq!(stream.clone_dtoh(&scales.fc1).unwrap(), want_s1);
    assert_eq!(stream.clone_dtoh(&scales.fc2).unwrap(), down_s);
    let w13 = Tensor::cat(&[&gate, &up], 1).unwrap();
    let w13_s = Tensor::cat(&[&gate_st, &up_st], 1).unwrap();
    let (same, same_s) = cutlass_block_weights(
        Fc1::GateFirst(&w13),
        Fc1::GateFirst(&w13_s),
        &down,
        &down_st,
    )
    .unwrap();
    assert_eq!(stream.clone_dtoh(&same.fc1).unwrap(), want_fc1);
    assert_eq!(stream.clone_dtoh(&same_s.fc1).unwrap(), want_s1);

    // A layer on them and a layer on the host-arranged copy: the same bits.
    let config = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, e as u32, TOP_K as u32),
        hidden_size: h,
        intermediate_size: i,
        max_tokens: 64,
    };
    let from_host = (
        CutlassWeights {
            fc1: stream.clone_htod(&want_fc1).unwrap(),
            fc2: stream.clone_htod(&down_q).unwrap(),
        },
        CutlassBlockScales {
            fc1: stream.clone_htod(&want_s1).unwrap(),
            fc2: stream.clone_htod(&down_s).unwrap(),
        },
    );
    let ours = CutlassMoe::new_fp8_blocks(config, weights, scales).unwrap();
    let host = CutlassMoe::new_fp8_blocks(config, from_host.0, from_host.1).unwrap();
    let x = Tensor::randn(0f32, 1.0, (19, h), &device)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let logits = Tensor::randn(0f32, 1.0, (19, e), &device).unwrap();
    let run = |layer: &CutlassMoe<_>| {
        let mut ws = layer.workspace(&stream).unwrap();
        let routing = TensorRouting::Logits {
            logits: &logits,
            bias: None,
        };
        let y = layer.forward_tensor(&mut ws, &x, routing, None).unwrap();
        y.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
    };
    let (a, b) = (run(&ours), run(&host));
    assert!(a.iter().flatten().all(|v| v.is_finite()));
    assert_eq!(a, b);

    // Refusals, by name.
    let arg_of = |e: Error| match e {
        Error::InvalidArgument { arg, .. } => arg,
        other => panic!("not an argument error: {other}"),
    };
    let halves = |gate, up| Fc1::GateUp { gate, up };
    let e = cutlass_weights(halves(&gate, &up), &down).unwrap_err();
    assert_eq!(arg_of(e), "weights", "fp8 codes taken for bf16 weights");
    let bf = gate.to_dtype(DType::BF16).unwrap();
    let narrow = down.narrow(1, 0, 192).unwrap();
    let e = cutlass_block_weights(
        halves(&gate, &up),
        halves(&down_st, &up_st),
        &down,
        &down_st,
    )
    .unwrap_err();
    assert_eq!(arg_of(e), "gate_scales", "fc1's scales named as scales");
    for (codes, down, down_scales, arg) in [
        (halves(&bf, &bf), &down, &down_st, "codes"),
        (halves(&gate, &up), &down, &gate_st, "down_scales"),
        (halves(&gate, &up), &narrow, &down_st, "down"),
    ] {
        let scales = halves(&gate_st, &up_st);
        let e = cutlass_block_weights(codes, scales, down, down_scales).unwrap_err();
        assert_eq!(arg_of(e), arg);
    }
}
