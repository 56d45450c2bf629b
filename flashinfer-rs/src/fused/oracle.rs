//! A CPU reference of the fused MoE, to check the kernels against: routing from the
//! [`crate::routing::oracle`], then per routed (token, expert) GEMM1, the activation, GEMM2 and
//! the weighted sum, all in f32 on dequantised weights. It follows upstream's test reference
//! (`run_moe_dequant` in tests/moe/test_trtllm_gen_fused_moe.py of FlashInfer 0.6.13), whose
//! gated GEMM1 puts the linear half first: `act(x2) * x1` with `x1 = rows [0, I)`.
//!
//! Also here: the quantisers that make test data (fp8 per tensor, DeepSeek 128-blocks, MX fp8,
//! nvfp4, mxfp4) and upstream's accuracy criterion.
//!
//! Every function checks its shape rules (block multiples, lengths that match the stated
//! dimensions, with checked arithmetic) and answers a broken one with
//! [`Error::InvalidArgument`] naming it; [`moe`] refuses the activations it does not model
//! (`SwigluBias`, `SwigluStep`) the same way.

use super::elements::{e2m1_from_f32, E2m1x2, E4m3, Ue8m0, E2M1_MAX, E4M3_MAX};
use super::types::Activation;
use crate::alloc::product;
use crate::error::{ensure, ensure_len, ensure_nonzero, Error, Result};

/// Dequantised expert weights of the local experts, row-major f32.
#[derive(Debug, Clone)]
pub struct ExpertWeights {
    /// `[local_experts, M1, hidden]` (M1 = 2I when gated: linear rows first, then gate rows).
    pub w1: Vec<f32>,
    /// `[local_experts, hidden, I]`.
    pub w2: Vec<f32>,
}

/// How the kernel rounds the activation between the GEMMs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ActivationRounding {
    /// bf16 (bf16, DeepSeek fp8 and bf16-activation fp4 kernels).
    Bf16,
    /// fp8 e4m3 with one scale for the whole call (`scale` multiplies before rounding).
    Fp8PerTensor {
        /// The global scale, `448 / amax` of the activations.
        scale: f32,
    },
    /// As `Fp8PerTensor`, after GEMM 1's outputs are rounded to bf16: the CUTLASS fp8
    /// per-tensor runner on Hopper (and this crate's decode kernels for it) writes GEMM 1's
    /// output as bf16 and computes the activation from it.
    Fp8PerTensorBf16Gemm1 {
        /// As for `Fp8PerTensor`.
        scale: f32,
    },
    /// DeepSeek fp8 block scale on Hopper (FlashInfer's CUTLASS `BlockScaleFC1`/`FC2`):
    /// GEMM 1's outputs rounded to bf16, the activation computed from them and rounded to
    /// bf16, then quantised per 128 values of a row ([`round_fp8_groups`]).
    Fp8Groups128,
    /// MX fp8: e4m3 with a ue8m0 scale per 32 consecutive values of a row (MxFp8 kernels).
    MxFp8,
    /// nvfp4: e2m1 with an e4m3 scale per 16 values and one global scale (nvfp4 kernels).
    Nvfp4 {
        /// The global scale, `448 * 6 / amax` of the activations.
        global_scale: f32,
    },
}

/// One reference problem.
#[derive(Debug, Clone, Copy)]
pub struct ReferenceProblem {
    /// Tokens.
    pub num_tokens: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Intermediate size.
    pub intermediate_size: usize,
    /// Experts per token.
    pub top_k: usize,
    /// First local expert.
    pub local_expert_offset: usize,
    /// Local experts (routed experts outside `[offset, offset + count)` contribute nothing).
    pub local_num_experts: usize,
    /// Expert activation (SwiGLU, GeGLU, ReLU² or Identity).
    pub activation: Activation,
    /// Routing weight applied to GEMM1's input instead of the output (Llama 4).
    pub routing_scales_on_input: bool,
}

