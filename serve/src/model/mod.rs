//! Qwen3-MoE as transformers defines it (`Qwen3MoeForCausalLM`), on candle: f32 on the CPU,
//! or on one CUDA GPU (f32 or bf16 dense parts) — see [`device::Placement`].
//!
//! A step runs every request's new tokens as one `[tokens, hidden]` batch through the
//! token-wise operations (linears, norms, the MoE block), and attention per request over its
//! own KV cache. On the CPU every token's numbers are computed from that token's row alone
//! ([`ops::linear`] is row by row, attention is per request and token), so a request's
//! output never depends on what else shares its steps. On the GPU (the batched path,
//! `batched.rs`) every linear is one matmul over the step's batch, norms and RoPE are candle's
//! kernels, and the KV caches are device tensors.

mod batched;
pub mod config;
pub mod device;
pub mod moe;
pub mod ops;
pub mod profile;
pub mod random;
pub mod weights;

use std::sync::Arc;

use anyhow::{ensure, Context, Result};
use candle_core::{DType, Device, Tensor};

pub use batched::ATTENTION_SCORES_BYTES;
pub use config::{Quantization, Qwen3MoeConfig};
use device::Placement;
use moe::{BackendKind, ExpertScales, MoeBackend, MoeLayerWeights, MoeSpec, StepCapture};
use ops::{apply_rope, linear, rms_norm, silu, to_f32_vec, Rope};
use profile::Profiler;
use weights::{scales_name, Dequantized, TensorSource};

struct Attention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    bias: Option<[Tensor; 3]>,
    q_norm: Tensor,
    k_norm: Tensor,
}

enum Mlp {
    Dense {
        gate: Tensor,
        up: Tensor,
        down: Tensor,
    },
    /// The `index`-th MoE layer of the backend.
    Moe { index: usize },
}

struct Layer {
    input_norm: Tensor,
    post_norm: Tensor,
    attn: Attention,
    mlp: Mlp,
}

/// One request's keys and values, per layer: on the CPU path `[positions, kv_heads,
/// head_dim]` f32 host vectors; on the batched path device tensors `[kv_heads, capacity,
/// head_dim]` in the model's dtype, filled up to `len` positions and grown by doubling, up to
/// its bound when it has one ([`KvCache::bounded`]).
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    device: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
    /// The most positions the batched path's buffers grow to by doubling (a request's prompt
    /// plus its max_tokens); more only if a write needs more.
    bound: Option<usize>,
}

impl KvCache {
    /// A cache for a request that runs at most `positions` positions (its prompt plus its
    /// max_tokens): the device buffers' doubling stops there, so a long request does not hold
    /// up to twice the memory it can use.
    pub fn bounded(positions: usize) -> Self {
        KvCache {
            bound: Some(positions),
            ..KvCache::default()
        }
    }
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Bytes held (on the batched path, the device buffers' whole capacity).
    pub fn bytes(&self) -> usize {
        let host: usize = self
            .layers
            .iter()
            .map(|(k, v)| 4 * (k.len() + v.len()))
            .sum();
        let device: usize = self
            .device
            .iter()
            .flatten()
            .map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes())
            .sum();
        host + device
    }
}

/// One request's part of a step: its new `tokens`, at positions `cache.len()..`.
pub struct SeqInput<'a> {
    /// Tokens to run (a prefill chunk, or the one decode token).
    pub tokens: &'a [u32],
    /// The request's cache; it grows by `tokens.len()`.
    pub cache: &'a mut KvCache,
}

/// The model.
pub struct Model {
    cfg: Qwen3MoeConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    rope: Rope,
    moe: Arc<dyn MoeBackend>,
    device: Device,
    place: Placement,
    profiler: Arc<Profiler>,
}

/// A source's tensor on `place`: moved to its device, then converted to its dtype there (the
/// CPU path: exactly `to_dtype(F32)`, the device move of a host tensor to the CPU being a
/// no-op). The benchmark's peer model places its weights through this same function, so
/// both models hold equal numbers.
pub fn place_tensor(t: &Tensor, device: &Device, dtype: DType) -> Result<Tensor> {
    Ok(t.to_device(device)?.to_dtype(dtype)?)
}

impl Model {
    /// Builds the model of `cfg` from `src` (Hugging Face names), with MoE backend `kind`, on
    /// the CPU (f32, row by row).
    pub fn load(cfg: &Qwen3MoeConfig, src: &dyn TensorSource, kind: BackendKind) -> Result<Self> {
        Self::load_on(cfg, src, kind, &Placement::cpu())
    }

