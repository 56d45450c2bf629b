//! Weight preparation for [`CutlassMoe`](super::CutlassMoe): GEMM 1's weights from the layouts
//! checkpoints and other servers keep them in, and fp8 weights from bf16 ones (on the host, or
//! on the GPU where the bf16 weights already are).
//!
//! The layer reads `fc1` as `[experts, 2 * intermediate, hidden]` with each expert's linear
//! (up) rows first, then its gate rows (SwiGLU computes `silu(gate) * up`), and `fc2` as
//! `[experts, hidden, intermediate]`, which is the checkpoints' `down_proj` stacked as is.
//! Hugging Face checkpoints keep `gate_proj` and `up_proj` apart (`[intermediate, hidden]`
//! each); vLLM and SGLang fuse them as `w13` with the gate rows first.
//!
//! fp8 per-tensor layers ([`CutlassMoe::new_fp8`](super::CutlassMoe::new_fp8)) take e4m3
//! weights with one scale per expert and GEMM: [`fp8_per_expert`] quantises bf16 (or f32)
//! weights so ([`fp8_per_expert_on_device`] bf16 weights on the GPU), and
//! [`fp8_shared_scale`] builds `fc1` from fp8 checkpoints that scale `gate_proj` and
//! `up_proj` apart.
//!
//! fp8 block-scale layers ([`CutlassMoe::new_fp8_blocks`](super::CutlassMoe::new_fp8_blocks))
//! take e4m3 weights with one scale per 128x128 block: [`fp8_blocks`] quantises bf16 (or f32)
//! weights so on the host, [`fp8_blocks_on_device`] bf16 weights already on the GPU.
//! DeepSeek-V3's checkpoints ship them (`weight` e4m3 `[out, in]` and `weight_scale_inv` f32
//! `[out / 128, in / 128]` per projection): `fc1` is
//! [`fc1_from_gate_up`] of the stacked `gate_proj` and `up_proj` codes, and its scales the same
//! function of their `weight_scale_inv` (`[experts, intermediate / 128, hidden / 128]` each);
//! `fc2` and its scales are `down_proj`'s stacked as they are.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView};
use flashinfer_sys as sys;
use half::bf16;

use crate::alloc;
use crate::error::{ensure, ensure_nonzero, Error, Result};
use crate::fused::elements::E4M3_MAX;
use crate::fused::E4m3;
use crate::launch::Launch;

/// Quantises `weights` (`experts` equal blocks, stacked) to e4m3 with one scale per block,
/// `amax / 448` (1 for an all-zero block, at least the smallest positive f32), rounding to
/// nearest even: the codes and the scales ([`CutlassFp8Scales`](super::CutlassFp8Scales)'
/// `fc1_weights` or `fc2_weights`). Refuses NaN and infinite weights. The experts are
/// quantised on all the host's cores (a model's experts are tens of billions of values);
/// [`fp8_per_expert_on_device`] does the same on the GPU.
pub fn fp8_per_expert<T: Copy + Into<f32> + Sync>(
    weights: &[T],
    experts: usize,
) -> Result<(Vec<E4m3>, Vec<f32>)> {
    expert_len(weights.len(), experts)?;
    quantise_experts(weights, experts, 1, |w, codes, scales| {
        let scale = scale_of(amax(w)?);
        scales[0] = scale;
        for (c, &x) in codes.iter_mut().zip(w) {
            *c = E4m3::from_f32(x.into() / scale);
        }
        Ok(())
    })
}