impl ReferenceProblem {
    /// Index among the local experts of global expert `e`, if it is local.
    fn local_index(&self, e: usize) -> Option<usize> {
        e.checked_sub(self.local_expert_offset)
            .filter(|&l| l < self.local_num_experts)
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn gelu(x: f32) -> f32 {
    // Exact (erf) GELU, as torch's F.gelu default.
    0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2))
}

/// erf with an absolute error below 1.5e-7 (Abramowitz-Stegun 7.1.26).
fn erf(x: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let y = 1.0
        - (((((1.061_405_4 * t - 1.453_152_1) * t) + 1.421_413_7) * t - 0.284_496_73) * t
            + 0.254_829_6)
            * t
            * (-x * x).exp();
    if x >= 0.0 {
        y
    } else {
        -y
    }
}

fn round_bf16(x: f32) -> f32 {
    half::bf16::from_f32(x).to_f32()
}

/// The activation of one routed row: `gemm1` holds M1 values.
fn activate(gemm1: &[f32], i: usize, act: Activation) -> Result<Vec<f32>> {
    Ok(match act {
        Activation::Swiglu => (0..i).map(|j| silu(gemm1[i + j]) * gemm1[j]).collect(),
        Activation::Geglu => (0..i).map(|j| gelu(gemm1[i + j]) * gemm1[j]).collect(),
        Activation::Relu2 => gemm1[..i].iter().map(|&x| x.max(0.0).powi(2)).collect(),
        Activation::Identity => gemm1[..i].to_vec(),
        Activation::Relu => gemm1[..i].iter().map(|&x| x.max(0.0)).collect(),
        Activation::Silu => gemm1[..i].iter().map(|&x| silu(x)).collect(),
        Activation::Gelu => gemm1[..i].iter().map(|&x| gelu(x)).collect(),
        other => {
            return Err(Error::invalid(
                "activation",
                format!("the reference does not model {other:?}"),
            ))
        }
    })
}

/// Checks that `hidden`, `ids`, `weights` and `w` hold what problem `p` reads, and every
/// size product fits; returns GEMM1's rows per expert (M1).
fn check_problem(
    p: &ReferenceProblem,
    hidden: &[f32],
    ids: &[usize],
    weights: &[f32],
    w: &ExpertWeights,
) -> Result<usize> {
    let (h, i, e) = (p.hidden_size, p.intermediate_size, p.local_num_experts);
    // Zero sizes are refused: the loops run over tokens and their top-k, and an empty row
    // would let a huge token count pass every length check.
    ensure_nonzero(&[
        ("hidden_size", h),
        ("intermediate_size", i),
        ("top_k", p.top_k),
    ])?;
    let m1 = if p.activation.is_gated() {
        product("intermediate_size", &[i, 2])?
    } else {
        i
    };
    let need = [
        (
            "hidden",
            hidden.len(),
            product("hidden", &[p.num_tokens, h])?,
        ),
        ("ids", ids.len(), product("ids", &[p.num_tokens, p.top_k])?),
        (
            "weights",
            weights.len(),
            product("weights", &[p.num_tokens, p.top_k])?,
        ),
        ("w1", w.w1.len(), product("w1", &[e, m1, h])?),
        ("w2", w.w2.len(), product("w2", &[e, h, i])?),
    ];
    for (arg, have, want) in need {
        ensure(have >= want, arg, || {
            format!("holds {have} values, needs {want}")
        })?;
    }
    Ok(m1)
}

fn matvec(w: &[f32], rows: usize, cols: usize, x: &[f32]) -> Vec<f32> {
    (0..rows)
        .map(|r| {
            let row = &w[r * cols..(r + 1) * cols];
            row.iter().zip(x).map(|(a, b)| a * b).sum()
        })
        .collect()
}

