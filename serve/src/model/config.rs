//! `config.json` of a Hugging Face `Qwen3MoeForCausalLM` checkpoint, the fields the model
//! reads, with transformers' defaults where a field may be missing.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

fn default_true() -> bool {
    true
}
fn default_one() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_theta() -> f64 {
    1_000_000.0
}
fn default_max_pos() -> usize {
    32_768
}

/// The model's shape and numerics, as `Qwen3MoeConfig` in transformers names them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Qwen3MoeConfig {
    /// Vocabulary (rows of the embedding and of `lm_head`).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Intermediate size of the dense MLP layers.
    #[serde(default)]
    pub intermediate_size: usize,
    /// Intermediate size of one expert.
    pub moe_intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Per-head size; `hidden_size / num_attention_heads` when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts chosen per token.
    pub num_experts_per_tok: usize,
    /// Every `decoder_sparse_step`-th layer is sparse (layer `l` with `(l + 1) % step == 0`).
    #[serde(default = "default_one")]
    pub decoder_sparse_step: usize,
    /// Layers that keep a dense MLP.
    #[serde(default)]
    pub mlp_only_layers: Vec<usize>,
    /// Renormalise the chosen experts' probabilities to sum to one.
    #[serde(default = "default_true")]
    pub norm_topk_prob: bool,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// Longest sequence the model was trained for.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v projections (false for Qwen3).
    #[serde(default)]
    pub attention_bias: bool,
    /// The activation of the MLPs (only `silu` is supported).
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// `rope_scaling` (only absent or `null` is supported).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// End-of-sequence id(s), as some configs carry them.
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
    /// The checkpoint's dtype (informational; the CPU backend computes in f32).
    #[serde(default)]
    pub torch_dtype: Option<String>,
    /// How the checkpoint's weights are quantised (`None`: not at all); see
    /// [`Qwen3MoeConfig::quantization`].
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,
}

/// A checkpoint's weight quantisation, as the model loads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// Float weights.
    None,
    /// Fine-grained fp8 (transformers' `FineGrainedFP8Config`, `quant_method: "fp8"`, as
    /// Qwen3-30B-A3B-FP8 and DeepSeek-V3 ship): each quantised `X.weight` is e4m3 with an f32
    /// `X.weight_scale_inv` of one scale per `rows x cols` block (a weight is its code times
    /// its block's scale), activations quantised dynamically at run time.
    Fp8Blocks {
        /// Rows of a block (`weight_block_size[0]`).
        rows: usize,
        /// Columns of a block (`weight_block_size[1]`).
        cols: usize,
    },
}

