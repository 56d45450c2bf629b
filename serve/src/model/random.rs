//! Random weights for a config (no checkpoint): deterministic from a seed, scaled so every
//! linear maps unit-variance inputs to unit-variance outputs (uniform in `±sqrt(3 / fan_in)`),
//! norms at 1. Named as a Hugging Face Qwen3-MoE checkpoint names them (per-expert keys), so
//! the checkpoint loader builds the model from them, and they can be saved as one.
//!
//! Two draws: [`random_tensors`] (the CPU mode: one stream through the whole model, on the
//! host) and [`RandomSource`] (each tensor from its own seed, made when the loader asks for
//! it: the GPU mode and the benchmark; for a config with a fine-grained fp8
//! `quantization_config`, its experts as e4m3 codes with block scales).

use std::collections::HashMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};
use flashinfer_rs::routing::oracle::SplitMix64;

use super::config::{Quantization, Qwen3MoeConfig};
use super::weights::{quantize_blocks, TensorSource, SCALES_SUFFIX};

fn uniform(rng: &mut SplitMix64, shape: &[usize], fan_in: usize) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let a = (3.0 / fan_in as f64).sqrt();
    let v: Vec<f32> = (0..n)
        .map(|_| ((rng.unit() * 2.0 - 1.0) * a) as f32)
        .collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn ones(n: usize) -> Result<Tensor> {
    Ok(Tensor::ones(n, DType::F32, &Device::Cpu)?)
}

/// How one random tensor is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Uniform in `±sqrt(3 / fan_in)`.
    Uniform {
        /// The fan-in the scale is computed from.
        fan_in: usize,
    },
    /// All ones (norm weights).
    Ones,
}

/// Every tensor of `cfg`'s model with its shape and initialisation, in the order
/// [`random_tensors`] draws them (its numbers depend on this order: do not reorder).
pub fn random_layout(cfg: &Qwen3MoeConfig) -> Vec<(String, Vec<usize>, Init)> {
    let (h, hd) = (cfg.hidden_size, cfg.head_dim());
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let u = |fan_in| Init::Uniform { fan_in };
    let mut t = Vec::new();
    let mut add = |name: String, shape: &[usize], init| t.push((name, shape.to_vec(), init));
    // Embeddings of unit variance per coordinate (fan_in 3 gives ±1).
    add(
        "model.embed_tokens.weight".into(),
        &[cfg.vocab_size, h],
        u(3),
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        add(format!("{p}.input_layernorm.weight"), &[h], Init::Ones);
        add(
            format!("{p}.post_attention_layernorm.weight"),
            &[h],
            Init::Ones,
        );
        let a = format!("{p}.self_attn");
        add(format!("{a}.q_proj.weight"), &[nh * hd, h], u(h));
        add(format!("{a}.k_proj.weight"), &[nkv * hd, h], u(h));
        add(format!("{a}.v_proj.weight"), &[nkv * hd, h], u(h));
        add(format!("{a}.o_proj.weight"), &[h, nh * hd], u(nh * hd));
        add(format!("{a}.q_norm.weight"), &[hd], Init::Ones);
        add(format!("{a}.k_norm.weight"), &[hd], Init::Ones);
        let m = format!("{p}.mlp");
        if cfg.is_moe_layer(l) {
            let i = cfg.moe_intermediate_size;
            add(format!("{m}.gate.weight"), &[cfg.num_experts, h], u(h));
            for e in 0..cfg.num_experts {
                let x = format!("{m}.experts.{e}");
                add(format!("{x}.gate_proj.weight"), &[i, h], u(h));
                add(format!("{x}.up_proj.weight"), &[i, h], u(h));
                add(format!("{x}.down_proj.weight"), &[h, i], u(i));
            }
        } else {
            let i = cfg.intermediate_size;
            add(format!("{m}.gate_proj.weight"), &[i, h], u(h));
            add(format!("{m}.up_proj.weight"), &[i, h], u(h));
            add(format!("{m}.down_proj.weight"), &[h, i], u(i));
        }
    }
    add("model.norm.weight".into(), &[h], Init::Ones);
    if !cfg.tie_word_embeddings {
        add("lm_head.weight".into(), &[cfg.vocab_size, h], u(h));
    }
    t
}

/// Every tensor of `cfg`'s model, from `seed`, f32: one SplitMix64 stream drawn through the
/// tensors in [`random_layout`]'s order (the CPU mode's weights; the whole model at once, on
/// the host).
pub fn random_tensors(cfg: &Qwen3MoeConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = SplitMix64(seed);
    let mut t = HashMap::new();
    for (name, shape, init) in random_layout(cfg) {
        let tensor = match init {
            Init::Uniform { fan_in } => uniform(&mut rng, &shape, fan_in)?,
            Init::Ones => ones(shape[0])?,
        };
        t.insert(name, tensor);
    }
    Ok(t)
}

