use candle_core::{DType, Device, Tensor};
use flashinfer_rs::candle::{cutlass_weights, Fc1, TensorRouting};
use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepLayout};
use flashinfer_rs::cutlass::{CutlassMoe, CutlassMoeConfig};
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = Device::new_cuda(0)?;
    let stream = flashinfer_rs::candle::cuda_stream(&device)?;
    let (experts, hidden, inter, tokens) = (128, 2048, 768, 16);
    // A checkpoint's experts, stacked ([experts, rows, cols]), as a loader has them.
    let gate = Tensor::zeros((experts, inter, hidden), DType::BF16, &device)?;
    let up = Tensor::zeros((experts, inter, hidden), DType::BF16, &device)?;
    let down = Tensor::zeros((experts, hidden, inter), DType::BF16, &device)?;
    let gate_weight = Tensor::zeros((experts, hidden), DType::F32, &device)?;
    let config = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, experts as u32, 8),
        hidden_size: hidden,
        intermediate_size: inter,
        max_tokens: 4096,
    };
    let weights = cutlass_weights(Fc1::GateUp { gate: &gate, up: &up }, &down)?;
    let layer = CutlassMoe::new(config, weights)?;
    let mut workspace = layer.workspace(&stream)?;
    let mut store = CaptureStore::new(&stream, CaptureConfig::new(1, 4096, 8))?;

    let x = Tensor::zeros((tokens, hidden), DType::BF16, &device)?;
    let logits = x.to_dtype(DType::F32)?.matmul(&gate_weight.t()?)?; // the gate, in candle
    store.begin_step(&stream, StepLayout::single(tokens))?;
    let y = layer.forward_tensor(
        &mut workspace,
        &x,
        TensorRouting::Logits { logits: &logits, bias: None },
        Some(store.layer_views(0)?),
    )?; // [tokens, hidden] bf16, a candle tensor
    store.end_step(&stream)?;
    assert_eq!(y.dims(), &[tokens, hidden]);
    Ok(())
}
