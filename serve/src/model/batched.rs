//! The batched forward pass (the GPU path; on the CPU only when a test asks for it): one
//! matmul per linear over the step's `[tokens, hidden]` batch, candle's RMSNorm and RoPE
//! kernels, attention per request over its own device KV cache (causal over a prefill chunk,
//! one row for a decode token), the logits of each request's last row.
//!
//! Numerics follow transformers' eager attention in the model's dtype: scores `q @ k^T` in
//! that dtype, scaled, masked and softmaxed in f32, the probabilities back in that dtype for
//! `@ v`. Unlike the CPU path a token's numbers may depend on its batch (cuBLAS picks its
//! kernels by shape).

use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::rotary_emb::rope_thd;

use super::moe::StepCapture;
use super::ops::{rms_norm, silu};
use super::profile::Phase;
use super::{Attention, KvCache, Mlp, Model, SeqInput};

/// `x @ w^T` over the whole batch, one matmul.
fn mm(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?)
}

/// The additive causal mask of `t` new tokens at positions `pos0..pos0 + t` over `pos0 + t`
/// cached positions: `[t, pos0 + t]` f32, 0 where position `j <= pos0 + i`, -inf after.
fn causal_mask(pos0: usize, t: usize, device: &Device) -> Result<Tensor> {
    let len = pos0 + t;
    let j = Tensor::arange(0u32, len as u32, device)?.reshape((1, len))?;
    let i = Tensor::arange(pos0 as u32, len as u32, device)?.reshape((t, 1))?;
    let future = j.broadcast_gt(&i)?;
    let blocked = Tensor::full(f32::NEG_INFINITY, (t, len), device)?;
    let open = Tensor::zeros((t, len), DType::F32, device)?;
    Ok(future.where_cond(&blocked, &open)?)
}

impl KvCache {
    /// Writes layer `l`'s keys and values of `t` new tokens (`[t, kv_heads, head_dim]` each)
    /// at positions `len..len + t` of the device cache, growing it (doubling, at least 256
    /// positions, at most its bound unless the write needs more) when full; returns the
    /// cache's keys and values through the new tokens, `[kv_heads, len + t, head_dim]` each
    /// (views of the buffers, no copy).
    fn append_device(&mut self, l: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (t, nkv, hd) = k.dims3()?;
        let (pos0, need) = (self.len, self.len + t);
        if self.device.len() <= l {
            self.device.resize_with(l + 1, || None);
        }
        let slot = &mut self.device[l];
        let cap = slot.as_ref().map_or(0, |(kc, _)| kc.dim(1).unwrap_or(0));
        if cap < need {
            let doubled = need.max(2 * cap).next_multiple_of(256);
            let grown = self.bound.map_or(doubled, |b| doubled.min(b.max(need)));
            let fresh = || Tensor::zeros((nkv, grown, hd), k.dtype(), k.device());
            let (kn, vn) = (fresh()?, fresh()?);
            if let Some((kc, vc)) = slot.as_ref() {
                if pos0 > 0 {
                    kn.slice_set(&kc.narrow(1, 0, pos0)?.contiguous()?, 1, 0)?;
                    vn.slice_set(&vc.narrow(1, 0, pos0)?.contiguous()?, 1, 0)?;
                }
            }
            *slot = Some((kn, vn));
        }
        let Some((kc, vc)) = slot.as_ref() else {
            anyhow::bail!("layer {l}: no KV buffer after growing it");
        };
        kc.slice_set(&k.transpose(0, 1)?.contiguous()?, 1, pos0)?;
        vc.slice_set(&v.transpose(0, 1)?.contiguous()?, 1, pos0)?;
        Ok((kc.narrow(1, 0, need)?, vc.narrow(1, 0, need)?))
    }
}

/// The most bytes one block of attention scores (f32, `[heads, rows, len]`) takes: a prefill
/// chunk's rows are attended in blocks of as many rows as fit, so a long context does not
/// need `heads * chunk * len` floats at once (32 heads, 2048 rows over 32k positions: 8 GiB).
/// Rows are independent, so the blocks compute what one pass would.
pub const ATTENTION_SCORES_BYTES: usize = 256 << 20;