/// The activations (after the activation, before rounding) of every routed (token, k) that
/// hits a local expert: what a per-tensor quantiser calibrates on.
pub fn activations(
    p: &ReferenceProblem,
    hidden: &[f32],
    ids: &[usize],
    weights: &[f32],
    w: &ExpertWeights,
) -> Result<Vec<Vec<f32>>> {
    activations_of(p, hidden, ids, weights, w, false)
}

/// [`activations`], with GEMM 1's outputs rounded to bf16 first when `round_gemm1`.
fn activations_of(
    p: &ReferenceProblem,
    hidden: &[f32],
    ids: &[usize],
    weights: &[f32],
    w: &ExpertWeights,
    round_gemm1: bool,
) -> Result<Vec<Vec<f32>>> {
    let m1 = check_problem(p, hidden, ids, weights, w)?;
    let rows = per_token(p.num_tokens, |t| {
        token_activations(p, hidden, ids, weights, w, m1, t, round_gemm1)
    })?;
    Ok(rows.into_iter().flatten().map(|(_, _, act)| act).collect())
}

/// Token `t`'s activations on its local experts, in its top-k order, each with its rank k and
/// local expert index (the problem checked by [`check_problem`], whose `m1` this takes).
#[allow(clippy::too_many_arguments)]
fn token_activations(
    p: &ReferenceProblem,
    hidden: &[f32],
    ids: &[usize],
    weights: &[f32],
    w: &ExpertWeights,
    m1: usize,
    t: usize,
    round_gemm1: bool,
) -> Result<Vec<(usize, usize, Vec<f32>)>> {
    let (h, i) = (p.hidden_size, p.intermediate_size);
    let mut out = Vec::new();
    for k in 0..p.top_k {
        let e = ids[t * p.top_k + k];
        let Some(le) = p.local_index(e) else {
            continue;
        };
        let mut x: Vec<f32> = hidden[t * h..(t + 1) * h].to_vec();
        if p.routing_scales_on_input {
            let s = weights[t * p.top_k + k];
            x.iter_mut().for_each(|v| *v *= s);
        }
        let mut g1 = matvec(&w.w1[le * m1 * h..(le + 1) * m1 * h], m1, h, &x);
        if round_gemm1 {
            g1.iter_mut().for_each(|v| *v = round_bf16(*v));
        }
        out.push((k, le, activate(&g1, i, p.activation)?));
    }
    Ok(out)
}

/// `row(t)` for every token, in token order, on the machine's threads (a reference of a
/// 300-token Qwen3-sized layer is 23 GFLOP: seconds of one core, while a GPU test's GPU
/// waits). Each token's row is computed whole by one thread, as it would be alone, so the
/// result's bits do not depend on the thread count.
fn per_token<T: Send>(
    num_tokens: usize,
    row: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, num_tokens.max(1));
    let chunk = num_tokens.div_ceil(threads);
    std::thread::scope(|s| {
        let row = &row;
        let handles: Vec<_> = (0..threads)
            .map(|c| {
                let tokens = (c * chunk).min(num_tokens)..((c + 1) * chunk).min(num_tokens);
                s.spawn(move || tokens.map(row).collect::<Result<Vec<T>>>())
            })
            .collect();
        let mut out = Vec::with_capacity(num_tokens);
        for handle in handles {
            let rows = handle
                .join()
                .map_err(|_| Error::Internal("a reference thread panicked".into()))??;
            out.extend(rows);
        }
        Ok(out)
    })
}

