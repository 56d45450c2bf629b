//! Where the model's tensors come from: a Hugging Face checkpoint directory (one
//! `model.safetensors` or shards named by `model.safetensors.index.json`), or tensors built in
//! memory (random weights); and what turns a quantised checkpoint's weights back into floats
//! ([`Dequantized`]).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use flashinfer_rs::cutlass::prepare::fp8_blocks;

use super::config::Quantization;

/// The name of the block scales of fp8 weight `name` (`X.weight` -> `X.weight_scale_inv`,
/// a fused `X.gate_up_proj` -> `X.gate_up_proj_scale_inv`), as fine-grained fp8 checkpoints
/// and transformers name them.
pub fn scales_name(name: &str) -> String {
    format!("{name}{SCALES_SUFFIX}")
}

/// What [`scales_name`] appends.
pub const SCALES_SUFFIX: &str = "_scale_inv";

/// Tensors by their checkpoint names.
pub trait TensorSource {
    /// The tensor `name`, on the host, in the file's dtype.
    fn get(&self, name: &str) -> Result<Tensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
}

impl TensorSource for HashMap<String, Tensor> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.get(name)
            .cloned()
            .with_context(|| format!("missing tensor {name}"))
    }
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
}

/// A checkpoint's safetensors files, memory-mapped.
pub struct Checkpoint {
    files: MmapedSafetensors,
    names: BTreeSet<String>,
}

impl Checkpoint {
    /// Opens the safetensors of checkpoint directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = safetensors_files(dir)?;
        // SAFETY: the files are mapped read-only; a checkpoint changed under a running
        // server is outside what the server supports (as for every mmap loader).
        let files = unsafe { MmapedSafetensors::multi(&paths) }
            .with_context(|| format!("opening the safetensors of {}", dir.display()))?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Checkpoint { files, names })
    }
}

impl TensorSource for Checkpoint {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.files
            .load(name, &Device::Cpu)
            .with_context(|| format!("loading tensor {name}"))
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// The safetensors files of `dir`: the shards its index names, or `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            bail!("{} has no weight_map", index.display());
        };
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )
}

/// A source's tensors as float weights, whatever its [`Quantization`]: a fine-grained fp8
/// weight `X` (e4m3) comes back as `X` times `X_scale_inv`'s block scales, in f32 (each code
/// times its block's scale, rounded once: what transformers' `FineGrainedFP8Config(dequantize
/// = True)` loads before casting to the model's dtype); float tensors come back as they are.
///
/// Nothing quantised passes silently: an e4m3 tensor without its scales, one in a checkpoint
/// whose config names no quantisation, a `_scale_inv` beside a float tensor, or a tensor of a
/// non-float dtype (integer-packed weights) is an error naming it. candle reads e4m3
/// safetensors and converts them like any float, so without this a fp8 checkpoint would load
/// its codes as the weights.
pub struct Dequantized<'a> {
    inner: &'a dyn TensorSource,
    quantization: Quantization,
}

impl<'a> Dequantized<'a> {
    /// `inner`'s tensors as [`Quantization`] `quantization` (from the config) stores them.
    pub fn new(inner: &'a dyn TensorSource, quantization: Quantization) -> Self {
        Dequantized {
            inner,
            quantization,
        }
    }
}

impl TensorSource for Dequantized<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let t = self.inner.get(name)?;
        let scales = scales_name(name);
        match (self.quantization, t.dtype()) {
            (Quantization::Fp8Blocks { rows, cols }, DType::F8E4M3) => {
                let s = self
                    .inner
                    .get(&scales)
                    .with_context(|| format!("{name} is fp8 (e4m3) without its block scales"))?;
                dequantize_blocks(&t, &s, (rows, cols))
                    .with_context(|| format!("dequantising {name} with {scales}"))
            }
            (Quantization::None, DType::F8E4M3) => bail!(
                "{name} is fp8 (e4m3), but config.json has no quantization_config saying how \
                 it is scaled"
            ),
            (_, DType::F16 | DType::BF16 | DType::F32 | DType::F64) => {
                ensure!(
                    !self.inner.contains(&scales),
                    "{name} has block scales ({scales}) but is {:?}, not fp8 (e4m3)",
                    t.dtype()
                );
                Ok(t)
            }
            (_, other) => bail!("{name} has dtype {other:?}: not a float weight this model loads"),
        }
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
}