/// Quantises `weights` (`experts` matrices `[rows, cols]`, stacked) to e4m3 in 128x128 blocks,
/// each scaled by its `amax / 448` (1 for an all-zero block, at least the smallest positive
/// f32), rounding to nearest even: the codes and the scales `[experts, rows / 128, cols / 128]`
/// as DeepSeek-V3's checkpoints keep them (`weight_scale_inv`: a weight is its code times its
/// block's scale), which [`CutlassBlockScales`](super::CutlassBlockScales) takes (`fc1` from
/// `[experts, 2 * intermediate, hidden]`, `fc2` from `[experts, hidden, intermediate]`).
/// `rows` and `cols` must be multiples of 128. Refuses NaN and infinite weights; the experts
/// are quantised on all the host's cores. [`fp8_blocks_on_device`] does the same on the GPU.
pub fn fp8_blocks<T: Copy + Into<f32> + Sync>(
    weights: &[T],
    experts: usize,
    rows: usize,
    cols: usize,
) -> Result<(Vec<E4m3>, Vec<f32>)> {
    let (row_blocks, col_blocks) = block_grid(weights.len(), experts, rows, cols)?;
    quantise_experts(
        weights,
        experts,
        row_blocks * col_blocks,
        |w, codes, scales| {
            for (b, scale) in scales.iter_mut().enumerate() {
                let (r0, c0) = ((b / col_blocks) * BLOCK, (b % col_blocks) * BLOCK);
                let block_rows = || (r0..r0 + BLOCK).map(|r| r * cols + c0..r * cols + c0 + BLOCK);
                let mut m = 0f32;
                for span in block_rows() {
                    m = m.max(amax(&w[span])?);
                }
                *scale = scale_of(m);
                for span in block_rows() {
                    for (c, &x) in codes[span.clone()].iter_mut().zip(&w[span]) {
                        *c = E4m3::from_f32(x.into() / *scale);
                    }
                }
            }
            Ok(())
        },
    )
}

/// [`fp8_blocks`] on the GPU, bit for bit (flashinfer-sys's `fi_quantize_fp8_blocks`): bf16
/// `weights` (`experts` matrices `[rows, cols]`, stacked, on `stream`'s device) to e4m3 codes
/// and f32 block scales in new buffers on `stream`, each weight read once (no copy to the
/// host and back). Synchronises `stream` once, at the end, to report NaN or infinite weights
/// ([`Error::InvalidArgument`]), as [`fp8_blocks`] refuses them: a load-time call, not a
/// per-step one. Sizes are checked before any allocation; [`Error::KernelsNotBuilt`] in a
/// build without kernels.
pub fn fp8_blocks_on_device(
    stream: &Arc<CudaStream>,
    weights: &CudaView<'_, bf16>,
    experts: usize,
    rows: usize,
    cols: usize,
) -> Result<(CudaSlice<E4m3>, CudaSlice<f32>)> {
    let (row_blocks, col_blocks) = block_grid(weights.len(), experts, rows, cols)?;
    let dims = (
        i64_of("experts", experts)?,
        i64_of("rows", rows)?,
        i64_of("cols", cols)?,
    );
    quantise_on_device(
        stream,
        weights,
        experts * row_blocks * col_blocks,
        |w, c, s, flag, st| {
            // SAFETY: the launch's guarantees; codes hold every weight, scales every block
            // (`block_grid` checked weights' length against the dimensions), the flag one i32.
            unsafe { sys::fi_quantize_fp8_blocks(w, dims.0, dims.1, dims.2, c, s, flag, st) }
        },
    )
}

/// [`fp8_per_expert`] on the GPU, bit for bit (flashinfer-sys's `fi_quantize_fp8_per_expert`):
/// bf16 `weights` (`experts` equal parts, stacked, on `stream`'s device; each a multiple of 8
/// values, at most 65535 experts) to e4m3 codes in a new buffer on `stream`, and the scales,
/// which [`CutlassFp8Scales`](super::CutlassFp8Scales) takes on the host. Each weight is read
/// twice (the expert's amax, then its codes). Waits for `stream` at the end, reading back the
/// non-finite flag (NaN or infinite weights are refused) and then the scales; sizes are
/// checked before any allocation; [`Error::KernelsNotBuilt`] in a build without kernels.
pub fn fp8_per_expert_on_device(
    stream: &Arc<CudaStream>,
    weights: &CudaView<'_, bf16>,
    experts: usize,
) -> Result<(CudaSlice<E4m3>, Vec<f32>)> {
    let per_expert = expert_len(weights.len(), experts)?;
    ensure(experts <= 65535, "experts", || {
        format!("{experts}: the GPU quantiser takes at most 65535 (a grid dimension)")
    })?;
    ensure(per_expert.is_multiple_of(8), "weights", || {
        format!("{per_expert} values per expert: the GPU quantiser takes multiples of 8")
    })?;
    let dims = (i64_of("experts", experts)?, i64_of("weights", per_expert)?);
    let (codes, scales) = quantise_on_device(stream, weights, experts, |w, c, s, flag, st| {
        // SAFETY: the launch's guarantees; codes hold every weight, scales every expert
        // (`expert_len` checked weights' length), the flag one i32.
        unsafe { sys::fi_quantize_fp8_per_expert(w, dims.0, dims.1, c, s, flag, st) }
    })?;
    Ok((codes, stream.clone_dtoh(&scales)?))
}