    /// Builds the model on `place`, one tensor at a time straight onto its device: the dense
    /// layers first, then the MoE backend, which loads, prepares and drops one MoE layer's
    /// checkpoint tensors at a time (at most one layer's raw experts live at once). Every
    /// tensor is read through [`Dequantized`] with the config's quantisation: a fine-grained
    /// fp8 checkpoint's weights arrive as floats, and a quantised weight it cannot read back
    /// is an error.
    pub fn load_on(
        cfg: &Qwen3MoeConfig,
        src: &dyn TensorSource,
        kind: BackendKind,
        place: &Placement,
    ) -> Result<Self> {
        cfg.check()?;
        let (raw, quantization) = (src, cfg.quantization()?);
        let dequantized = Dequantized::new(raw, quantization);
        let src: &dyn TensorSource = &dequantized;
        let get = |name: &str| -> Result<Tensor> {
            place_tensor(&src.get(name)?, &place.device, place.dtype)
                .with_context(|| format!("placing {name}"))
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut moe_layers = Vec::new();
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let mlp = if cfg.is_moe_layer(l) {
                moe_layers.push(l);
                Mlp::Moe {
                    index: moe_layers.len() - 1,
                }
            } else {
                Mlp::Dense {
                    gate: get(&format!("{p}.mlp.gate_proj.weight"))?,
                    up: get(&format!("{p}.mlp.up_proj.weight"))?,
                    down: get(&format!("{p}.mlp.down_proj.weight"))?,
                }
            };
            layers.push(Layer {
                input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
                attn: load_attention(cfg, &get, &format!("{p}.self_attn"))?,
                mlp,
            });
        }
        let spec = MoeSpec {
            layers: moe_layers.len(),
            num_experts: cfg.num_experts,
            top_k: cfg.num_experts_per_tok,
            hidden: cfg.hidden_size,
            intermediate: cfg.moe_intermediate_size,
            norm_topk_prob: cfg.norm_topk_prob,
        };
        let moe = moe::build_backend(kind, spec, place.moe_weights, &place.device, &mut |i| {
            let l = moe_layers.get(i).context("MoE layer index")?;
            load_moe(cfg, raw, quantization, &format!("model.layers.{l}.mlp"))
        })?;
        let embed = get("model.embed_tokens.weight")?;
        ensure!(
            embed.dims() == [cfg.vocab_size, cfg.hidden_size],
            "embed_tokens {:?}",
            embed.dims()
        );
        let lm_head = if cfg.tie_word_embeddings || !src.contains("lm_head.weight") {
            embed.clone()
        } else {
            get("lm_head.weight")?
        };
        Ok(Model {
            cfg: cfg.clone(),
            embed,
            layers,
            norm: get("model.norm.weight")?,
            lm_head,
            rope: Rope::new(cfg.head_dim(), cfg.rope_theta),
            moe,
            device: place.device.clone(),
            place: place.clone(),
            profiler: Arc::default(),
        })
    }

    /// Where the model runs.
    pub fn placement(&self) -> &Placement {
        &self.place
    }

    /// The profiler of the batched path (off by default; see [`profile`]).
    pub fn profiler(&self) -> &Arc<Profiler> {
        &self.profiler
    }

    /// The config.
    pub fn config(&self) -> &Qwen3MoeConfig {
        &self.cfg
    }

    /// Bytes of KV cache one position takes, every layer's keys and values (in the dense
    /// dtype on the batched path, f32 host vectors on the CPU's).
    pub fn kv_bytes_per_position(&self) -> usize {
        let elem = if self.place.batched {
            self.place.dtype.size_in_bytes()
        } else {
            4
        };
        let per_layer = 2 * self.cfg.num_key_value_heads * self.cfg.head_dim() * elem;
        self.cfg.num_hidden_layers * per_layer
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        &self.place.device
    }

    /// The MoE backend.
    pub fn moe(&self) -> &Arc<dyn MoeBackend> {
        &self.moe
    }

    /// MoE layers, experts per token and experts: the shape of a captured row.
    pub fn capture_shape(&self) -> (usize, usize, usize) {
        let s = self.moe.spec();
        (s.layers, s.top_k, s.num_experts)
    }