/// `codes` (e4m3, `[..., r, c]`) times their blocks' scales (`[..., ceil(r / rows), ceil(c /
/// cols)]`, the same leading dims; f32 or any float), in f32: element `(i, j)` of a matrix
/// is `code * scale[i / rows][j / cols]`. The last blocks of a row or column may be partial,
/// as in checkpoints whose sizes are not multiples of the block.
pub fn dequantize_blocks(codes: &Tensor, scales: &Tensor, block: (usize, usize)) -> Result<Tensor> {
    let (rows, cols) = block;
    ensure!(rows > 0 && cols > 0, "block {rows}x{cols}");
    let dims = codes.dims();
    ensure!(dims.len() >= 2, "codes of shape {dims:?}: not a matrix");
    let (r, c) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let lead = &dims[..dims.len() - 2];
    let (sr, sc) = (r.div_ceil(rows), c.div_ceil(cols));
    let want: Vec<usize> = lead.iter().copied().chain([sr, sc]).collect();
    ensure!(
        scales.dims() == want.as_slice(),
        "scales of shape {:?} for codes {dims:?} in {rows}x{cols} blocks (want {want:?})",
        scales.dims()
    );
    // Scales are read as numbers: exponent-only scales (ue8m0 bytes, as MX formats store
    // them) would be taken for their byte values.
    ensure!(
        matches!(
            scales.dtype(),
            DType::F32 | DType::BF16 | DType::F16 | DType::F64
        ),
        "scales of dtype {:?}: only float scales (weight_scale_inv as f32, bf16, f16) are read",
        scales.dtype()
    );
    let q = codes
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let s = scales
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(q.len());
    for (m, matrix) in q.chunks((r * c).max(1)).enumerate() {
        let scale = &s[m * sr * sc..(m + 1) * sr * sc];
        for (i, row) in matrix.chunks(c.max(1)).enumerate() {
            let scale_row = &scale[(i / rows) * sc..(i / rows + 1) * sc];
            out.extend(
                row.iter()
                    .enumerate()
                    .map(|(j, &v)| v * scale_row[j / cols]),
            );
        }
    }
    Ok(Tensor::from_vec(out, dims, &Device::Cpu)?)
}