/// The C call of a GPU quantiser: `weights` into new codes (one per weight) and `scales_len`
/// scales on `stream` by `call(weights, codes, scales, nonfinite, stream)`, then the
/// non-finite flag read back (the one synchronisation).
fn quantise_on_device<F>(
    stream: &Arc<CudaStream>,
    weights: &CudaView<'_, bf16>,
    scales_len: usize,
    call: F,
) -> Result<(CudaSlice<E4m3>, CudaSlice<f32>)>
where
    F: FnOnce(*const c_void, *mut c_void, *mut f32, *mut i32, *mut c_void) -> sys::fi_status,
{
    // SAFETY: uninitialised device memory, which the C call writes whole before anything reads
    // it (every code and every scale, and the flag, which it zeroes first); on any error the
    // buffers are dropped unread. Zeroing them here would write the codes' bytes twice.
    let (mut codes, mut scales, mut nonfinite) = unsafe {
        (
            stream.alloc::<E4m3>(weights.len())?,
            stream.alloc::<f32>(scales_len)?,
            stream.alloc::<i32>(1)?,
        )
    };
    let mut l = Launch::new(stream);
    let w = l.input("weights", weights);
    let c = l.output("codes", &mut codes);
    let s = l.output("scales", &mut scales);
    let flag = l.output("nonfinite", &mut nonfinite);
    l.call(|p| call(p.ro(w), p.rw(c), p.rw(s), p.rw(flag), p.stream()))?;
    if stream.clone_dtoh(&nonfinite)?[0] != 0 {
        return Err(Error::invalid(
            "weights",
            "holds NaN or infinity: fp8 has no scale for it",
        ));
    }
    Ok((codes, scales))
}

/// `v` as the C ABI's i64, or an error naming `name`.
fn i64_of(name: &'static str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid(name, format!("{v} does not fit in i64")))
}

/// The values per expert of `len` values split into `experts` equal parts: an error unless
/// both are positive and the split is exact.
fn expert_len(len: usize, experts: usize) -> Result<usize> {
    ensure_nonzero(&[("experts", experts), ("weights", len)])?;
    ensure(len.is_multiple_of(experts), "weights", || {
        format!("{len} elements do not split into {experts} experts")
    })?;
    Ok(len / experts)
}

/// The side of a block-scale layer's weight blocks and of its activation groups.
const BLOCK: usize = 128;

/// The blocks along the rows and the columns of `experts` matrices `[rows, cols]` held in `len`
/// values: an error unless every size is positive, `rows` and `cols` multiples of 128 and
/// `len` their product.
fn block_grid(len: usize, experts: usize, rows: usize, cols: usize) -> Result<(usize, usize)> {
    ensure_nonzero(&[("experts", experts), ("rows", rows), ("cols", cols)])?;
    ensure(
        rows.is_multiple_of(BLOCK) && cols.is_multiple_of(BLOCK),
        "weights",
        || format!("[{rows}, {cols}] matrices are not made of {BLOCK}x{BLOCK} blocks"),
    )?;
    let n = [experts, rows, cols]
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d));
    ensure(n == Some(len), "weights", || {
        format!("holds {len} elements, [{experts}, {rows}, {cols}] is {n:?}")
    })?;
    Ok((rows / BLOCK, cols / BLOCK))
}