/// Random weights made one tensor at a time, each from its own seed (`seed` mixed with the
/// tensor's name), so any tensor can be made alone, in any order, and the model never lives
/// on the host whole: what a GPU model loads layer by layer, and what the benchmark's peer
/// model (candle-transformers) is given, so both have equal weights. Not the numbers of
/// [`random_tensors`] (one stream through the whole model): a different, equally
/// deterministic draw.
///
/// For a config whose `quantization_config` is fine-grained fp8, every expert weight is that
/// draw quantised in 128x128 blocks by flashinfer-rs's `prepare::fp8_blocks` (e4m3 codes, and
/// `X.weight_scale_inv` beside each `X.weight`), as an fp8 checkpoint of the same model
/// holds it; the other tensors stay floats.
pub struct RandomSource {
    seed: u64,
    tensors: HashMap<String, (Vec<usize>, Init)>,
    fp8_experts: bool,
}

impl RandomSource {
    /// The tensors of `cfg`'s model from `seed`. A `quantization_config` the loader refuses
    /// makes no fp8 here (the model's load refuses the config itself).
    pub fn new(cfg: &Qwen3MoeConfig, seed: u64) -> Self {
        let tensors = random_layout(cfg)
            .into_iter()
            .map(|(n, s, i)| (n, (s, i)))
            .collect();
        let fp8_experts = matches!(cfg.quantization(), Ok(Quantization::Fp8Blocks { .. }));
        RandomSource {
            seed,
            tensors,
            fp8_experts,
        }
    }

    /// Whether `name` is an expert weight this source holds as fp8.
    fn is_fp8(&self, name: &str) -> bool {
        self.fp8_experts && name.contains(".experts.") && self.tensors.contains_key(name)
    }

    /// The float draw of tensor `name`.
    fn floats(&self, name: &str) -> Result<Tensor> {
        let (shape, init) = self
            .tensors
            .get(name)
            .with_context(|| format!("missing tensor {name}"))?;
        match *init {
            Init::Ones => ones(shape[0]),
            Init::Uniform { fan_in } => {
                let n = shape.iter().product();
                let a = (3.0 / fan_in as f64).sqrt();
                let v = uniform_values(tensor_seed(self.seed, name), n, a);
                Ok(Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?)
            }
        }
    }

    /// Expert weight `name` quantised in 128x128 blocks: its e4m3 codes (an F8E4M3 tensor of
    /// its shape) and their block scales `[rows / 128, cols / 128]`.
    fn fp8(&self, name: &str) -> Result<(Tensor, Tensor)> {
        let w = self.floats(name)?;
        let (r, c) = w.dims2()?;
        ensure!(
            r.is_multiple_of(128) && c.is_multiple_of(128),
            "random fp8 experts are quantised in 128x128 blocks: {name} is {r}x{c}"
        );
        quantize_blocks(&w)
    }
}

/// SplitMix64's increment: the stream's `i`-th state is `start + (i + 1) * GAMMA`, so a
/// stream can be entered anywhere (the chunks of one tensor drawn in parallel).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a of `name`, mixed with `seed` through one SplitMix64 step: a tensor's own seed.
fn tensor_seed(seed: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    SplitMix64(seed ^ h).next_u64()
}

/// `n` values uniform in `±a` from the SplitMix64 stream starting at `start`, value `i` from
/// the stream's `i`-th output whatever the number of threads.
fn uniform_values(start: u64, n: usize, a: f64) -> Vec<f32> {
    let mut v = vec![0f32; n];
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let chunk = n.div_ceil(threads).max(1 << 16);
    std::thread::scope(|s| {
        for (c, part) in v.chunks_mut(chunk).enumerate() {
            let first = (c * chunk) as u64;
            s.spawn(move || {
                let mut rng = SplitMix64(start.wrapping_add(first.wrapping_mul(GAMMA)));
                for x in part {
                    *x = ((rng.unit() * 2.0 - 1.0) * a) as f32;
                }
            });
        }
    });
    v
}

impl TensorSource for RandomSource {
    fn get(&self, name: &str) -> Result<Tensor> {
        if let Some(weight) = name.strip_suffix(SCALES_SUFFIX).filter(|w| self.is_fp8(w)) {
            return Ok(self.fp8(weight)?.1);
        }
        if self.is_fp8(name) {
            return Ok(self.fp8(name)?.0);
        }
        self.floats(name)
    }
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
            || name
                .strip_suffix(SCALES_SUFFIX)
                .is_some_and(|w| self.is_fp8(w))
    }
}

/// Writes `tensors` as `dir/model.safetensors` (converted to `dtype`) beside `cfg` as
/// `dir/config.json`: a checkpoint directory the loader reads.
pub fn save_checkpoint(
    dir: &Path,
    cfg_json: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
    dtype: DType,
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(cfg_json)?,
    )?;
    let converted = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.to_dtype(dtype)?)))
        .collect::<Result<HashMap<_, _>>>()?;
    candle_core::safetensors::save(&converted, dir.join("model.safetensors"))?;
    Ok(())
}