/// One request's attention: `q` `[t, heads, head_dim]` of its new tokens over `keys` and
/// `values` `[kv_heads, len, head_dim]` (its whole cache, the new tokens last), `mask` the
/// causal mask `[t, len]` when `t > 1`; returns `[t, heads * head_dim]`. Rows go in blocks
/// whose scores fit `scores_bytes`.
fn attend(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
    scores_bytes: usize,
) -> Result<Tensor> {
    let (t, nh, _) = q.dims3()?;
    let len = keys.dim(1)?;
    let row_bytes = nh.saturating_mul(len).saturating_mul(4).max(1);
    let rows = (scores_bytes / row_bytes).clamp(1, t.max(1));
    if rows >= t {
        return attend_block(q, keys, values, mask);
    }
    let blocks = (0..t)
        .step_by(rows)
        .map(|r0| {
            let n = rows.min(t - r0);
            let mask = mask.map(|m| m.narrow(0, r0, n)).transpose()?;
            attend_block(&q.narrow(0, r0, n)?, keys, values, mask.as_ref())
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&blocks, 0)?)
}

/// [`attend`] in one pass.
fn attend_block(
    q: &Tensor,
    keys: &Tensor,
    values: &Tensor,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let (t, nh, hd) = q.dims3()?;
    let (nkv, len, _) = keys.dims3()?;
    let group = nh / nkv;
    // Query heads grouped by their key/value head (head = kv_head * group + g): `[kv_heads,
    // group * t, head_dim]`, one batched matmul per kv head.
    let q = q
        .transpose(0, 1)?
        .contiguous()?
        .reshape((nkv, group * t, hd))?;
    let scale = 1.0 / (hd as f64).sqrt();
    let mut scores = q
        .matmul(&keys.t()?)?
        .to_dtype(DType::F32)?
        .affine(scale, 0.0)?;
    if let Some(mask) = mask {
        scores = scores
            .reshape((nkv, group, t, len))?
            .broadcast_add(mask)?
            .reshape((nkv, group * t, len))?;
    }
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(values.dtype())?;
    let out = probs.matmul(values)?; // [kv_heads, group * t, head_dim]
    Ok(out
        .reshape((nh, t, hd))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((t, nh * hd))?)
}

impl Model {
    /// [`forward`](Model::forward) on the batched path.
    pub(super) fn forward_batched(
        &self,
        seqs: &mut [SeqInput<'_>],
        capture: &mut StepCapture,
    ) -> Result<Tensor> {
        let dev = &self.place.device;
        let eps = self.cfg.rms_norm_eps;
        let mut pass = self.profiler.pass(dev)?;
        let (ids, positions, last) = self.step_rows(seqs, capture)?;
        let n = ids.len();
        let mut x = self
            .embed
            .index_select(&Tensor::from_vec(ids, n, dev)?, 0)?;
        let rope = self.rope.half_tables(&positions, dev, self.place.dtype)?;
        let masks = seqs
            .iter()
            .map(|s| {
                let t = s.tokens.len();
                (t > 1)
                    .then(|| causal_mask(s.cache.len, t, dev))
                    .transpose()
            })
            .collect::<Result<Vec<_>>>()?;
        pass.mark(Phase::Embed)?;
        for (l, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps)?;
            pass.mark(Phase::Norms)?;
            let a = self.attention_batched(l, &layer.attn, &h, &rope, &masks, seqs)?;
            pass.mark(Phase::Attention)?;
            x = (x + a)?;
            let h = rms_norm(&x, &layer.post_norm, eps)?;
            pass.mark(Phase::Norms)?;
            let m = match &layer.mlp {
                Mlp::Dense { gate, up, down } => {
                    let m = mm(&(silu(&mm(&h, gate)?)? * mm(&h, up)?)?, down)?;
                    pass.mark(Phase::DenseMlp)?;
                    m
                }
                Mlp::Moe { index } => {
                    let m = self.moe.forward(*index, &h, capture.layer(*index)?)?;
                    pass.mark(Phase::Moe)?;
                    m
                }
            };
            x = (x + m)?;
            pass.mark(Phase::Norms)?;
        }
        self.moe.finish_step(capture)?;
        pass.mark(Phase::Capture)?;
        for s in seqs.iter_mut() {
            s.cache.len += s.tokens.len();
        }
        let last = Tensor::from_vec(last, seqs.len(), dev)?;
        let x = rms_norm(&x.index_select(&last, 0)?, &self.norm, eps)?;
        let logits = mm(&x, &self.lm_head)?.to_dtype(DType::F32)?;
        pass.mark(Phase::Head)?;
        pass.finish(n);
        Ok(logits)
    }