/// The scale of weights (a block, an expert) from their largest magnitude `amax`: `amax /
/// 448`, 1 for all zeros, and at least the smallest positive f32, so that magnitudes below
/// 6.3e-43 (where `amax / 448` underflows to 0) get codes, not NaN (`0 / 0`). The GPU
/// quantisers (flashinfer-sys's `csrc/weights_fp8.cu`) compute the same.
fn scale_of(amax: f32) -> f32 {
    if amax > 0.0 {
        (amax / E4M3_MAX).max(f32::from_bits(1))
    } else {
        1.0
    }
}

/// The largest magnitude in `w`; an error for NaN or infinity (fp8 has no scale for them).
fn amax<T: Copy + Into<f32>>(w: &[T]) -> std::result::Result<f32, String> {
    w.iter().try_fold(0f32, |m, &x| {
        let x: f32 = x.into();
        if x.is_finite() {
            Ok(m.max(x.abs()))
        } else {
            Err(format!("holds {x}: fp8 has no scale for it"))
        }
    })
}

/// Quantises `experts` equal parts of `weights` with `quantise(part, its codes, its scales)`
/// (`scales_per` scales each), on all the host's cores: the codes and the scales, or the error
/// of the first expert `quantise` refused. Each expert's result depends on it alone.
fn quantise_experts<T, F>(
    weights: &[T],
    experts: usize,
    scales_per: usize,
    quantise: F,
) -> Result<(Vec<E4m3>, Vec<f32>)>
where
    T: Copy + Sync,
    F: Fn(&[T], &mut [E4m3], &mut [f32]) -> std::result::Result<(), String> + Sync,
{
    let block = weights.len() / experts;
    let mut codes = alloc::filled("fp8 weights", weights.len(), E4m3::default())?;
    let mut scales = alloc::filled("fp8 scales", experts * scales_per, 0f32)?;
    // Experts in equal runs, one run per thread.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = experts.div_ceil(threads);
    let quantise = &quantise;
    let failed = std::thread::scope(|s| {
        let runs = weights
            .chunks(per * block)
            .zip(codes.chunks_mut(per * block))
            .zip(scales.chunks_mut(per * scales_per))
            .enumerate()
            .map(|(run, ((w, c), sc))| {
                s.spawn(move || {
                    let parts = w
                        .chunks_exact(block)
                        .zip(c.chunks_exact_mut(block))
                        .zip(sc.chunks_exact_mut(scales_per));
                    for (e, ((w, c), sc)) in parts.enumerate() {
                        if let Err(why) = quantise(w, c, sc) {
                            let why = format!("expert {} {why}", run * per + e);
                            return Some(Error::invalid("weights", why));
                        }
                    }
                    None
                })
            })
            .collect::<Vec<_>>();
        runs.into_iter()
            .filter_map(|h| {
                h.join().unwrap_or_else(|_| {
                    Some(Error::Internal("a quantising thread panicked".into()))
                })
            })
            .next()
    });
    match failed {
        Some(e) => Err(e),
        None => Ok((codes, scales)),
    }
}

/// `fc1` and its scales from an fp8 checkpoint's per-expert `gate_proj` and `up_proj` (e4m3
/// `[experts, intermediate, hidden]` each, one scale per expert in `gate_scales` and
/// `up_scales`): each expert's two halves requantised to the larger of its two scales (the
/// GEMM has one per expert; vLLM does the same), stacked up rows first as
/// [`fc1_from_gate_up`] stacks them.
pub fn fp8_shared_scale(
    gate: (&[E4m3], &[f32]),
    up: (&[E4m3], &[f32]),
    experts: usize,
    intermediate: usize,
    hidden: usize,
) -> Result<(Vec<E4m3>, Vec<f32>)> {
    let rows = expert_block(experts, intermediate, hidden)?;
    for (name, (v, s)) in [("gate", gate), ("up", up)] {
        ensure(
            v.len() == experts * rows && s.len() == experts,
            name,
            || {
                format!(
                    "holds {} codes and {} scales, [experts {experts}, intermediate \
                 {intermediate}, hidden {hidden}] needs {} and {experts}",
                    v.len(),
                    s.len(),
                    experts * rows
                )
            },
        )?;
        if let Some(bad) = s.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::invalid(
                name,
                format!("scale {bad} is not finite and positive"),
            ));
        }
    }
    let mut scales = alloc::with_capacity("fc1 scales", experts)?;
    let mut halves = [
        alloc::with_capacity("gate", gate.0.len())?,
        alloc::with_capacity("up", up.0.len())?,
    ];
    for e in 0..experts {
        let shared = gate.1[e].max(up.1[e]);
        scales.push(shared);
        for (out, (codes, s)) in halves.iter_mut().zip([gate, up]) {
            let block = &codes[e * rows..(e + 1) * rows];
            if s[e] == shared {
                out.extend_from_slice(block);
            } else {
                let ratio = s[e] / shared;
                out.extend(block.iter().map(|c| E4m3::from_f32(c.to_f32() * ratio)));
            }
        }
    }
    let [gate, up] = halves;
    Ok((
        fc1_from_gate_up(&gate, &up, experts, intermediate, hidden)?,
        scales,
    ))
}