/// `weights` (`[..., r, c]`, any float dtype, `r` and `c` multiples of 128) as a fine-grained
/// fp8 checkpoint holds them: e4m3 codes (an F8E4M3 tensor of the same shape) and their
/// 128x128 block scales (`[..., r / 128, c / 128]`, f32), by flashinfer-rs's
/// `prepare::fp8_blocks` (the quantiser of the block-scale layer's weights). On the host.
pub fn quantize_blocks(weights: &Tensor) -> Result<(Tensor, Tensor)> {
    let dims = weights.dims();
    ensure!(dims.len() >= 2, "weights of shape {dims:?}: not a matrix");
    let (lead, rc) = dims.split_at(dims.len() - 2);
    let (r, c) = (rc[0], rc[1]);
    let matrices: usize = lead.iter().product();
    let v = weights
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (codes, scales) = fp8_blocks(&v, matrices, r, c)?;
    let codes: Vec<f32> = codes.iter().map(|q| q.to_f32()).collect();
    let scale_dims: Vec<usize> = lead.iter().copied().chain([r / 128, c / 128]).collect();
    Ok((
        // Every code's value is an e4m3 value: the conversion is exact.
        Tensor::from_vec(codes, dims, &Device::Cpu)?.to_dtype(DType::F8E4M3)?,
        Tensor::from_vec(scales, scale_dims, &Device::Cpu)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn e4m3(v: &[f32], dims: &[usize]) -> Tensor {
        Tensor::from_vec(v.to_vec(), dims, &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F8E4M3)
            .unwrap()
    }

    fn f32s(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Each code times its own block's scale, partial blocks at the end of rows and columns
    /// included, for a matrix and for stacked experts.
    #[test]
    fn each_code_takes_its_blocks_scale() {
        // 3 x 5 codes in 2 x 2 blocks: scales 2 x 3, the last row and column of blocks partial.
        let codes: Vec<f32> = (0..15).map(|v| v as f32 - 7.0).collect();
        let scales = [1.0f32, 2.0, 4.0, 0.5, 0.25, 8.0];
        let s = Tensor::from_vec(scales.to_vec(), (2, 3), &Device::Cpu).unwrap();
        let got = f32s(&dequantize_blocks(&e4m3(&codes, &[3, 5]), &s, (2, 2)).unwrap());
        for (n, (&g, &q)) in got.iter().zip(&codes).enumerate() {
            let (i, j) = (n / 5, n % 5);
            assert_eq!(g, q * scales[(i / 2) * 3 + j / 2], "element ({i}, {j})");
        }
        // Two experts of 2 x 4 in 2 x 2 blocks: each takes its own scales.
        let codes: Vec<f32> = (0..16).map(|v| (v % 7) as f32).collect();
        let s = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], (2, 1, 2), &Device::Cpu).unwrap();
        let got = f32s(&dequantize_blocks(&e4m3(&codes, &[2, 2, 4]), &s, (2, 2)).unwrap());
        for (n, (&g, &q)) in got.iter().zip(&codes).enumerate() {
            let (e, j) = (n / 8, n % 4);
            assert_eq!(g, q * [1.0, 2.0, 3.0, 4.0][e * 2 + j / 2], "element {n}");
        }
        // Scales of the wrong shape or of a non-float dtype are refused.
        let codes = e4m3(&[0.0; 15], &[3, 5]);
        let wrong = Tensor::ones((1, 3), DType::F32, &Device::Cpu).unwrap();
        assert!(dequantize_blocks(&codes, &wrong, (2, 2)).is_err());
        let bytes = Tensor::ones((2, 3), DType::U8, &Device::Cpu).unwrap();
        assert!(dequantize_blocks(&codes, &bytes, (2, 2)).is_err());
    }

    /// What a source refuses rather than load as float weights.
    #[test]
    fn nothing_quantised_loads_as_floats() {
        let fp8 = Quantization::Fp8Blocks { rows: 2, cols: 2 };
        let mut m: HashMap<String, Tensor> = HashMap::new();
        m.insert("a.weight".into(), e4m3(&[1.0, 2.0, 3.0, 4.0], &[2, 2]));
        m.insert(
            "a.weight_scale_inv".into(),
            Tensor::new(&[[0.5f32]], &Device::Cpu).unwrap(),
        );
        m.insert("b.weight".into(), e4m3(&[1.0; 4], &[2, 2]));
        m.insert(
            "c.weight".into(),
            Tensor::ones((2, 2), DType::BF16, &Device::Cpu).unwrap(),
        );
        m.insert(
            "c.weight_scale_inv".into(),
            Tensor::new(&[[0.5f32]], &Device::Cpu).unwrap(),
        );
        m.insert(
            "d.weight".into(),
            Tensor::ones((2, 2), DType::U32, &Device::Cpu).unwrap(),
        );
        let src = Dequantized::new(&m, fp8);
        assert_eq!(f32s(&src.get("a.weight").unwrap()), [0.5, 1.0, 1.5, 2.0]);
        let err = |s: &Dequantized<'_>, n: &str| format!("{:#}", s.get(n).unwrap_err());
        assert!(err(&src, "b.weight").contains("without its block scales"));
        assert!(err(&src, "c.weight").contains("not fp8"));
        assert!(err(&src, "d.weight").contains("not a float weight"));
        let plain = Dequantized::new(&m, Quantization::None);
        assert!(err(&plain, "a.weight").contains("no quantization_config"));
    }
}
