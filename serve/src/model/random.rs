//! Random weights for a config (no checkpoint): deterministic from a seed, scaled so every
//! linear maps unit-variance inputs to unit-variance outputs (uniform in `±sqrt(3 / fan_in)`),
//! norms at 1. Named as a Hugging Face Qwen3-MoE checkpoint names them (per-expert keys), so
//! the checkpoint loader builds the model from them, and they can be saved as one.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use flashinfer_rs::routing::oracle::SplitMix64;

use super::config::Qwen3MoeConfig;

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

/// Every tensor of `cfg`'s model, from `seed`, f32.
pub fn random_tensors(cfg: &Qwen3MoeConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = SplitMix64(seed);
    let (h, hd) = (cfg.hidden_size, cfg.head_dim());
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut t = HashMap::new();
    // Embeddings of unit variance per coordinate (fan_in 3 gives ±1).
    t.insert(
        "model.embed_tokens.weight".into(),
        uniform(&mut rng, &[cfg.vocab_size, h], 3)?,
    );
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        t.insert(format!("{p}.input_layernorm.weight"), ones(h)?);
        t.insert(format!("{p}.post_attention_layernorm.weight"), ones(h)?);
        let a = format!("{p}.self_attn");
        t.insert(
            format!("{a}.q_proj.weight"),
            uniform(&mut rng, &[nh * hd, h], h)?,
        );
        t.insert(
            format!("{a}.k_proj.weight"),
            uniform(&mut rng, &[nkv * hd, h], h)?,
        );
        t.insert(
            format!("{a}.v_proj.weight"),
            uniform(&mut rng, &[nkv * hd, h], h)?,
        );
        t.insert(
            format!("{a}.o_proj.weight"),
            uniform(&mut rng, &[h, nh * hd], nh * hd)?,
        );
        t.insert(format!("{a}.q_norm.weight"), ones(hd)?);
        t.insert(format!("{a}.k_norm.weight"), ones(hd)?);
        let m = format!("{p}.mlp");
        if cfg.is_moe_layer(l) {
            let i = cfg.moe_intermediate_size;
            t.insert(
                format!("{m}.gate.weight"),
                uniform(&mut rng, &[cfg.num_experts, h], h)?,
            );
            for e in 0..cfg.num_experts {
                let x = format!("{m}.experts.{e}");
                t.insert(
                    format!("{x}.gate_proj.weight"),
                    uniform(&mut rng, &[i, h], h)?,
                );
                t.insert(
                    format!("{x}.up_proj.weight"),
                    uniform(&mut rng, &[i, h], h)?,
                );
                t.insert(
                    format!("{x}.down_proj.weight"),
                    uniform(&mut rng, &[h, i], i)?,
                );
            }
        } else {
            let i = cfg.intermediate_size;
            t.insert(
                format!("{m}.gate_proj.weight"),
                uniform(&mut rng, &[i, h], h)?,
            );
            t.insert(
                format!("{m}.up_proj.weight"),
                uniform(&mut rng, &[i, h], h)?,
            );
            t.insert(
                format!("{m}.down_proj.weight"),
                uniform(&mut rng, &[h, i], i)?,
            );
        }
    }
    t.insert("model.norm.weight".into(), ones(h)?);
    if !cfg.tie_word_embeddings {
        t.insert(
            "lm_head.weight".into(),
            uniform(&mut rng, &[cfg.vocab_size, h], h)?,
        );
    }
    Ok(t)
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