impl Qwen3MoeConfig {
    /// Reads and checks `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("parsing {} as a Qwen3-MoE config", path.display()))?;
        cfg.check()?;
        Ok(cfg)
    }

    /// The rules the model relies on.
    pub fn check(&self) -> Result<()> {
        ensure!(self.hidden_size > 0 && self.vocab_size > 0, "empty model");
        ensure!(
            self.num_attention_heads > 0 && self.num_key_value_heads > 0,
            "no heads"
        );
        ensure!(
            self.num_attention_heads
                .is_multiple_of(self.num_key_value_heads),
            "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
            self.num_attention_heads,
            self.num_key_value_heads
        );
        ensure!(
            self.head_dim().is_multiple_of(2),
            "head_dim must be even (RoPE)"
        );
        ensure!(
            self.num_experts_per_tok > 0 && self.num_experts_per_tok <= self.num_experts,
            "num_experts_per_tok ({}) must be in 1..=num_experts ({})",
            self.num_experts_per_tok,
            self.num_experts
        );
        ensure!(
            self.decoder_sparse_step > 0,
            "decoder_sparse_step must be > 0"
        );
        if let Some(act) = &self.hidden_act {
            ensure!(
                act == "silu",
                "hidden_act {act:?} is not supported (silu only)"
            );
        }
        if let Some(s) = &self.rope_scaling {
            if !s.is_null() {
                bail!("rope_scaling {s} is not supported");
            }
        }
        if self.moe_layers().is_empty() {
            bail!("the config has no MoE layer: nothing to capture");
        }
        self.quantization()?;
        Ok(())
    }

    /// The checkpoint's weight quantisation from `quantization_config`. Only what the loader
    /// turns back into the checkpoint's numbers is accepted: fine-grained fp8 (`quant_method`
    /// `"fp8"`, `fmt` `"e4m3"`, a `weight_block_size`, `activation_scheme` `"dynamic"`);
    /// any other method (AWQ, GPTQ, compressed-tensors, bitsandbytes, ...), fp8 without blocks
    /// or with static activation scales is refused by name, never loaded as if it were float
    /// weights.
    pub fn quantization(&self) -> Result<Quantization> {
        let q = match &self.quantization_config {
            None | Some(serde_json::Value::Null) => return Ok(Quantization::None),
            Some(q) => q,
        };
        let field = |name: &str| q.get(name).filter(|v| !v.is_null());
        let text = |name: &str| field(name).and_then(|v| v.as_str());
        let method = text("quant_method").unwrap_or("<none>");
        ensure!(
            method == "fp8",
            "quantization_config: quant_method {method:?} is not supported (only fine-grained \
             fp8: quant_method \"fp8\" with weight_block_size)"
        );
        if let Some(fmt) = text("fmt") {
            ensure!(
                fmt == "e4m3",
                "quantization_config: fmt {fmt:?} is not supported (e4m3 only)"
            );
        }
        if let Some(scheme) = text("activation_scheme") {
            ensure!(
                scheme == "dynamic",
                "quantization_config: activation_scheme {scheme:?} is not supported (dynamic \
                 only: static input scales are not read)"
            );
        }
        let block = field("weight_block_size").context(
            "quantization_config: fp8 without weight_block_size (per-tensor fp8) is not \
             supported (fine-grained fp8 blocks only)",
        )?;
        let dims: Option<Vec<usize>> = block.as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_u64().and_then(|n| usize::try_from(n).ok()))
                .filter(|&n| n > 0)
                .collect()
        });
        match dims.as_deref() {
            Some(&[rows, cols]) if block.as_array().is_some_and(|a| a.len() == 2) => {
                Ok(Quantization::Fp8Blocks { rows, cols })
            }
            _ => {
                bail!("quantization_config: weight_block_size {block} is not two positive integers")
            }
        }
    }

    /// Per-head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Whether decoder layer `layer` has a sparse MoE block (transformers' rule).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        !self.mlp_only_layers.contains(&layer)
            && self.num_experts > 0
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }

    /// The decoder layers with a MoE block, in order: capture layer `i` is `moe_layers()[i]`.
    pub fn moe_layers(&self) -> Vec<usize> {
        (0..self.num_hidden_layers)
            .filter(|&l| self.is_moe_layer(l))
            .collect()
    }

    /// End-of-sequence ids the config names.
    pub fn eos_ids(&self) -> Vec<u32> {
        ids_of(self.eos_token_id.as_ref())
    }
}

/// A JSON id or list of ids as a list.
pub fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_u64().map(|n| n as u32).into_iter().collect(),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_quantization(q: &str) -> Result<Quantization> {
        let cfg: Qwen3MoeConfig = serde_json::from_str(&format!(
            r#"{{"vocab_size": 8, "hidden_size": 4, "moe_intermediate_size": 4,
                "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
                "num_experts": 2, "num_experts_per_tok": 1, "quantization_config": {q}}}"#
        ))?;
        cfg.check()?;
        cfg.quantization()
    }

    /// Qwen3-30B-A3B-FP8's quantization_config, and what is refused by name.
    #[test]
    fn quantization_config_is_read_or_refused() {
        assert_eq!(with_quantization("null").unwrap(), Quantization::None);
        let qwen_fp8 = r#"{"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
            "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}"#;
        assert_eq!(
            with_quantization(qwen_fp8).unwrap(),
            Quantization::Fp8Blocks {
                rows: 128,
                cols: 128
            }
        );
        for (q, says) in [
            (r#"{"quant_method": "awq", "bits": 4}"#, "\"awq\""),
            (r#"{"quant_method": "gptq"}"#, "\"gptq\""),
            (
                r#"{"quant_method": "compressed-tensors"}"#,
                "compressed-tensors",
            ),
            (r#"{"quant_method": "fp8"}"#, "per-tensor"),
            (
                r#"{"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "static"}"#,
                "static",
            ),
            (
                r#"{"quant_method": "fp8", "weight_block_size": [128, 128], "fmt": "e5m2"}"#,
                "e5m2",
            ),
            (
                r#"{"quant_method": "fp8", "weight_block_size": [128]}"#,
                "two positive",
            ),
            (
                r#"{"quant_method": "fp8", "weight_block_size": [0, 128]}"#,
                "two positive",
            ),
            (
                r#"{"quant_method": "fp8", "weight_block_size": [128, -1]}"#,
                "two positive",
            ),
            (r#"{"bits": 4}"#, "<none>"),
        ] {
            let err = format!("{:#}", with_quantization(q).unwrap_err());
            assert!(err.contains(says), "{q}: {err}");
        }
    }
}