/// `fc1` from each expert's `gate_proj` and `up_proj` (`[experts, intermediate, hidden]`
/// each, experts stacked): `[experts, 2 * intermediate, hidden]`, up rows first.
pub fn fc1_from_gate_up<T: Copy>(
    gate: &[T],
    up: &[T],
    experts: usize,
    intermediate: usize,
    hidden: usize,
) -> Result<Vec<T>> {
    let rows = expert_block(experts, intermediate, hidden)?;
    for (name, v) in [("gate", gate), ("up", up)] {
        ensure(v.len() == experts * rows, name, || {
            format!(
                "holds {} elements, [experts {experts}, intermediate {intermediate}, hidden \
                 {hidden}] is {}",
                v.len(),
                experts * rows
            )
        })?;
    }
    // The loop runs over the data (`experts` chunks of the checked lengths), never over a
    // count the caller gave alone.
    let mut out = alloc::with_capacity("fc1", 2 * experts * rows)?;
    for (up, gate) in up.chunks_exact(rows).zip(gate.chunks_exact(rows)) {
        out.extend_from_slice(up);
        out.extend_from_slice(gate);
    }
    Ok(out)
}

/// `fc1` from a fused `w13` with the gate rows first (vLLM's and SGLang's layout,
/// `[experts, 2 * intermediate, hidden]`): the same tensor with each expert's halves swapped.
pub fn fc1_from_gate_first_w13<T: Copy>(
    w13: &[T],
    experts: usize,
    intermediate: usize,
    hidden: usize,
) -> Result<Vec<T>> {
    let rows = expert_block(experts, intermediate, hidden)?;
    ensure(w13.len() == 2 * experts * rows, "w13", || {
        format!(
            "holds {} elements, [experts {experts}, 2 x intermediate {intermediate}, hidden \
             {hidden}] is {}",
            w13.len(),
            2 * experts * rows
        )
    })?;
    let mut out = alloc::with_capacity("fc1", w13.len())?;
    for expert in w13.chunks_exact(2 * rows) {
        out.extend_from_slice(&expert[rows..]);
        out.extend_from_slice(&expert[..rows]);
    }
    Ok(out)
}