    /// Runs one step: every sequence's new tokens, as one batch. Writes the step's routed
    /// experts (rows in the order of `seqs`' tokens) into `capture`, grows every cache, and
    /// returns the logits of each sequence's last new token, `[seqs, vocab]`.
    pub fn forward(&self, seqs: &mut [SeqInput<'_>], capture: &mut StepCapture) -> Result<Tensor> {
        if self.place.batched {
            return self.forward_batched(seqs, capture);
        }
        let (ids, positions, last) = self.step_rows(seqs, capture)?;
        let n = ids.len();
        let ids_t = Tensor::from_vec(ids, n, &self.device)?;
        let mut x = self.embed.index_select(&ids_t, 0)?;
        let (cos, sin) = self.rope.tables(&positions, &self.device)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, self.cfg.rms_norm_eps)?;
            let a = self.attention(l, &layer.attn, &h, (&cos, &sin), seqs)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.post_norm, self.cfg.rms_norm_eps)?;
            let m = match &layer.mlp {
                Mlp::Dense { gate, up, down } => {
                    let g = silu(&linear(&h, gate)?)?;
                    linear(&(g * linear(&h, up)?)?, down)?
                }
                Mlp::Moe { index } => self.moe.forward(*index, &h, capture.layer(*index)?)?,
            };
            x = (x + m)?;
        }
        self.moe.finish_step(capture)?;
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        let last = Tensor::from_vec(last, seqs.len(), &self.device)?;
        let x = rms_norm(
            &x.index_select(&last, 0)?,
            &self.norm,
            self.cfg.rms_norm_eps,
        )?;
        linear(&x, &self.lm_head)
    }

    /// The step's token ids, their positions and each sequence's last row, checked: every
    /// sequence has a new token, the capture has one row per token, every id is in the
    /// vocabulary.
    fn step_rows(
        &self,
        seqs: &[SeqInput<'_>],
        capture: &StepCapture,
    ) -> Result<(Vec<u32>, Vec<usize>, Vec<u32>)> {
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut last = Vec::with_capacity(seqs.len());
        for s in seqs.iter() {
            ensure!(!s.tokens.is_empty(), "a sequence with no new token");
            ids.extend_from_slice(s.tokens);
            positions.extend((0..s.tokens.len()).map(|i| s.cache.len + i));
            last.push((ids.len() - 1) as u32);
        }
        let n = ids.len();
        ensure!(
            capture.tokens() == n,
            "capture of {} rows for {n} tokens",
            capture.tokens()
        );
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.cfg.vocab_size) {
            anyhow::bail!(
                "token id {bad} is outside the vocabulary ({})",
                self.cfg.vocab_size
            );
        }
        Ok((ids, positions, last))
    }

    /// Self-attention of layer `l` over the step: projections and norms batched, attention
    /// per sequence over its cache (causal within the new tokens).
    fn attention(
        &self,
        l: usize,
        a: &Attention,
        h: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        seqs: &mut [SeqInput<'_>],
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim(),
        );
        let n = h.dim(0)?;
        let (mut q, mut k, mut v) = (linear(h, &a.q)?, linear(h, &a.k)?, linear(h, &a.v)?);
        if let Some([bq, bk, bv]) = &a.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let eps = self.cfg.rms_norm_eps;
        let q = apply_rope(
            &rms_norm(&q.reshape((n, nh, hd))?, &a.q_norm, eps)?,
            cos,
            sin,
        )?;
        let k = apply_rope(
            &rms_norm(&k.reshape((n, nkv, hd))?, &a.k_norm, eps)?,
            cos,
            sin,
        )?;
        let (q, k, v) = (to_f32_vec(&q)?, to_f32_vec(&k)?, to_f32_vec(&v)?);
        let mut out = vec![0f32; n * nh * hd];
        let mut row = 0;
        for s in seqs.iter_mut() {
            let t = s.tokens.len();
            if s.cache.layers.len() <= l {
                s.cache.layers.resize_with(l + 1, Default::default);
            }
            let (kc, vc) = &mut s.cache.layers[l];
            kc.extend_from_slice(&k[row * nkv * hd..(row + t) * nkv * hd]);
            vc.extend_from_slice(&v[row * nkv * hd..(row + t) * nkv * hd]);
            for i in 0..t {
                let pos = s.cache.len + i;
                let qrow = &q[(row + i) * nh * hd..(row + i + 1) * nh * hd];
                let orow = &mut out[(row + i) * nh * hd..(row + i + 1) * nh * hd];
                attend(qrow, kc, vc, pos + 1, (nh, nkv, hd), orow);
            }
            row += t;
        }
        let out = Tensor::from_vec(out, (n, nh * hd), &self.device)?;
        linear(&out, &a.o)
    }
}