    /// Layer `l`'s attention on the batched path: projections, q/k norms and RoPE over the
    /// whole batch, then each sequence's rows over its own cache.
    fn attention_batched(
        &self,
        l: usize,
        a: &Attention,
        h: &Tensor,
        (cos, sin): &(Tensor, Tensor),
        masks: &[Option<Tensor>],
        seqs: &mut [SeqInput<'_>],
    ) -> Result<Tensor> {
        let (nh, nkv, hd) = (
            self.cfg.num_attention_heads,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim(),
        );
        let eps = self.cfg.rms_norm_eps;
        let n = h.dim(0)?;
        let (mut q, mut k, mut v) = (mm(h, &a.q)?, mm(h, &a.k)?, mm(h, &a.v)?);
        if let Some([bq, bk, bv]) = &a.bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        // RoPE over `[1, tokens, heads, head_dim]` with each row's own position's angles.
        let rotate = |x: Tensor, heads: usize, norm: &Tensor| -> Result<Tensor> {
            let x = rms_norm(&x.reshape((n, heads, hd))?, norm, eps)?;
            let x = rope_thd(&x.reshape((1, n, heads, hd))?.contiguous()?, cos, sin)?;
            Ok(x.reshape((n, heads, hd))?)
        };
        let q = rotate(q, nh, &a.q_norm)?;
        let k = rotate(k, nkv, &a.k_norm)?;
        let v = v.reshape((n, nkv, hd))?;
        ensure!(masks.len() == seqs.len(), "one mask slot per sequence");
        let mut outs = Vec::with_capacity(seqs.len());
        let mut row = 0;
        for (s, mask) in seqs.iter_mut().zip(masks) {
            let t = s.tokens.len();
            let (keys, values) =
                s.cache
                    .append_device(l, &k.narrow(0, row, t)?, &v.narrow(0, row, t)?)?;
            outs.push(attend(
                &q.narrow(0, row, t)?,
                &keys,
                &values,
                mask.as_ref(),
                ATTENTION_SCORES_BYTES,
            )?);
            row += t;
        }
        let out = match outs.len() {
            1 => outs.swap_remove(0),
            _ => Tensor::cat(&outs, 0)?,
        };
        mm(&out, &a.o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention in blocks of rows equals it in one pass: a 3-row budget over 10 rows (blocks
    /// of 3, 3, 3, 1) with the causal mask of a chunk after 5 cached positions, grouped heads.
    #[test]
    fn attention_in_blocks_is_attention_in_one_pass() {
        let dev = Device::Cpu;
        let (t, pos0, nh, nkv, hd) = (10, 5, 4, 2, 8);
        let len = pos0 + t;
        let q = Tensor::randn(0f32, 1.0, (t, nh, hd), &dev).unwrap();
        let keys = Tensor::randn(0f32, 1.0, (nkv, len, hd), &dev).unwrap();
        let values = Tensor::randn(0f32, 1.0, (nkv, len, hd), &dev).unwrap();
        let mask = causal_mask(pos0, t, &dev).unwrap();
        let whole = attend(&q, &keys, &values, Some(&mask), usize::MAX).unwrap();
        let row_bytes = nh * len * 4;
        for rows in [1, 3, 9] {
            let blocked = attend(&q, &keys, &values, Some(&mask), rows * row_bytes).unwrap();
            assert_eq!(blocked.dims(), whole.dims());
            let diff = (&blocked - &whole).unwrap().abs().unwrap();
            let worst: f32 = diff.max_all().unwrap().to_scalar().unwrap();
            assert!(worst <= 1e-6, "{rows} rows a block: {worst}");
        }
        // A budget under one row still goes a row at a time.
        let tiny = attend(&q, &keys, &values, Some(&mask), 1).unwrap();
        assert_eq!(tiny.dims(), &[t, nh * hd]);
    }
}