/// Elements of one expert's `[intermediate, hidden]` half (> 0), the whole tensor's size
/// checked against overflow. Zero sizes are refused: a layer of them is no layer, and with an
/// empty half a huge `experts` would otherwise pass every length check.
fn expert_block(experts: usize, intermediate: usize, hidden: usize) -> Result<usize> {
    ensure_nonzero(&[
        ("experts", experts),
        ("intermediate", intermediate),
        ("hidden", hidden),
    ])?;
    let rows = intermediate.checked_mul(hidden);
    let total = rows
        .and_then(|r| r.checked_mul(experts))
        .and_then(|n| n.checked_mul(2));
    ensure(total.is_some(), "fc1", || {
        format!("[{experts}, 2 x {intermediate}, {hidden}] overflows usize")
    })?;
    Ok(rows.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_and_up_stack_up_first_per_expert() {
        // 2 experts, intermediate 2, hidden 1: gate rows g, up rows u.
        let gate = [10, 11, 20, 21];
        let up = [1, 2, 3, 4];
        assert_eq!(
            fc1_from_gate_up(&gate, &up, 2, 2, 1).unwrap(),
            [1, 2, 10, 11, 3, 4, 20, 21]
        );
        let w13 = [10, 11, 1, 2, 20, 21, 3, 4];
        assert_eq!(
            fc1_from_gate_first_w13(&w13, 2, 2, 1).unwrap(),
            fc1_from_gate_up(&gate, &up, 2, 2, 1).unwrap()
        );
    }

    #[test]
    fn fp8_per_expert_scales_each_block_by_its_amax() {
        let w = [1.0f32, -2.0, 0.5, 0.25, 0.0, 0.0];
        let (codes, scales) = fp8_per_expert(&w, 3).unwrap();
        assert_eq!(scales, [2.0 / 448.0, 0.5 / 448.0, 1.0]);
        // The block's largest magnitude maps to 448, the rest in proportion (exact here).
        let back: Vec<f32> = codes
            .iter()
            .zip([0, 0, 1, 1, 2, 2])
            .map(|(c, e)| c.to_f32() * scales[e])
            .collect();
        assert_eq!(back, [1.0, -2.0, 0.5, 0.25, 0.0, 0.0]);
        assert!(fp8_per_expert(&[f32::NAN, 1.0], 1).is_err());
        assert!(fp8_per_expert(&[f32::INFINITY, 1.0], 2).is_err());
        assert!(fp8_per_expert(&[1.0f32; 3], 2).is_err());
        assert!(fp8_per_expert(&[1.0f32; 3], 0).is_err());
        assert!(fp8_per_expert::<f32>(&[], 3).is_err());
    }

    /// Many experts (several per thread, a last short run): each block quantised on its own,
    /// as one expert alone would be; a NaN is reported with its expert's index.
    #[test]
    fn fp8_per_expert_runs_give_each_expert_its_own_scale() {
        let (experts, block) = (37, 5);
        let w: Vec<f32> = (0..experts * block)
            .map(|n| (n as f32 * 0.37).sin() * (1 + n / block) as f32)
            .collect();
        let (codes, scales) = fp8_per_expert(&w, experts).unwrap();
        for e in 0..experts {
            let one = &w[e * block..(e + 1) * block];
            let (c, s) = fp8_per_expert(one, 1).unwrap();
            assert_eq!(
                (&codes[e * block..(e + 1) * block], scales[e]),
                (&c[..], s[0]),
                "expert {e}"
            );
        }
        let mut bad = w.clone();
        bad[20 * block + 3] = f32::NAN;
        let e = fp8_per_expert(&bad, experts).unwrap_err();
        assert!(e.to_string().contains("expert 20 holds NaN"), "{e}");
    }

    /// Each expert's 128x128 blocks quantised as the reference's `quantize_fp8_blocks`
    /// quantises one matrix, the scales stacked per expert; an all-zero block scales by 1;
    /// NaN, infinity and shapes not made of blocks are refused.
    #[test]
    fn fp8_blocks_quantise_each_block_of_each_expert_by_its_amax() {
        let (experts, rows, cols) = (3, 256, 384);
        let n = rows * cols;
        let mut w: Vec<f32> = (0..experts * n)
            .map(|i| (i as f32 * 0.011).sin() * (1.0 + (i % 977) as f32 * 0.01))
            .collect();
        // Expert 1's block (1, 2) all zero; a huge block in expert 2.
        for r in 128..256 {
            w[n + r * cols + 256..n + r * cols + 384].fill(0.0);
            w[2 * n + r * cols..2 * n + r * cols + 128]
                .iter_mut()
                .for_each(|v| *v *= 1e4);
        }
        let (codes, scales) = fp8_blocks(&w, experts, rows, cols).unwrap();
        assert_eq!(scales.len(), experts * 2 * 3);
        for e in 0..experts {
            let one = &w[e * n..(e + 1) * n];
            let (c, s) = crate::fused::oracle::quantize_fp8_blocks(one, rows, cols).unwrap();
            assert_eq!(codes[e * n..(e + 1) * n], c[..], "expert {e}'s codes");
            assert_eq!(scales[e * 6..(e + 1) * 6], s[..], "expert {e}'s scales");
        }
        assert_eq!(scales[6 + 5], 1.0);
        // A block of magnitudes where amax / 448 underflows to 0 (below 6.3e-43): the smallest
        // positive scale, and codes that read back the weights (not 0 / 0 = NaN for its zeros).
        let mut tiny = vec![0f32; 128 * 128];
        tiny[..4].copy_from_slice(&[1e-44, -3e-45, 0.0, 7e-45]);
        let (codes, scales) = fp8_blocks(&tiny, 1, 128, 128).unwrap();
        assert_eq!(scales, [f32::from_bits(1)]);
        let back: Vec<f32> = codes[..4].iter().map(|c| c.to_f32() * scales[0]).collect();
        assert_eq!(back, [tiny[0], tiny[1], 0.0, tiny[3]]);
        assert!(codes.iter().all(|c| !c.to_f32().is_nan()));
        let mut bad = w.clone();
        bad[2 * n + 5] = f32::INFINITY;
        let e = fp8_blocks(&bad, experts, rows, cols).unwrap_err();
        assert!(e.to_string().contains("expert 2 holds inf"), "{e}");
        assert!(fp8_blocks(&w, experts, rows, cols + 1).is_err());
        assert!(fp8_blocks(&w[..n * 3 - 1], experts, rows, cols).is_err());
        assert!(fp8_blocks(&[0f32; 64 * 128], 1, 64, 128).is_err());
        assert!(fp8_blocks::<f32>(&[], usize::MAX, 128, 128).is_err());
    }

    #[test]
    fn fp8_halves_are_requantised_to_the_larger_scale() {
        let q = |x: f32| E4m3::from_f32(x);
        // One expert, intermediate 1, hidden 2: gate at scale 1, up at scale 2.
        let gate = [q(448.0), q(-3.0)];
        let up = [q(448.0), q(8.0)];
        let (fc1, scales) = fp8_shared_scale((&gate, &[1.0]), (&up, &[2.0]), 1, 1, 2).unwrap();
        assert_eq!(scales, [2.0]);
        let real: Vec<f32> = fc1.iter().map(|c| c.to_f32() * 2.0).collect();
        // Up rows first (unchanged), then the gate's, halved in code (exact here).
        assert_eq!(real, [896.0, 16.0, 448.0, -3.0]);
        assert!(fp8_shared_scale((&gate, &[0.0]), (&up, &[2.0]), 1, 1, 2).is_err());
        assert!(fp8_shared_scale((&gate, &[1.0]), (&up[..1], &[2.0]), 1, 1, 2).is_err());
    }

    #[test]
    fn wrong_lengths_and_overflowing_shapes_are_refused() {
        assert!(fc1_from_gate_up(&[0u8; 3], &[0u8; 4], 2, 2, 1).is_err());
        assert!(fc1_from_gate_first_w13(&[0u8; 7], 2, 2, 1).is_err());
        assert!(fc1_from_gate_up::<u8>(&[], &[], usize::MAX, 2, 2).is_err());
    }

    /// Zero sizes with a huge expert count: every length check passes with empty slices, so
    /// these used to loop ~2^64 times.
    #[test]
    fn zero_sizes_are_refused_at_once_whatever_the_expert_count() {
        for (experts, intermediate, hidden) in [
            (usize::MAX, 0, 2),
            (usize::MAX, 2, 0),
            (usize::MAX, 0, 0),
            (0, 2, 2),
            (1, 0, 1),
        ] {
            let e = fc1_from_gate_up::<u8>(&[], &[], experts, intermediate, hidden).unwrap_err();
            assert!(e.to_string().contains("must be > 0"), "{e}");
            let e = fc1_from_gate_first_w13::<u8>(&[], experts, intermediate, hidden).unwrap_err();
            assert!(e.to_string().contains("must be > 0"), "{e}");
        }
    }
}
