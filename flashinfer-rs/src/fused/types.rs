//! Enums of the fused MoE, with upstream's values.

/// Element types of activations and weights (upstream's `batchedGemm::trtllm::gen::Dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeDtype {
    /// bfloat16.
    Bf16,
    /// fp8 e4m3 (per-tensor or DeepSeek block scales).
    E4m3,
    /// MX fp8 e4m3 with ue8m0 block scales.
    MxE4m3,
    /// NV fp4 e2m1 with fp8 block scales (nvfp4).
    E2m1,
    /// MX fp4 e2m1 with ue8m0 block scales (mxfp4).
    MxE2m1,
}

/// upstream's TLLM_ENCODE_DTYPE.
const fn encode(block: u32, signed: u32, int: u32, bits: u32, uid: u32) -> i64 {
    ((block << 24) | (signed << 20) | (int << 16) | (bits << 8) | uid) as i64
}

impl MoeDtype {
    /// upstream's `Dtype` value.
    pub const fn upstream_value(self) -> i64 {
        match self {
            MoeDtype::Bf16 => encode(0, 1, 0, 16, 0),
            MoeDtype::E4m3 => encode(0, 1, 0, 8, 5),
            MoeDtype::MxE4m3 => encode(1, 1, 0, 8, 13),
            MoeDtype::E2m1 => encode(1, 1, 0, 4, 2),
            MoeDtype::MxE2m1 => encode(1, 1, 0, 4, 12),
        }
    }
}

/// How fp8 operands are scaled (upstream's `Fp8QuantizationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fp8Quantization {
    /// Not an fp8 problem.
    None = 0,
    /// DeepSeek-style 128x128 block scales.
    DeepSeekFp8 = 1,
    /// MX fp8 (32-element ue8m0 block scales).
    MxFp8 = 2,
    /// One scale per tensor.
    PerTensorFp8 = 3,
}

/// The expert MLP's activation (upstream's `ActivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// GELU.
    Gelu = 0,
    /// ReLU.
    Relu = 1,
    /// SiLU.
    Silu = 2,
    /// SwiGLU (gated; the common choice).
    Swiglu = 3,
    /// GeGLU (gated).
    Geglu = 4,
    /// SwiGLU with bias (gpt-oss).
    SwigluBias = 5,
    /// Squared ReLU.
    Relu2 = 6,
    /// SwiGLU with a step clamp.
    SwigluStep = 7,
    /// No activation.
    Identity = 8,
}

impl Activation {
    /// Gated activations take two projections from GEMM1 (`2 * intermediate_size` rows):
    /// upstream's `isGatedActivation`.
    pub fn is_gated(self) -> bool {
        matches!(
            self,
            Activation::Swiglu
                | Activation::Geglu
                | Activation::SwigluBias
                | Activation::SwigluStep
        )
    }
}

/// Layout of the weight matrices (upstream's `MatrixLayout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightLayout {
    /// `[Mn, K]`, K contiguous.
    MajorK = 0,
    /// `[K, Mn]`.
    MajorMn = 1,
    /// `[K / blockK, Mn, blockK]` with 128-byte K blocks.
    BlockMajorK = 2,
}
