//! Routing logits that live in a candle CUDA `Tensor`, on candle's own stream, with the
//! routed experts captured into a `CaptureStore`: candle's cudarc slice is handed to
//! flashinfer-rs as it is (no copy), and both crates share one cudarc.
//!
//! Skips (saying so) without a GPU or without kernels; `FLASHINFER_RS_REQUIRE_GPU=1` makes
//! that a failure.
use candle_core::{DType, Device, Storage, Tensor};
use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepLayout};
use flashinfer_rs::cudarc::driver::CudaView;
use flashinfer_rs::routing::oracle;
use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};

fn required() -> bool {
    std::env::var("FLASHINFER_RS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

/// The candle device, or `None` after saying why.
fn cuda_device() -> Option<Device> {
    let why = if !flashinfer_rs::build_info().kernels_built {
        "built without kernels (feature sm90)"
    } else if flashinfer_rs::cuda_device_count() == 0 {
        "no CUDA device"
    } else {
        return Some(Device::new_cuda(0).expect("candle CUDA device 0"));
    };
    assert!(!required(), "FLASHINFER_RS_REQUIRE_GPU=1 but {why}");
    eprintln!("skipped: candle_tensor: {why}");
    None
}

/// The f32 elements of a contiguous candle CUDA tensor, as the cudarc view flashinfer-rs
/// takes: candle's own device memory, no copy. Calls `f` with it while the storage is borrowed.
fn with_cuda_view<R>(t: &Tensor, f: impl FnOnce(CudaView<'_, f32>) -> R) -> R {
    assert_eq!(t.dtype(), DType::F32);
    let (storage, layout) = t.storage_and_layout();
    assert!(layout.is_contiguous(), "routing takes row-major logits");
    let Storage::Cuda(cuda) = &*storage else {
        panic!("not a CUDA tensor")
    };
    let slice = cuda.as_cuda_slice::<f32>().expect("f32 storage");
    let start = layout.start_offset();
    f(slice.slice(start..start + t.elem_count()))
}

#[test]
fn candle_tensor_logits_route_and_capture_like_the_oracle() {
    let Some(device) = cuda_device() else {
        return;
    };
    let Device::Cuda(cuda) = &device else {
        unreachable!()
    };
    // candle's stream: the routing is ordered after whatever candle enqueued there.
    let stream = cuda.cuda_stream();
    for (name, method, experts, top_k) in [
        ("Qwen3-30B-A3B", RoutingMethod::Renormalize, 128u32, 8u32),
        (
            "DeepSeek-V3",
            RoutingMethod::DeepSeekV3 {
                n_group: 8,
                topk_group: 4,
                routed_scaling_factor: 2.5,
            },
            256,
            8,
        ),
    ] {
        let cfg = RoutingConfig::new(method, experts, top_k);
        let (layers, tokens) = (3usize, 37usize);
        let router = Router::new(cfg).unwrap();
        let mut buffers = RoutingBuffers::new(&stream, &cfg, tokens).unwrap();
        let mut store =
            CaptureStore::new(&stream, CaptureConfig::new(layers, tokens, top_k as usize)).unwrap();
        let mut want = Vec::new();
        let mut tensors = Vec::new();
        let mut biases = Vec::new();
        for layer in 0..layers {
            let (logits, bias) =
                oracle::separated_logits(&cfg, tokens, false, 1000 * layer as u64 + 7).unwrap();
            want.push(oracle::route(&cfg, &logits, bias.as_deref(), tokens).unwrap());
            tensors.push(Tensor::from_vec(logits, (tokens, experts as usize), &device).unwrap());
            biases.push(bias.map(|b| Tensor::from_vec(b, experts as usize, &device).unwrap()));
        }
        store
            .begin_step(&stream, StepLayout::single(tokens))
            .unwrap();
        for layer in 0..layers {
            let mut view = store.replay_view(layer).unwrap();
            with_cuda_view(&tensors[layer], |logits| {
                let mut run = |logits: CudaView<'_, f32>, bias: Option<CudaView<'_, f32>>| {
                    let input = RouteInput {
                        logits: logits.into(),
                        bias: bias.map(Into::into),
                        num_tokens: tokens,
                    };
                    router.route(&stream, &input, &mut buffers, Some(&mut view))
                };
                match &biases[layer] {
                    Some(b) => with_cuda_view(b, |b| run(logits, Some(b))),
                    None => run(logits, None),
                }
                .unwrap();
            });
        }
        store.end_step(&stream).unwrap();
        let step = store.collect().unwrap().expect("the step's rows");
        let rows = &step.rows;
        let k = top_k as usize;
        for t in 0..tokens {
            for (layer, w) in want.iter().enumerate() {
                let got = &rows.ids[(t * layers + layer) * k..][..k];
                assert_eq!(
                    got,
                    &w.ids[t * k..(t + 1) * k],
                    "{name}: token {t} layer {layer} captured from a candle tensor"
                );
            }
        }
        eprintln!(
            "{name}: {tokens} tokens x {layers} layers captured from candle tensors = oracle"
        );
    }
}