/// The MoE output `[num_tokens, hidden]` for routed `ids`/`weights` (`[num_tokens, top_k]`,
/// global expert ids), dequantised `hidden` `[num_tokens, hidden]` and weights.
pub fn moe(
    p: &ReferenceProblem,
    hidden: &[f32],
    ids: &[usize],
    weights: &[f32],
    w: &ExpertWeights,
    rounding: ActivationRounding,
) -> Result<Vec<f32>> {
    let (h, i) = (p.hidden_size, p.intermediate_size);
    let round_gemm1 = matches!(
        rounding,
        ActivationRounding::Fp8PerTensorBf16Gemm1 { .. } | ActivationRounding::Fp8Groups128
    );
    let m1 = check_problem(p, hidden, ids, weights, w)?;
    let rows = per_token(p.num_tokens, |t| {
        let mut out = vec![0f32; h];
        for (k, le, act) in token_activations(p, hidden, ids, weights, w, m1, t, round_gemm1)? {
            let a: Vec<f32> = match rounding {
                ActivationRounding::Bf16 => act.into_iter().map(round_bf16).collect(),
                ActivationRounding::Fp8PerTensor { scale }
                | ActivationRounding::Fp8PerTensorBf16Gemm1 { scale } => act
                    .into_iter()
                    .map(|v| E4m3::from_f32(v * scale).to_f32() / scale)
                    .collect(),
                ActivationRounding::Fp8Groups128 => {
                    let act: Vec<f32> = act.into_iter().map(round_bf16).collect();
                    round_fp8_groups(&act)
                }
                ActivationRounding::MxFp8 => {
                    let (q, sc) = quantize_mxfp8(&act, 1, i)?;
                    dequantize_mxfp8(&q, &sc)?
                }
                ActivationRounding::Nvfp4 { global_scale } => {
                    let (q, sc) = quantize_nvfp4(&act, 1, i, global_scale)?;
                    dequantize_nvfp4(&q, &sc, global_scale)?
                }
            };
            let y = matvec(&w.w2[le * h * i..(le + 1) * h * i], h, i, &a);
            let s = if p.routing_scales_on_input {
                1.0
            } else {
                weights[t * p.top_k + k]
            };
            for (o, v) in out.iter_mut().zip(y) {
                *o += s * v;
            }
        }
        Ok(out)
    })?;
    Ok(rows.concat())
}

/// `448 / amax(x)`: the per-tensor fp8 scale upstream's tests calibrate.
pub fn fp8_global_scale(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 {
        E4M3_MAX / amax
    } else {
        1.0
    }
}

/// Per-tensor fp8: `(e4m3(x * scale), scale)`; dequantise with `q / scale`.
pub fn quantize_fp8_per_tensor(x: &[f32]) -> (Vec<E4m3>, f32) {
    let s = fp8_global_scale(x);
    (x.iter().map(|&v| E4m3::from_f32(v * s)).collect(), s)
}

/// DeepSeek fp8 weights: `[m, k]` in 128x128 blocks, each scaled by `amax / 448`; returns the
/// values and the `[m/128, k/128]` scales (dequantise: `q * scale`).
pub fn quantize_fp8_blocks(x: &[f32], m: usize, k: usize) -> Result<(Vec<E4m3>, Vec<f32>)> {
    ensure(
        m > 0 && k > 0 && m.is_multiple_of(128) && k.is_multiple_of(128),
        "x",
        || format!("[{m}, {k}] is not made of 128x128 blocks"),
    )?;
    ensure_len("x", x.len(), product("x", &[m, k])?, || {
        format!("[{m}, {k}]")
    })?;
    let (mb, kb) = (m / 128, k / 128);
    let mut scales = vec![0f32; mb * kb];
    for r in 0..m {
        for c in 0..k {
            let s = &mut scales[(r / 128) * kb + c / 128];
            *s = s.max(x[r * k + c].abs() / E4M3_MAX);
        }
    }
    scales.iter_mut().for_each(|s| {
        if *s == 0.0 {
            *s = 1.0
        }
    });
    let q = (0..m * k)
        .map(|idx| {
            let (r, c) = (idx / k, idx % k);
            E4m3::from_f32(x[idx] / scales[(r / 128) * kb + c / 128])
        })
        .collect();
    Ok((q, scales))
}

