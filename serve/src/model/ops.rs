//! The few tensor operations the model builds on, each computing a token's row from that row
//! alone: a step's batch composition never changes a token's numbers.

use anyhow::Result;
use candle_core::{DType, Tensor, D};

/// `x @ w^T` for `x` `[rows, in]` and `w` `[out, in]`, one row at a time: candle's CPU
/// matmul may block the reduction differently for different row counts, so a batched product
/// would make a token's result depend on its batch. Per row, the product has one shape
/// whatever else the step holds.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let rows = x.dim(0)?;
    let wt = w.t()?;
    if rows == 1 {
        return Ok(x.matmul(&wt)?);
    }
    let out = (0..rows)
        .map(|r| x.narrow(0, r, 1)?.matmul(&wt))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&out, 0)?)
}

/// RMSNorm over the last dimension (`x * rsqrt(mean(x^2) + eps) * weight`), in f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    Ok(candle_nn::ops::rms_norm(x, weight, eps as f32)?)
}

/// SiLU.
pub fn silu(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::silu(x)?)
}

/// A tensor's values as one f32 vector (row-major).
pub fn to_f32_vec(x: &Tensor) -> Result<Vec<f32>> {
    Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

/// The rotary embedding tables of Hugging Face's default RoPE, in f32 as transformers
/// computes them: `inv_freq[i] = 1 / theta^(2i / d)`, `freqs = pos * inv_freq`,
/// `emb = cat(freqs, freqs)`.
#[derive(Debug, Clone)]
pub struct Rope {
    inv_freq: Vec<f32>,
    head_dim: usize,
}

impl Rope {
    /// RoPE of `head_dim` (even) with base `theta`.
    pub fn new(head_dim: usize, theta: f64) -> Self {
        let inv_freq = (0..head_dim / 2)
            .map(|i| {
                let exponent = (2 * i) as f32 / head_dim as f32;
                1.0 / (theta as f32).powf(exponent)
            })
            .collect();
        Rope { inv_freq, head_dim }
    }

    /// `(cos, sin)` of each position, `[positions, 1, head_dim]` (broadcast over heads).
    pub fn tables(
        &self,
        positions: &[usize],
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(positions.len() * d);
        let mut sin = Vec::with_capacity(positions.len() * d);
        for &p in positions {
            for _half in 0..2 {
                for &f in &self.inv_freq {
                    let a = p as f32 * f;
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        let shape = (positions.len(), 1, d);
        Ok((
            Tensor::from_vec(cos, shape, device)?,
            Tensor::from_vec(sin, shape, device)?,
        ))
    }
}

impl Rope {
    /// `(cos, sin)` of each position, `[positions, head_dim / 2]` in `dtype` on `device`:
    /// the tables candle's RoPE kernels take (`candle_nn::rotary_emb::rope_thd`), the same
    /// f32 angles as [`tables`](Self::tables).
    pub fn half_tables(
        &self,
        positions: &[usize],
        device: &candle_core::Device,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let shape = (positions.len(), half);
        let put = |v: Vec<f32>| -> Result<Tensor> {
            Ok(Tensor::from_vec(v, shape, device)?.to_dtype(dtype)?)
        };
        Ok((put(cos)?, put(sin)?))
    }
}

/// `x * cos + rotate_half(x) * sin` for `x` `[tokens, heads, head_dim]`, with
/// `rotate_half(x) = cat(-x2, x1)` (the non-interleaved form transformers uses).
pub fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A row's product does not depend on the rows beside it.
    #[test]
    fn linear_rows_are_batch_invariant() {
        let dev = Device::Cpu;
        let x: Vec<f32> = (0..37 * 96)
            .map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..80 * 96)
            .map(|i| ((i * 104729) % 1000) as f32 / 991.0 - 0.5)
            .collect();
        let x = Tensor::from_vec(x, (37, 96), &dev).unwrap();
        let w = Tensor::from_vec(w, (80, 96), &dev).unwrap();
        let all = to_f32_vec(&linear(&x, &w).unwrap()).unwrap();
        for r in [0, 5, 36] {
            let one = to_f32_vec(&linear(&x.narrow(0, r, 1).unwrap(), &w).unwrap()).unwrap();
            assert_eq!(one, all[r * 80..(r + 1) * 80].to_vec(), "row {r}");
        }
    }

    #[test]
    fn rope_at_position_zero_is_identity() {
        let dev = Device::Cpu;
        let rope = Rope::new(4, 10_000.0);
        let (cos, sin) = rope.tables(&[0], &dev).unwrap();
        let x = Tensor::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 4), &dev).unwrap();
        let y = to_f32_vec(&apply_rope(&x, &cos, &sin).unwrap()).unwrap();
        assert_eq!(y, vec![1., 2., 3., 4.]);
    }
}
