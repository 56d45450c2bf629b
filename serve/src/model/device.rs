//! Where the model runs: the CPU (f32, row by row: batch-invariant) or one CUDA GPU (f32 or
//! bf16 dense parts, batched), and the typed errors of asking for what a build or a machine
//! does not have.

use candle_core::{DType, Device};

use super::moe::MoeWeights;

/// `--device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// The CPU: f32, every linear row by row (a token's numbers never depend on its batch).
    Cpu,
    /// CUDA device 0 (builds with `--features cuda`): the whole model there, batched.
    Cuda,
}

/// `--dtype`: the dense parts' dtype (embeddings, attention, norms, dense MLPs, lm_head). The
/// MoE layers have their own (the CPU oracle f32, the Hopper layer bf16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DTypeArg {
    /// f32 (the CPU's only dtype).
    F32,
    /// bf16 (CUDA's default).
    Bf16,
}

impl DTypeArg {
    /// As candle names it.
    pub fn dtype(self) -> DType {
        match self {
            DTypeArg::F32 => DType::F32,
            DTypeArg::Bf16 => DType::BF16,
        }
    }
}

/// What the model is asked to run on and cannot: always a typed error, never a silent
/// fallback to the CPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// `--device cuda` in a binary built without the `cuda` feature.
    #[error(
        "--device cuda needs a GPU build: rebuild with `--features cuda` (this binary is \
         CPU-only; use --device cpu)"
    )]
    CudaNotBuilt,
    /// CUDA device 0 could not be opened (no GPU, no driver, ...).
    #[error("--device cuda: CUDA device 0 could not be opened: {0}")]
    CudaUnavailable(String),
    /// The CPU computes in f32 only.
    #[error("--dtype {0:?} is not supported on the CPU (f32 only)")]
    CpuDtype(DType),
    /// Only f32 and bf16 dense parts are supported.
    #[error("--dtype {0:?} is not supported (f32 or bf16)")]
    Dtype(DType),
    /// The model is on the GPU and the MoE backend would be the CPU oracle.
    #[error(
        "--device cuda runs the MoE layers on the GPU: --backend cpu is refused there (use \
         --backend hopper or auto, or --device cpu)"
    )]
    CpuBackendOnGpu,
}

/// The model's device and dense dtype, and how it computes.
#[derive(Debug, Clone)]
pub struct Placement {
    /// Where every dense weight, activation and KV cache lives.
    pub device: Device,
    /// The dense parts' dtype.
    pub dtype: DType,
    /// Batched: one matmul per linear over the step's `[tokens, hidden]`, candle's RMSNorm
    /// and RoPE kernels, KV caches as device tensors. Not batched (the CPU path): every
    /// linear row by row, attention on host vectors, a token's numbers independent of its
    /// batch. CUDA is always batched; the CPU is batched only when asked (tests of the GPU
    /// path's arithmetic on a GPU-less machine).
    pub batched: bool,
    /// How a fine-grained fp8 checkpoint's experts run (`--moe-weights`; `Auto` by default).
    pub moe_weights: MoeWeights,
}

impl Placement {
    /// The CPU path: f32, row by row.
    pub fn cpu() -> Self {
        Placement {
            device: Device::Cpu,
            dtype: DType::F32,
            batched: false,
            moe_weights: MoeWeights::Auto,
        }
    }

    /// The placement `--device` / `--dtype` ask for (`dtype` `None`: f32 on the CPU, bf16 on
    /// CUDA). Opens CUDA device 0 once: the model and the MoE backend share this `Device`
    /// (one candle device, one stream).
    pub fn open(kind: DeviceKind, dtype: Option<DTypeArg>) -> Result<Self, DeviceError> {
        match kind {
            DeviceKind::Cpu => match dtype.map(DTypeArg::dtype) {
                None | Some(DType::F32) => Ok(Placement::cpu()),
                Some(d) => Err(DeviceError::CpuDtype(d)),
            },
            DeviceKind::Cuda => {
                let device = cuda_device()?;
                let dtype = dtype.map_or(DType::BF16, DTypeArg::dtype);
                Placement::on(device, dtype)
            }
        }
    }

    /// A batched placement on `device` (any device: the CPU for tests) in `dtype`.
    pub fn on(device: Device, dtype: DType) -> Result<Self, DeviceError> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            return Err(DeviceError::Dtype(dtype));
        }
        Ok(Placement {
            device,
            dtype,
            batched: true,
            moe_weights: MoeWeights::Auto,
        })
    }

    /// Whether the model lives on a CUDA device.
    pub fn is_cuda(&self) -> bool {
        self.device.is_cuda()
    }
}

/// CUDA device 0, or why not.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Result<Device, DeviceError> {
    // cudarc panics where no driver loads: ask flashinfer-rs first, which never panics.
    if flashinfer_rs::cuda_device_count() == 0 {
        return Err(DeviceError::CudaUnavailable(
            "no CUDA driver or no visible CUDA device".into(),
        ));
    }
    Device::new_cuda(0).map_err(|e| DeviceError::CudaUnavailable(e.to_string()))
}

/// CUDA device 0, or why not.
#[cfg(not(feature = "cuda"))]
pub fn cuda_device() -> Result<Device, DeviceError> {
    Err(DeviceError::CudaNotBuilt)
}

/// Bytes free on the model's GPU now (`None` on the CPU).
#[cfg(feature = "cuda")]
pub fn free_memory(device: &Device) -> anyhow::Result<Option<usize>> {
    if !device.is_cuda() {
        return Ok(None);
    }
    let stream = flashinfer_rs::candle::cuda_stream(device)?;
    let (free, _total) = stream.context().mem_get_info()?;
    Ok(Some(free))
}

/// Bytes free on the model's GPU now (`None` on the CPU, the only device of this build).
#[cfg(not(feature = "cuda"))]
pub fn free_memory(_device: &Device) -> anyhow::Result<Option<usize>> {
    Ok(None)
}

/// Waits for the device's queued work (a no-op on the CPU): the profiling pass's fence.
pub fn synchronize(device: &Device) -> anyhow::Result<()> {
    device.synchronize()?;
    Ok(())
}