/// The values of `x` after FlashInfer's fp8 block-scale GEMMs on Hopper quantise them
/// (`scale_1x128_kernel`): each run of 128 (the last may be shorter; a row of a multiple of
/// 128 is whole runs) to `e4m3(v * s)` with `s = 448 / amax` of the run (1 if it is all
/// zero; at most `f32::MAX`, as flashinfer-sys's patch 0013 clamps it, so that a run of
/// magnitudes below 1.3e-36 does not turn its zeros into NaN), read back as the code times
/// `1 / s`. Where [`quantize_fp8_activation_blocks`]
/// follows transformers (`v / (amax / 448)`), this is the kernel's arithmetic: the two can
/// differ by one e4m3 step where `v * s` and `v / (1 / s)` round apart.
pub fn round_fp8_groups(x: &[f32]) -> Vec<f32> {
    x.chunks(128)
        .flat_map(|run| {
            let amax = run.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax != 0.0 {
                (E4M3_MAX / amax).min(f32::MAX)
            } else {
                1.0
            };
            let inv = 1.0 / s;
            run.iter()
                .map(move |&v| E4m3::from_f32(v * s).to_f32() * inv)
        })
        .collect()
}

/// The values of a DeepSeek fp8 `[m, k]` matrix: `q * scale` of its 128x128 block.
pub fn dequantize_fp8_blocks(q: &[E4m3], scales: &[f32], m: usize, k: usize) -> Result<Vec<f32>> {
    ensure(m.is_multiple_of(128) && k.is_multiple_of(128), "q", || {
        format!("[{m}, {k}] is not made of 128x128 blocks")
    })?;
    ensure_len("q", q.len(), product("q", &[m, k])?, || {
        format!("[{m}, {k}]")
    })?;
    ensure_len("scales", scales.len(), (m / 128) * (k / 128), || {
        format!("one per 128x128 block of [{m}, {k}]")
    })?;
    let kb = k / 128;
    Ok(q.iter()
        .enumerate()
        .map(|(idx, v)| v.to_f32() * scales[(idx / k / 128) * kb + (idx % k) / 128])
        .collect())
}

/// DeepSeek fp8 activations: each token's 128-element blocks scaled by `amax / 448`; returns
/// the values and the scales transposed to `[hidden/128, num_tokens]` as the kernel takes them.
pub fn quantize_fp8_activation_blocks(
    x: &[f32],
    tokens: usize,
    hidden: usize,
) -> Result<(Vec<E4m3>, Vec<f32>)> {
    ensure(hidden > 0 && hidden.is_multiple_of(128), "hidden", || {
        format!("{hidden} is not made of 128-element blocks")
    })?;
    ensure_len("x", x.len(), product("x", &[tokens, hidden])?, || {
        format!("[tokens {tokens}, hidden {hidden}]")
    })?;
    let hb = hidden / 128;
    let mut scales_t = vec![1f32; hb * tokens];
    let mut q = Vec::with_capacity(x.len());
    for t in 0..tokens {
        for b in 0..hb {
            let blk = &x[t * hidden + b * 128..t * hidden + (b + 1) * 128];
            let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
            let s = if amax > 0.0 { amax / E4M3_MAX } else { 1.0 };
            scales_t[b * tokens + t] = s;
            q.extend(blk.iter().map(|&v| E4m3::from_f32(v / s)));
        }
    }
    Ok((q, scales_t))
}

/// mxfp4: a row-major `[rows, cols]` matrix in 32-element blocks, each scaled by the power of
/// two `>= amax / 6` (as upstream's ue8m0 quantiser rounds); returns packed values
/// `[rows, cols / 2]` and linear scales `[rows, cols / 32]`.
pub fn quantize_mxfp4(x: &[f32], rows: usize, cols: usize) -> Result<(Vec<E2m1x2>, Vec<Ue8m0>)> {
    blocks_of(x, rows, cols, 32)?;
    let mut scales = Vec::with_capacity(rows * cols / 32);
    let mut q = Vec::with_capacity(rows * cols / 2);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = Ue8m0::ceil_from_f32(amax / E2M1_MAX);
        let inv = 1.0 / s.to_f32();
        scales.push(s);
        for pair in blk.chunks_exact(2) {
            q.push(E2m1x2::pack(
                e2m1_from_f32(pair[0] * inv),
                e2m1_from_f32(pair[1] * inv),
            ));
        }
    }
    Ok((q, scales))
}

