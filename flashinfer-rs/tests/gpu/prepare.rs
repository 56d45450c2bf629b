//! Weight preparation on the GPU (`cutlass::prepare`): `fp8_blocks_on_device` and
//! `fp8_per_expert_on_device` against the host quantisers `fp8_blocks` and `fp8_per_expert`
//! (which the fp8 layers' tests hold to the oracle): every code and every scale bit for bit,
//! on bf16 weights of the ranges real checkpoints reach and past them (magnitudes from bf16's
//! subnormals to 1e38, all-zero blocks and experts, values exactly at e4m3's ties and at
//! +-448, negative zeros), and NaN, infinity and bad sizes refused. Plain CUDA kernels: any
//! GPU the crate runs on.
use flashinfer_rs::cudarc::driver::CudaView;
use flashinfer_rs::cutlass::prepare::{
    fp8_blocks, fp8_blocks_on_device, fp8_per_expert, fp8_per_expert_on_device,
};
use flashinfer_rs::fused::E4m3;
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::SplitMix64;
use flashinfer_rs::Error;

use crate::common::{gpu, Gpu};

/// Weight `i` of a group (a block, an expert) in one of 7 regimes: ordinary weights, a spread
/// over 1e-3..1e3, bf16 subnormals only (below 1.2e-38: the scale is an f32 subnormal), near
/// f32's top, all zeros (half of them negative), amax exactly 448 (scale 1) with e4m3's ties
/// (1.0625 lies between 1 and 1.125) and +-448 itself, and one value among zeros.
fn value(regime: usize, i: usize, rng: &mut SplitMix64) -> bf16 {
    let u = rng.unit() as f32 * 2.0 - 1.0;
    bf16::from_f32(match regime % 7 {
        0 => u * 0.05,
        1 => u * 10f32.powf(rng.unit() as f32 * 6.0 - 3.0),
        2 => u * 1e-39,
        3 => u * 3e38,
        4 => {
            if u < 0.0 {
                -0.0
            } else {
                0.0
            }
        }
        5 => [448.0, -448.0, 1.0625, -1.0625, 3.25 * 1.0625, u * 448.0][i % 6],
        _ => {
            if i == 5 * 128 + 9 {
                -0.75
            } else {
                0.0
            }
        }
    })
}

/// `experts` stacked `[rows, cols]` bf16 matrices whose 128x128 blocks each take one regime.
fn weights(experts: usize, rows: usize, cols: usize, seed: u64) -> Vec<bf16> {
    let mut rng = SplitMix64(seed);
    let (rb, cb) = (rows / 128, cols / 128);
    (0..experts * rows * cols)
        .map(|i| {
            let (e, r, c) = (i / (rows * cols), i / cols % rows, i % cols);
            let block = (e * rb + r / 128) * cb + c / 128;
            value(block, (r % 128) * 128 + c % 128, &mut rng)
        })
        .collect()
}