/// One token's attention over `len` cached positions, every head: softmax of
/// `q . k / sqrt(head_dim)` in f32 (max-subtracted), then the weighted sum of values.
fn attend(
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    len: usize,
    (nh, nkv, hd): (usize, usize, usize),
    out: &mut [f32],
) {
    let group = nh / nkv;
    let scale = 1.0 / (hd as f32).sqrt();
    let mut scores = vec![0f32; len];
    for head in 0..nh {
        let kvh = head / group;
        let qh = &q[head * hd..(head + 1) * hd];
        for (j, s) in scores.iter_mut().enumerate() {
            let kj = &kc[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
            *s = qh.iter().zip(kj).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut z = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            z += *s;
        }
        let oh = &mut out[head * hd..(head + 1) * hd];
        for (j, s) in scores.iter().enumerate() {
            let w = s / z;
            let vj = &vc[(j * nkv + kvh) * hd..(j * nkv + kvh + 1) * hd];
            for (o, x) in oh.iter_mut().zip(vj) {
                *o += w * x;
            }
        }
    }
}

fn load_attention(
    cfg: &Qwen3MoeConfig,
    get: &dyn Fn(&str) -> Result<Tensor>,
    p: &str,
) -> Result<Attention> {
    let bias = if cfg.attention_bias {
        Some([
            get(&format!("{p}.q_proj.bias"))?,
            get(&format!("{p}.k_proj.bias"))?,
            get(&format!("{p}.v_proj.bias"))?,
        ])
    } else {
        None
    };
    Ok(Attention {
        q: get(&format!("{p}.q_proj.weight"))?,
        k: get(&format!("{p}.k_proj.weight"))?,
        v: get(&format!("{p}.v_proj.weight"))?,
        o: get(&format!("{p}.o_proj.weight"))?,
        bias,
        q_norm: get(&format!("{p}.q_norm.weight"))?,
        k_norm: get(&format!("{p}.k_norm.weight"))?,
    })
}

/// One MoE layer's weights, from per-expert keys (`experts.{e}.{gate,up,down}_proj.weight`,
/// the released Qwen3-MoE format) or the fused form (`experts.gate_up_proj` `[E, 2I, H]`, gate
/// rows first, and `experts.down_proj` `[E, H, I]`; the transposed `[E, H, 2I]` / `[E, I, H]`
/// are recognised by shape). `raw` is the checkpoint as stored: a fine-grained fp8
/// checkpoint's per-expert e4m3 weights come with their block scales (the backend decides
/// whether to run them in fp8); fused ones, and any other quantised weight, are dequantized
/// here.
fn load_moe(
    cfg: &Qwen3MoeConfig,
    raw: &dyn TensorSource,
    quantization: Quantization,
    p: &str,
) -> Result<MoeLayerWeights> {
    let src = Dequantized::new(raw, quantization);
    let (e, i, h) = (cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size);
    let router = src.get(&format!("{p}.gate.weight"))?;
    let fused = format!("{p}.experts.gate_up_proj");
    if src.contains(&fused) {
        let mut gate_up = src.get(&fused)?;
        if gate_up.dims() == [e, h, 2 * i] && h != 2 * i {
            gate_up = gate_up.transpose(1, 2)?.contiguous()?;
        }
        ensure!(
            gate_up.dims() == [e, 2 * i, h],
            "{fused}: {:?}",
            gate_up.dims()
        );
        let mut down = src.get(&format!("{p}.experts.down_proj"))?;
        if down.dims() == [e, i, h] && h != i {
            down = down.transpose(1, 2)?.contiguous()?;
        }
        ensure!(
            down.dims() == [e, h, i],
            "{p}.experts.down_proj: {:?}",
            down.dims()
        );
        return Ok(MoeLayerWeights {
            router,
            gate: gate_up.narrow(1, 0, i)?.contiguous()?,
            up: gate_up.narrow(1, i, i)?.contiguous()?,
            down,
            scales: None,
        });
    }
    // Every expert's `name` (a projection's weight or its scales), stacked.
    let stack = |from: &dyn TensorSource, name: &str| -> Result<Tensor> {
        let parts = (0..e)
            .map(|x| from.get(&format!("{p}.experts.{x}.{name}")))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("{p}: per-expert {name}"))?;
        Ok(Tensor::stack(&parts, 0)?)
    };
    const PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];
    let as_floats = || -> Result<MoeLayerWeights> {
        let [gate, up, down] = PROJECTIONS.map(|n| stack(&src, &format!("{n}.weight")));
        Ok(MoeLayerWeights {
            router: router.clone(),
            gate: gate?,
            up: up?,
            down: down?,
            scales: None,
        })
    };
    let Quantization::Fp8Blocks { rows, cols } = quantization else {
        return as_floats();
    };
    let [gate, up, down] = PROJECTIONS.map(|n| stack(raw, &format!("{n}.weight")));
    let (gate, up, down) = (gate?, up?, down?);
    if [&gate, &up, &down]
        .iter()
        .any(|t| t.dtype() != DType::F8E4M3)
    {
        return as_floats();
    }
    let [gate_s, up_s, down_s] =
        PROJECTIONS.map(|n| stack(raw, &scales_name(&format!("{n}.weight"))));
    Ok(MoeLayerWeights {
        router,
        gate,
        up,
        down,
        scales: Some(ExpertScales {
            gate: gate_s?,
            up: up_s?,
            down: down_s?,
            block: (rows, cols),
        }),
    })
}