/// MX fp8: a row-major `[rows, cols]` matrix in 32-element blocks, each scaled by the power of
/// two `>= amax / 448`; returns e4m3 values and linear scales `[rows, cols / 32]`.
pub fn quantize_mxfp8(x: &[f32], rows: usize, cols: usize) -> Result<(Vec<E4m3>, Vec<Ue8m0>)> {
    blocks_of(x, rows, cols, 32)?;
    let mut scales = Vec::with_capacity(rows * cols / 32);
    let mut q = Vec::with_capacity(rows * cols);
    for blk in x.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = Ue8m0::ceil_from_f32(amax / E4M3_MAX);
        let inv = 1.0 / s.to_f32();
        scales.push(s);
        q.extend(blk.iter().map(|&v| E4m3::from_f32(v * inv)));
    }
    Ok((q, scales))
}

/// Checks that `x` is a `[rows, cols]` matrix of whole `block`-element blocks per row.
fn blocks_of(x: &[f32], rows: usize, cols: usize, block: usize) -> Result<()> {
    ensure(cols.is_multiple_of(block), "cols", || {
        format!("{cols} is not made of {block}-element blocks")
    })?;
    ensure_len("x", x.len(), product("x", &[rows, cols])?, || {
        format!("[{rows}, {cols}]")
    })
}

/// The values an MX fp8 matrix encodes (one scale per 32 consecutive values).
pub fn dequantize_mxfp8(q: &[E4m3], scales: &[Ue8m0]) -> Result<Vec<f32>> {
    ensure_len("scales", scales.len(), q.len().div_ceil(32), || {
        "one per 32 values".into()
    })?;
    ensure(q.len().is_multiple_of(32), "q", || {
        "one scale per 32 values".into()
    })?;
    Ok(q.iter()
        .enumerate()
        .map(|(i, v)| v.to_f32() * scales[i / 32].to_f32())
        .collect())
}

/// `448 * 6 / amax(x)`: the nvfp4 global scale upstream's tests calibrate.
pub fn nvfp4_global_scale(x: &[f32]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    if amax > 0.0 {
        E4M3_MAX * E2M1_MAX / amax
    } else {
        1.0
    }
}

/// nvfp4: a row-major `[rows, cols]` matrix in 16-element blocks with e4m3 block scales
/// `e4m3(amax / 6 * global_scale)` and values `e2m1(x * global_scale / scale)`; returns packed
/// values `[rows, cols / 2]` and linear scales `[rows, cols / 16]`. Dequantise with
/// [`dequantize_nvfp4`].
pub fn quantize_nvfp4(
    x: &[f32],
    rows: usize,
    cols: usize,
    global_scale: f32,
) -> Result<(Vec<E2m1x2>, Vec<E4m3>)> {
    blocks_of(x, rows, cols, 16)?;
    let mut scales = Vec::with_capacity(rows * cols / 16);
    let mut q = Vec::with_capacity(rows * cols / 2);
    for blk in x.chunks_exact(16) {
        let amax = blk.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = E4m3::from_f32(amax / E2M1_MAX * global_scale);
        let inv = if s.to_f32() > 0.0 {
            global_scale / s.to_f32()
        } else {
            0.0
        };
        scales.push(s);
        for pair in blk.chunks_exact(2) {
            q.push(E2m1x2::pack(
                e2m1_from_f32(pair[0] * inv),
                e2m1_from_f32(pair[1] * inv),
            ));
        }
    }
    Ok((q, scales))
}