/// `quantise` refuses weights of `len` values of 0.5 but one, at `at`, NaN or +-inf, naming
/// them.
fn refuses_non_finite(
    g: &Gpu,
    len: usize,
    at: usize,
    quantise: impl Fn(&CudaView<'_, bf16>) -> flashinfer_rs::Result<()>,
) {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut w = vec![bf16::from_f32(0.5); len];
        w[at] = bf16::from_f32(bad);
        let d = g.stream.clone_htod(&w).unwrap();
        match quantise(&d.as_view()) {
            Err(Error::InvalidArgument {
                arg: "weights",
                rule,
            }) => {
                assert!(rule.contains("NaN or infinity"), "{rule}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// The GPU's codes and scales are the host's, bit for bit, and some scale is an f32
/// subnormal (the regime `-use_fast_math` would flush).
fn assert_same_bits(codes: &[E4m3], want_codes: &[E4m3], scales: &[f32], want_scales: &[f32]) {
    let bits = |s: &[f32]| s.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(scales), bits(want_scales), "scales");
    let differ = codes.iter().zip(want_codes).position(|(a, b)| a != b);
    assert_eq!(differ, None, "first code that differs");
    assert_eq!(codes.len(), want_codes.len());
    assert!(
        want_scales.iter().any(|s| s.is_subnormal()),
        "no subnormal scale tested"
    );
}

#[test]
fn fp8_blocks_on_device_equal_the_host_quantiser_bit_for_bit() {
    let test = "prepare::fp8_blocks_on_device_equal_the_host_quantiser_bit_for_bit";
    let Some(g) = gpu(test) else { return };
    // 3 experts of 7 x 5 blocks: every regime in several positions.
    let (experts, rows, cols) = (3, 7 * 128, 5 * 128);
    let host = weights(experts, rows, cols, 17);
    let device = g.stream.clone_htod(&host).unwrap();
    let (codes, scales) =
        fp8_blocks_on_device(&g.stream, &device.as_view(), experts, rows, cols).unwrap();
    let (want_codes, want_scales) = fp8_blocks(&host, experts, rows, cols).unwrap();
    let got_codes: Vec<E4m3> = g.stream.clone_dtoh(&codes).unwrap();
    let got_scales: Vec<f32> = g.stream.clone_dtoh(&scales).unwrap();
    assert_same_bits(&got_codes, &want_codes, &got_scales, &want_scales);
    eprintln!(
        "{test}: {} codes and {} scales equal (scales from {:e} to {:e})",
        got_codes.len(),
        got_scales.len(),
        want_scales.iter().cloned().fold(f32::INFINITY, f32::min),
        want_scales.iter().cloned().fold(0.0, f32::max),
    );
}

#[test]
fn fp8_blocks_on_device_refuse_nan_infinity_and_bad_sizes() {
    let test = "prepare::fp8_blocks_on_device_refuse_nan_infinity_and_bad_sizes";
    let Some(g) = gpu(test) else { return };
    refuses_non_finite(&g, 2 * 128 * 256, 128 * 256 + 77, |w| {
        fp8_blocks_on_device(&g.stream, w, 2, 128, 256).map(|_| ())
    });
    let d = g.stream.alloc_zeros::<bf16>(128 * 256).unwrap();
    let v = d.as_view();
    for (experts, rows, cols) in [(1, 64, 512), (1, 128, 200), (2, 128, 256), (0, 128, 256)] {
        let e = fp8_blocks_on_device(&g.stream, &v, experts, rows, cols).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
    }
    eprintln!("{test}: NaN, +-inf and 4 bad shapes refused");
}

#[test]
fn fp8_per_expert_on_device_equal_the_host_quantiser_bit_for_bit() {
    let test = "prepare::fp8_per_expert_on_device_equal_the_host_quantiser_bit_for_bit";
    let Some(g) = gpu(test) else { return };
    // 14 experts, two of each regime, of 3 x 128 x 136 values (not a multiple of the
    // kernels' 2048-value block stride: each expert's last block is partial).
    let (experts, per) = (14, 3 * 128 * 136);
    let mut rng = SplitMix64(23);
    let host: Vec<bf16> = (0..experts * per)
        .map(|i| value(i / per, i % per, &mut rng))
        .collect();
    let device = g.stream.clone_htod(&host).unwrap();
    let (codes, scales) = fp8_per_expert_on_device(&g.stream, &device.as_view(), experts).unwrap();
    let (want_codes, want_scales) = fp8_per_expert(&host, experts).unwrap();
    let got_codes: Vec<E4m3> = g.stream.clone_dtoh(&codes).unwrap();
    assert_same_bits(&got_codes, &want_codes, &scales, &want_scales);
    eprintln!(
        "{test}: {} codes and {experts} scales equal ({:?})",
        got_codes.len(),
        want_scales
    );
}

#[test]
fn fp8_per_expert_on_device_refuse_nan_infinity_and_bad_sizes() {
    let test = "prepare::fp8_per_expert_on_device_refuse_nan_infinity_and_bad_sizes";
    let Some(g) = gpu(test) else { return };
    refuses_non_finite(&g, 3 * 4096, 2 * 4096 + 1001, |w| {
        fp8_per_expert_on_device(&g.stream, w, 3).map(|_| ())
    });
    // 4100 per expert (not a multiple of 8), 0 experts, 7 (no exact split); 65536 experts of 8.
    let d = g.stream.alloc_zeros::<bf16>(3 * 4100).unwrap();
    let many = g.stream.alloc_zeros::<bf16>(65536 * 8).unwrap();
    for (v, experts) in [(&d, 3), (&d, 0), (&d, 7), (&many, 65536)] {
        let e = fp8_per_expert_on_device(&g.stream, &v.as_view(), experts).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{experts}: {e}");
    }
    eprintln!("{test}: NaN, +-inf and 4 bad sizes refused");
}