/// The values an nvfp4 matrix encodes: `e2m1 * scale / global_scale`.
pub fn dequantize_nvfp4(q: &[E2m1x2], scales: &[E4m3], global_scale: f32) -> Result<Vec<f32>> {
    ensure_len("scales", scales.len(), q.len().div_ceil(8), || {
        "one per 16 values".into()
    })?;
    ensure(q.len().is_multiple_of(8), "q", || {
        "one scale per 16 values".into()
    })?;
    let mut out = Vec::with_capacity(q.len() * 2);
    for (i, pair) in q.iter().enumerate() {
        let s = scales[i / 8].to_f32() / global_scale;
        let [a, b] = pair.to_f32();
        out.push(a * s);
        out.push(b * s);
    }
    Ok(out)
}

/// The values an mxfp4 matrix encodes (`[rows, cols]` f32).
pub fn dequantize_mxfp4(q: &[E2m1x2], scales: &[Ue8m0], cols: usize) -> Result<Vec<f32>> {
    let values = product("q", &[q.len(), 2])?;
    ensure(
        cols > 0 && cols.is_multiple_of(32) && values.is_multiple_of(cols),
        "cols",
        || format!("{values} values are not whole rows of {cols} (a multiple of 32)"),
    )?;
    ensure_len("scales", scales.len(), values / 32, || {
        "one per 32 values".into()
    })?;
    let mut out = Vec::with_capacity(q.len() * 2);
    // Rows are whole blocks, so the flat index alone finds the block.
    for (i, pair) in q.iter().enumerate() {
        let s = scales[2 * i / 32].to_f32();
        let [a, b] = pair.to_f32();
        out.push(a * s);
        out.push(b * s);
    }
    Ok(out)
}

/// The values of DeepSeek fp8 activations `[tokens, hidden]` whose scales are transposed
/// `[hidden/128, tokens]` (as [`quantize_fp8_activation_blocks`] returns them).
pub fn dequantize_fp8_activation_blocks(
    q: &[E4m3],
    scales_t: &[f32],
    tokens: usize,
    hidden: usize,
) -> Result<Vec<f32>> {
    ensure(hidden.is_multiple_of(128), "hidden", || {
        format!("{hidden} is not made of 128-element blocks")
    })?;
    ensure_len("q", q.len(), product("q", &[tokens, hidden])?, || {
        format!("[tokens {tokens}, hidden {hidden}]")
    })?;
    ensure_len("scales_t", scales_t.len(), hidden / 128 * tokens, || {
        format!("[hidden {hidden} / 128, tokens {tokens}]")
    })?;
    Ok(q.iter()
        .enumerate()
        .map(|(idx, v)| v.to_f32() * scales_t[(idx % hidden / 128) * tokens + idx / hidden])
        .collect())
}

/// Upstream's criterion (`check_accuracy`): at least `percent` of the elements satisfy
/// `|reference - actual| <= atol + rtol * |actual|`, and both are finite. Returns the matched
/// fraction, or why it failed.
pub fn check_accuracy(
    reference: &[f32],
    actual: &[f32],
    atol: f32,
    rtol: f32,
    percent: f32,
) -> Result<f32, String> {
    if reference.len() != actual.len() {
        return Err(format!("length {} vs {}", reference.len(), actual.len()));
    }
    if let Some(i) = reference.iter().position(|v| !v.is_finite()) {
        return Err(format!("reference[{i}] is not finite"));
    }
    if let Some(i) = actual.iter().position(|v| !v.is_finite()) {
        return Err(format!("actual[{i}] is not finite"));
    }
    let close = reference
        .iter()
        .zip(actual)
        .filter(|(r, a)| (*r - *a).abs() <= atol + rtol * a.abs())
        .count();
    let frac = close as f32 / reference.len().max(1) as f32;
    if frac >= percent {
        Ok(frac)
    } else {
        Err(format!(
            "only {:.4} of {} elements within atol {atol} + rtol {rtol} (need {percent})",
            frac,
            reference.len()
        ))
    }
}

#[cfg(test)]
mod tests;
