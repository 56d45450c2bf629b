//! The fp8 block-scale Hopper layer (`CutlassMoe::new_fp8_blocks`, feature `sm90-moe-fp8`):
//! DeepSeek-V3's fp8 experts (e4m3 weights with one scale per 128x128 block) against the CPU
//! reference MoE (`fused::oracle::moe`) on the operands the kernels see: weights quantised in
//! blocks (`prepare::fp8_blocks`) and dequantised by the oracle's own
//! `dequantize_fp8_blocks`, hidden states quantised per token and 128 columns as the kernel
//! does (`round_fp8_groups`: `e4m3(x * 448 / amax)`), GEMM 1's outputs and the SwiGLU output
//! rounded to bf16 and the latter quantised likewise (`ActivationRounding::Fp8Groups128`).
//! Left: the order of f32 sums and the GEMM's per-128 promotion of its fp8 products, which can
//! move an intermediate value across a bf16 or e4m3 rounding boundary now and then; hence the
//! per-tensor tests' two criteria (`fp8_check`: 99% within the bf16 layer's tolerance, all
//! within four times it, on each token's outputs over its routing weights' magnitude).
//! - every routing method x token counts {1, 7, 64, 257, 2048} x 64 and 128 experts, replay
//!   ids equal to the oracle's, spare rows untouched, bits equal with and without replay;
//! - a DeepSeek-V3-sized expert-parallel rank (hidden 7168, intermediate 2048, 8 of 256
//!   experts, top-8) at 1, 64 and 513 tokens;
//! - hidden states of real models' ranges: outliers of 1e4 beside values of 1e-2 in one
//!   group, a token of zeros, a token below 1.3e-36 (patch 0013: finite, not NaN), and a NaN
//!   token that leaves its neighbours untouched;
//! - expert parallelism (four ranks), batch invariance, a capture store, a CUDA graph;
//! - the decode kernels with block scales (which `Fastest` takes up to
//!   `BLOCK_DECODE_MAX_TOKENS`, forced here by `CutlassSchedule::DecodeUpTo`): odd token
//!   counts, a Qwen3-sized layer, an expert-parallel rank, and in the CUDA graph;
//! - what each call takes (`CutlassMoe::kernels_for`): the decode kernels, then each tile on
//!   its side of 64 rows an expert;
//! - bad scales and sizes refused with typed errors;
//! - the operands and output of a small DeepSeek-V3-shaped block written for transformers'
//!   own fine-grained fp8 path (`scripts/transformers_fp8_blocks.py`) when
//!   `FLASHINFER_RS_FP8_BLOCKS_EXPORT` names a folder.
use flashinfer_rs::cudarc::driver::CudaView;
use flashinfer_rs::cutlass::prepare::{fc1_from_gate_up, fp8_blocks};
use flashinfer_rs::cutlass::{
    CutlassBlockScales, CutlassKernels, CutlassMoe, CutlassMoeConfig, CutlassSchedule,
    CutlassTactic, CutlassWeights, BLOCK_DECODE_MAX_TOKENS,
};
use flashinfer_rs::fused::oracle::{self as moe_oracle, ActivationRounding, ExpertWeights};
use flashinfer_rs::fused::E4m3;
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::SplitMix64;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::Error;

use crate::common::{gpu, Gpu};
use crate::cutlass_moe::on_hopper::{
    assert_batch_invariant, capture_store_records_the_routing, case, config, forward,
    graph_of_layers, graph_routing, reference_of, to_f32, upload, values, ATOL, BATCH_TOKENS,
    CAPTURE_SHAPE, CAPTURE_TOKENS, GRAPH_SIZES, RTOL,
};
use crate::cutlass_moe_fp8::{
    decode_cases, expert_parallel_cases, fp8_here, random_weights, Fp8Weights, Quantised, Tally,
};
use crate::degenerate::one_per_method;
use crate::routing::{CaseData, DeviceInputs};

/// `codes` (`experts` stacked `[rows, cols]` matrices) times their blocks' `scales`, by the
/// oracle's dequantiser, matrix by matrix.
fn dequantise(codes: &[E4m3], scales: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let per = scales.len() / (codes.len() / (rows * cols));
    codes
        .chunks_exact(rows * cols)
        .zip(scales.chunks_exact(per))
        .flat_map(|(q, s)| moe_oracle::dequantize_fp8_blocks(q, s, rows, cols).unwrap())
        .collect()
}

/// `weights` (`experts` stacked `[rows, cols]` matrices) quantised in 128x128 blocks, with the
/// values the codes stand for.
fn quantise_blocks(weights: &[f32], experts: usize, rows: usize, cols: usize) -> Quantised {
    let (codes, scales) = fp8_blocks(weights, experts, rows, cols).unwrap();
    let values = dequantise(&codes, &scales, rows, cols);
    (codes, scales, values)
}

fn block_weights(g: &Gpu, local: usize, h: usize, i: usize, seed: u64) -> Fp8Weights {
    random_weights(g, local, h, i, seed, |w, rows, cols| {
        quantise_blocks(w, local, rows, cols)
    })
}

/// The block scales of `w` on the device, for one layer (which owns them).
fn block_scales(g: &Gpu, w: &Fp8Weights) -> CutlassBlockScales {
    CutlassBlockScales {
        fc1: g.stream.clone_htod(&w.fc1_scales).unwrap(),
        fc2: g.stream.clone_htod(&w.fc2_scales).unwrap(),
    }
}

/// A block-scale layer of `w` for this machine (`fp8_here`).
fn block_layer_here<'w>(
    g: &Gpu,
    cfg: CutlassMoeConfig,
    w: &'w Fp8Weights,
    test: &str,
) -> Option<CutlassMoe<CudaView<'w, E4m3>>> {
    let made = CutlassMoe::new_fp8_blocks(cfg, w.views(), block_scales(g, w));
    fp8_here(g, cfg, w, test, made)
}

/// The reference output of `d` (its oracle routing) on the operands the kernels see.
fn reference(cfg: &CutlassMoeConfig, d: &CaseData, x: &[f32], w: &ExpertWeights) -> Vec<f32> {
    // Rows of a multiple of 128: the 128-runs are each token's groups.
    let xq = moe_oracle::round_fp8_groups(x);
    let ids: Vec<usize> = d.want.ids.iter().map(|&e| e as usize).collect();
    let rounding = ActivationRounding::Fp8Groups128;
    reference_of(cfg, d.tokens, &xq, &ids, &d.want.weights, w, rounding)
}

/// One case: `d` and `x` through `layer` against the reference.
fn check(
    tally: &mut Tally<'_>,
    layer: &CutlassMoe<CudaView<'_, E4m3>>,
    w: &ExpertWeights,
    d: &CaseData,
    x: &[f32],
    label: impl FnOnce() -> String,
) {
    let want = reference(&layer.config(), d, x, w);
    tally.against(layer, d, x, &want, label);
}

#[test]
fn fp8_blocks_every_method_and_token_count_matches_the_reference() {
    let test =
        "cutlass_moe_fp8_blocks::fp8_blocks_every_method_and_token_count_matches_the_reference";
    let Some(g) = gpu(test) else { return };
    let (h, i) = (256, 128);
    let mut tally = Tally::new(&g);
    for (e, k) in [(64u32, 6u32), (128, 8)] {
        let w = block_weights(&g, e as usize, h, i, 800 + e as u64);
        let probe = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        if block_layer_here(&g, config(probe, h, i, 1), &w, test).is_none() {
            return;
        }
        for (n, m) in one_per_method().into_iter().enumerate() {
            let k = if m.top_k == 1 { 1 } else { k };
            let routing = RoutingConfig::new(m.method, e, k);
            if flashinfer_rs::routing::TopKRouter::new(routing).is_err() {
                continue;
            }
            let cfg = config(routing, h, i, 2048);
            let layer = CutlassMoe::new_fp8_blocks(cfg, w.views(), block_scales(&g, &w)).unwrap();
            // 1 token takes the decode kernels, 7 and more the block-scale GEMM: its 64x64
            // tile in GEMM 2, and in GEMM 1 below 64 mean rows per expert (7 to 257 tokens;
            // 128x64 at 2048); each pair is tested by fp8_blocks_both_tiles_....
            assert_eq!(
                layer.decode_max_tokens(),
                BLOCK_DECODE_MAX_TOKENS.for_expert(h, i)
            );
            let tiles = layer.tactics().unwrap();
            assert_eq!(tiles.0, tiles.1);
            let shapes: Vec<_> = tiles.0.iter().map(|t| t.tile).collect();
            assert_eq!(shapes, [(128, 64), (64, 64)]);
            for t in [1, 7, 64, 257, 2048] {
                let seed = e as u64 * 1000 + n as u64 * 10 + t as u64;
                let d = case(&cfg.routing, t, seed);
                let x = values(&mut SplitMix64(seed ^ 0x5eed), t * h, 1.0);
                check(&mut tally, &layer, &w.host, &d, &x, || {
                    format!("{} E={e} K={k} T={t}", m.method.name())
                });
            }
        }
    }
    tally.report(test);
}

/// One rank of eight experts of a DeepSeek-V3-sized layer (hidden 7168, intermediate 2048; 256
/// experts, top-8): the sizes the block-scale GEMM was written for, K up to 7168.
#[test]
fn fp8_blocks_a_deepseek_sized_rank_matches_the_reference() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_a_deepseek_sized_rank_matches_the_reference";
    let Some(g) = gpu(test) else { return };
    let (h, i, per) = (7168, 2048, 8);
    let w = block_weights(&g, per, h, i, 90);
    let full = RoutingConfig::new(RoutingMethod::Renormalize, 256, 8);
    let routing = full.with_local_experts(24, per as u32);
    let cfg = config(routing, h, i, 513);
    let Some(layer) = block_layer_here(&g, cfg, &w, test) else {
        return;
    };
    let mut tally = Tally::new(&g);
    for t in [1, 64, 513] {
        let d = case(&full, t, 91 + t as u64);
        let x = values(&mut SplitMix64(92 + t as u64), t * h, 1.0);
        check(&mut tally, &layer, &w.host, &d, &x, || format!("T={t}"));
    }
    tally.report(test);
}

/// Hidden states real models reach, in one 64-token call: outliers of 1e4 beside values of
/// 1e-2 in one 128-group (the group's scale follows its outlier), a token of zeros, and a
/// token whose groups' largest magnitudes are below 448 / f32::MAX (patch 0013 keeps their
/// scale finite: without it their zeros became NaN). Then a NaN token: its own output is NaN
/// and every other token's is what it was without it.
#[test]
fn fp8_blocks_outliers_zeros_underflow_and_nan_tokens() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_outliers_zeros_underflow_and_nan_tokens";
    let Some(g) = gpu(test) else { return };
    let (e, k, h, i, t) = (64u32, 6u32, 256, 128, 64);
    let w = block_weights(&g, e as usize, h, i, 70);
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
    let cfg = config(routing, h, i, t);
    let Some(layer) = block_layer_here(&g, cfg, &w, test) else {
        return;
    };
    let d = case(&routing, t, 71);
    let mut x = values(&mut SplitMix64(72), t * h, 0.01);
    for n in [3, 200, 1000, 5000] {
        x[n] = if n % 2 == 0 { 1e4 } else { -3e3 };
    }
    x[7 * h..8 * h].fill(0.0);
    for (n, v) in x[9 * h..10 * h].iter_mut().enumerate() {
        // bf16-exact magnitudes from 1e-38 down to subnormals, zeros between.
        *v = match n % 3 {
            0 => 0.0,
            1 => bf16::from_f32(1e-38).to_f32(),
            _ => -bf16::from_f32(3e-40).to_f32(),
        };
    }
    // An outlier token's outputs reach 1e5 and its rounding errors scale with them, not with
    // its routing weights: each token's outputs are compared over their own largest magnitude
    // (at least 1), with the fp8 criteria.
    let want = reference(&cfg, &d, &x, &w.host);
    let clean = run_once(&g, &layer, &d, &x);
    assert!(
        clean.iter().all(|v| v.is_finite()),
        "{test}: a non-finite output"
    );
    let over_token_amax = |v: &[f32]| -> Vec<f32> {
        v.chunks(h)
            .zip(want.chunks(h))
            .flat_map(|(row, w)| {
                let m = w.iter().fold(1f32, |m, x| m.max(x.abs()));
                row.iter().map(move |x| x / m)
            })
            .collect()
    };
    let (ws, gs) = (over_token_amax(&want), over_token_amax(&clean));
    moe_oracle::check_accuracy(&ws, &gs, ATOL, RTOL, 0.99).unwrap();
    moe_oracle::check_accuracy(&ws, &gs, 4.0 * ATOL, 4.0 * RTOL, 1.0).unwrap();
    let zeros = &clean[7 * h..8 * h];
    assert!(
        zeros.iter().all(|&v| v == 0.0),
        "{test}: the zero token's output is not zero"
    );
    let nan_token = 20;
    let mut poisoned = x.clone();
    poisoned[nan_token * h + 5] = f32::NAN;
    let got = run_once(&g, &layer, &d, &poisoned);
    for tok in 0..t {
        let (a, b) = (&clean[tok * h..(tok + 1) * h], &got[tok * h..(tok + 1) * h]);
        if tok == nan_token {
            assert!(
                b.iter().any(|v| v.is_nan()),
                "{test}: the NaN token's output has no NaN"
            );
        } else {
            assert_eq!(
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                "{test}: token {tok} moved with a NaN in token {nan_token}"
            );
        }
    }
}

/// The layer's output for `d` and `x`, as f32.
fn run_once(g: &Gpu, layer: &CutlassMoe<CudaView<'_, E4m3>>, d: &CaseData, x: &[f32]) -> Vec<f32> {
    let mut ws = layer.workspace(&g.stream).unwrap();
    let inputs = DeviceInputs::upload(&g.stream, d);
    let out = forward(g, layer, &mut ws, &inputs, &upload(g, x), d.tokens, false).unwrap();
    to_f32(&out.output)
}

/// Four ranks of 32 experts each, every rank's output against the reference over its own
/// experts (and block scales).
#[test]
fn fp8_blocks_expert_parallel_ranks_sum_only_their_experts() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_expert_parallel_ranks_sum_only_their_experts";
    let Some(g) = gpu(test) else { return };
    let mut tally = Tally::new(&g);
    let weights = |local, h, i, seed| block_weights(&g, local, h, i, seed);
    let here = |cfg, w: &Fp8Weights| block_layer_here(&g, cfg, w, test).is_some();
    expert_parallel_cases(&g, weights, here, &mut |cfg, w, d, x, rank| {
        let layer = CutlassMoe::new_fp8_blocks(cfg, w.views(), block_scales(&g, w)).unwrap();
        check(&mut tally, &layer, &w.host, d, x, || format!("rank {rank}"));
    });
    tally.report(test);
}

/// `CutlassSchedule::BatchInvariant` on block-scale weights (the one GEMM at every size, each
/// row quantised and multiplied on its own): the rows of calls on the first 1, 3, 7, 64 and
/// 257 tokens of a 300-token batch are those of one call on all 300, bit for bit. `Fastest`
/// (the decode kernels up to `BLOCK_DECODE_MAX_TOKENS`) is reported beside it, not asserted.
#[test]
fn fp8_blocks_rows_do_not_depend_on_the_rest_of_the_batch() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_rows_do_not_depend_on_the_rest_of_the_batch";
    let Some(g) = gpu(test) else { return };
    let (h, i, t) = (512, 256, BATCH_TOKENS);
    let w = block_weights(&g, 128, h, i, 31);
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8);
    let cfg = config(routing, h, i, t);
    if block_layer_here(&g, cfg, &w, test).is_none() {
        return;
    }
    let d = case(&routing, t, 32);
    let x = values(&mut SplitMix64(33), t * h, 1.0);
    let schedule = CutlassSchedule::BatchInvariant;
    let invariant =
        CutlassMoe::fp8_blocks_with_schedule(cfg, w.views(), block_scales(&g, &w), schedule)
            .unwrap();
    let fastest = CutlassMoe::new_fp8_blocks(cfg, w.views(), block_scales(&g, &w)).unwrap();
    assert_batch_invariant(&g, test, [&invariant, &fastest], &d, &x);
}

#[test]
fn fp8_blocks_a_capture_store_records_the_routing_the_layers_used() {
    let test =
        "cutlass_moe_fp8_blocks::fp8_blocks_a_capture_store_records_the_routing_the_layers_used";
    let Some(g) = gpu(test) else { return };
    let (e, k, h, i) = CAPTURE_SHAPE;
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
    let w = block_weights(&g, e as usize, h, i, 60);
    let cfg = config(routing, h, i, CAPTURE_TOKENS);
    let Some(layer) = block_layer_here(&g, cfg, &w, test) else {
        return;
    };
    capture_store_records_the_routing(&g, &layer, test);
}

/// The decode kernels on block-scale weights, forced onto every call (`DecodeUpTo`): odd token
/// counts up to 64 (experts shared by many tokens) on a layer whose hidden size is not a
/// multiple of the loads' 512 columns, a Qwen3-30B-A3B-sized layer, one expert-parallel rank of
/// four, and rows of DeepSeek-V3's hidden size (`decode_cases`); against the same reference as
/// the block-scale GEMM.
#[test]
fn fp8_blocks_decode_kernels_match_the_reference() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_decode_kernels_match_the_reference";
    let Some(g) = gpu(test) else { return };
    let mut tally = Tally::new(&g);
    let mut run = |name: &str, cfg: CutlassMoeConfig, w: &Fp8Weights, t: usize, seed: u64| {
        let schedule = CutlassSchedule::DecodeUpTo(usize::MAX);
        let layer =
            CutlassMoe::fp8_blocks_with_schedule(cfg, w.views(), block_scales(&g, w), schedule)
                .unwrap();
        assert_eq!(layer.decode_max_tokens(), cfg.max_tokens);
        let d = case(&cfg.routing, t, seed);
        let x = values(&mut SplitMix64(seed ^ 0x5eed), t * cfg.hidden_size, 1.0);
        check(&mut tally, &layer, &w.host, &d, &x, || {
            format!("{name} T={t}")
        });
    };
    // Multiples of 128 (the blocks), not of the loads' 512 columns.
    let weights = |local, h, i, seed| block_weights(&g, local, h, i, seed);
    let here = |cfg, w: &Fp8Weights| block_layer_here(&g, cfg, w, test).is_some();
    decode_cases(&g, (384, 256), weights, here, &mut run);
    tally.report(test);
}

/// Three block-scale layers chained in a CUDA graph, replayed with fresh inputs, at 57 and 3
/// tokens; at 3 also through the decode kernels.
#[test]
fn fp8_blocks_a_graph_of_layers_reruns_with_fresh_inputs() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_a_graph_of_layers_reruns_with_fresh_inputs";
    let Some(g) = gpu(test) else { return };
    let (h, i) = GRAPH_SIZES;
    let ws: Vec<Fp8Weights> = (0..3)
        .map(|l| block_weights(&g, 64, h, i, 40 + l))
        .collect();
    for t in [57, 3] {
        if block_layer_here(&g, config(graph_routing(), h, i, t), &ws[0], test).is_none() {
            return;
        }
        // 3 tokens: the decode kernels (Fastest) and the GEMM (BatchInvariant); 57: the GEMM.
        let schedules = if t == 3 {
            vec![CutlassSchedule::Fastest, CutlassSchedule::BatchInvariant]
        } else {
            vec![CutlassSchedule::Fastest]
        };
        for schedule in schedules {
            let moes: Vec<_> = ws
                .iter()
                .map(|w| {
                    let cfg = config(graph_routing(), h, i, t);
                    let scales = block_scales(&g, w);
                    CutlassMoe::fp8_blocks_with_schedule(cfg, w.views(), scales, schedule).unwrap()
                })
                .collect();
            assert_eq!(
                moes[0].decode_max_tokens() >= t,
                t <= BLOCK_DECODE_MAX_TOKENS.for_expert(h, i)
                    && schedule == CutlassSchedule::Fastest
            );
            graph_of_layers(&g, test, t, &moes);
        }
    }
}

/// The block-scale GEMM's two tiles (128x64, upstream's; 64x64, two CTAs per SM), fixed in
/// each GEMM by `CutlassSchedule::Tactics` in the four pairs: each against the reference, and
/// bit for bit equal to each other (the same per-row reduction: the tile only changes which
/// rows a CTA holds, so a per-call choice of tile would keep a row's bits). Mean
/// rows per expert from under 1 to 192 (experts of 1..64 rows fill part of a 64-row tile, of
/// more several): a small layer at 9 to 2048 tokens and a DeepSeek-V3-sized rank (K up to
/// 7168) at 9 to 300.
#[test]
fn fp8_blocks_both_tiles_match_the_reference_and_each_other() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_both_tiles_match_the_reference_and_each_other";
    let Some(g) = gpu(test) else { return };
    let mut tally = Tally::new(&g);
    // (experts, top-k, hidden, intermediate, first local expert, local experts, token counts)
    let small = (64u32, 6u32, 256, 128, 0u32, 64u32, &[9, 64, 300, 2048][..]);
    let deepseek = (256, 8, 7168, 2048, 24, 8, &[9, 64, 300][..]);
    for (e, k, h, i, first, local, tokens) in [small, deepseek] {
        let w = block_weights(&g, local as usize, h, i, 500 + e as u64);
        let full = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        let routing = full.with_local_experts(first, local);
        let cfg = config(routing, h, i, 2048);
        if block_layer_here(&g, cfg, &w, test).is_none() {
            return;
        }
        let layers: Vec<_> = [(0, 0), (1, 1), (0, 1), (1, 0)]
            .into_iter()
            .map(|(a, b)| {
                let schedule = CutlassSchedule::Tactics(a, b);
                let layer = CutlassMoe::fp8_blocks_with_schedule(
                    cfg,
                    w.views(),
                    block_scales(&g, &w),
                    schedule,
                )
                .unwrap();
                assert_eq!(layer.decode_max_tokens(), 0);
                ((a, b), layer)
            })
            .collect();
        for &t in tokens {
            let seed = 510 + e as u64 + t as u64;
            let d = case(&full, t, seed);
            let x = values(&mut SplitMix64(seed ^ 0x5eed), t * h, 1.0);
            let want = reference(&cfg, &d, &x, &w.host);
            let mut first_bits: Option<Vec<u32>> = None;
            for ((a, b), layer) in &layers {
                tally.against(layer, &d, &x, &want, || {
                    format!("E={e} H={h} T={t} tiles {a}/{b}")
                });
                let bits: Vec<u32> = run_once(&g, layer, &d, &x)
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                match &first_bits {
                    None => first_bits = Some(bits),
                    Some(first) => assert!(
                        *first == bits,
                        "{test}: E={e} H={h} T={t}: tiles {a}/{b} differ in bits from 0/0"
                    ),
                }
            }
        }
    }
    tally.report(test);
}

/// What each call of a block-scale layer takes (`kernels_for`): with `Fastest`, the decode
/// kernels up to `BLOCK_DECODE_MAX_TOKENS.small` (small experts), then the block-scale GEMM
/// with its 64x64 tile in both GEMMs below 64 mean rows per expert and its 128x64 tile in
/// GEMM 1 from 64; `DecodeUpTo(n)` moves the decode limit alone; fixed tiles, and
/// `BatchInvariant`'s 64x64 in both GEMMs, at every size.
#[test]
fn fp8_blocks_each_call_takes_the_tiles_its_schedule_names() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_each_call_takes_the_tiles_its_schedule_names";
    let Some(g) = gpu(test) else { return };
    // 64 experts, top-8: 64 rows an expert at 512 tokens.
    let (e, k, h, i) = (64u32, 8u32, 128, 128);
    let w = block_weights(&g, e as usize, h, i, 530);
    let cfg = config(
        RoutingConfig::new(RoutingMethod::Renormalize, e, k),
        h,
        i,
        1024,
    );
    let Some(layer) = block_layer_here(&g, cfg, &w, test) else {
        return;
    };
    let (t1, t2) = layer.tactics().unwrap();
    let tile = |t: &[CutlassTactic], rows_cols| {
        let found = t.iter().position(|x| x.tile == rows_cols);
        found.unwrap_or_else(|| panic!("{test}: no {rows_cols:?} tile")) as u32
    };
    let (wide, narrow) = (tile(&t1, (128, 64)), tile(&t2, (64, 64)));
    assert_eq!(
        tile(&t1, (64, 64)),
        narrow,
        "{test}: both GEMMs list the tiles alike"
    );
    let small = BLOCK_DECODE_MAX_TOKENS.small;
    assert_eq!(layer.decode_max_tokens(), small);
    let forced = |schedule| {
        CutlassMoe::fp8_blocks_with_schedule(cfg, w.views(), block_scales(&g, &w), schedule)
            .unwrap()
    };
    let fixed = forced(CutlassSchedule::Tactics(wide, wide));
    let invariant = forced(CutlassSchedule::BatchInvariant);
    let decode_up_to_2 = forced(CutlassSchedule::DecodeUpTo(2));
    let gemms = CutlassKernels::Gemms;
    let cases = [
        (&layer, "Fastest", 0, CutlassKernels::Nothing),
        (&layer, "Fastest", 1, CutlassKernels::Decode),
        (&layer, "Fastest", small, CutlassKernels::Decode),
        (&layer, "Fastest", small + 1, gemms(narrow, narrow)),
        (&layer, "Fastest", 511, gemms(narrow, narrow)),
        (&layer, "Fastest", 512, gemms(wide, narrow)),
        (&layer, "Fastest", 1024, gemms(wide, narrow)),
        (&fixed, "Tactics(wide, wide)", 1, gemms(wide, wide)),
        (&fixed, "Tactics(wide, wide)", 1024, gemms(wide, wide)),
        (&invariant, "BatchInvariant", 1, gemms(narrow, narrow)),
        (&invariant, "BatchInvariant", 1024, gemms(narrow, narrow)),
        (&decode_up_to_2, "DecodeUpTo(2)", 2, CutlassKernels::Decode),
        (&decode_up_to_2, "DecodeUpTo(2)", 3, gemms(narrow, narrow)),
        (&decode_up_to_2, "DecodeUpTo(2)", 512, gemms(wide, narrow)),
    ];
    for (layer, schedule, tokens, want) in cases {
        let got = layer.kernels_for(tokens).unwrap();
        assert_eq!(got, want, "{test}: {schedule} at {tokens} tokens");
    }
    assert!(matches!(
        layer.kernels_for(1025),
        Err(Error::InvalidArgument { .. })
    ));
    eprintln!("{test}: {} calls named as the rule says", cases.len());
}

/// Scales and sizes the kernels cannot use, and schedules they do not have, are refused at
/// construction.
#[test]
fn fp8_blocks_bad_scales_sizes_and_schedules_are_refused() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_bad_scales_sizes_and_schedules_are_refused";
    let Some(g) = gpu(test) else { return };
    let (e, h, i) = (8u32, 256, 128);
    let w = block_weights(&g, e as usize, h, i, 5);
    let cfg = config(
        RoutingConfig::new(RoutingMethod::Renormalize, e, 2),
        h,
        i,
        4,
    );
    if block_layer_here(&g, cfg, &w, test).is_none() {
        return;
    }
    let refused = |what: &str, got: flashinfer_rs::Result<CutlassMoe<CudaView<'_, E4m3>>>| match got
    {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("{test}: {what}: {other:?}"),
    };
    let with = |fc1: Vec<f32>, fc2: Vec<f32>| CutlassBlockScales {
        fc1: g.stream.clone_htod(&fc1).unwrap(),
        fc2: g.stream.clone_htod(&fc2).unwrap(),
    };
    let (s1, s2) = (w.fc1_scales.clone(), w.fc2_scales.clone());
    for (what, v) in [
        ("NaN", f32::NAN),
        ("inf", f32::INFINITY),
        ("negative", -1.0),
    ] {
        let mut bad = s1.clone();
        bad[5] = v;
        refused(
            what,
            CutlassMoe::new_fp8_blocks(cfg, w.views(), with(bad, s2.clone())),
        );
        let mut bad = s2.clone();
        bad[s2.len() - 1] = v;
        refused(
            what,
            CutlassMoe::new_fp8_blocks(cfg, w.views(), with(s1.clone(), bad)),
        );
    }
    refused(
        "short fc1 scales",
        CutlassMoe::new_fp8_blocks(cfg, w.views(), with(s1[1..].to_vec(), s2.clone())),
    );
    refused(
        "long fc2 scales",
        CutlassMoe::new_fp8_blocks(cfg, w.views(), with(s1.clone(), [&s2[..], &[1.0]].concat())),
    );
    for (a, b) in [(2, 0), (0, 2), (u32::MAX, 0)] {
        refused(
            "a tactic past the two tiles",
            CutlassMoe::fp8_blocks_with_schedule(
                cfg,
                w.views(),
                block_scales(&g, &w),
                CutlassSchedule::Tactics(a, b),
            ),
        );
    }
    // 192 is a multiple of 64 (the bf16 layer's rule), not of 128.
    let odd = block_weights(&g, e as usize, 128, 128, 6);
    let fc1 = g
        .stream
        .alloc_zeros::<E4m3>(e as usize * 2 * 192 * 128)
        .unwrap();
    let fc2 = g
        .stream
        .alloc_zeros::<E4m3>(e as usize * 192 * 128)
        .unwrap();
    let weights = CutlassWeights {
        fc1: fc1.as_view(),
        fc2: fc2.as_view(),
    };
    let cfg192 = CutlassMoeConfig {
        intermediate_size: 192,
        hidden_size: 128,
        ..cfg
    };
    refused(
        "intermediate 192",
        CutlassMoe::new_fp8_blocks(cfg192, weights, block_scales(&g, &odd)),
    );
}

/// A DeepSeek-V3-shaped block (hidden 7168, intermediate 2048, 16 experts, top-8, 33 tokens)
/// from per-expert `gate_proj`, `up_proj` and `down_proj` as a checkpoint ships them (e4m3 and
/// `weight_scale_inv`), assembled with `prepare::fc1_from_gate_up`: checked against the
/// reference here, and, when `FLASHINFER_RS_FP8_BLOCKS_EXPORT` names a folder, written there
/// (operands and output) for `scripts/transformers_fp8_blocks.py`, which runs transformers'
/// own fine-grained fp8 path on them.
#[test]
fn fp8_blocks_a_checkpoint_shaped_block_for_transformers() {
    let test = "cutlass_moe_fp8_blocks::fp8_blocks_a_checkpoint_shaped_block_for_transformers";
    let Some(g) = gpu(test) else { return };
    let (e, k, h, i, t) = (16usize, 8usize, 7168, 2048, 33);
    let mut rng = SplitMix64(1234);
    let mut quantised = |rows: usize, cols: usize| {
        let w = values(&mut rng, e * rows * cols, 2.0 / (cols as f32).sqrt());
        fp8_blocks(&w, e, rows, cols).unwrap()
    };
    let (gate, gate_s) = quantised(i, h);
    let (up, up_s) = quantised(i, h);
    let (down, down_s) = quantised(h, i);
    let fc1 = fc1_from_gate_up(&gate, &up, e, i, h).unwrap();
    let fc1_s = fc1_from_gate_up(&gate_s, &up_s, e, i / 128, h / 128).unwrap();
    let w1 = dequantise(&fc1, &fc1_s, 2 * i, h);
    let w2 = dequantise(&down, &down_s, h, i);
    let w = Fp8Weights::upload(&g, (fc1, fc1_s, w1), (down.clone(), down_s.clone(), w2));
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, e as u32, k as u32);
    let cfg = config(routing, h, i, t);
    let Some(layer) = block_layer_here(&g, cfg, &w, test) else {
        return;
    };
    let d = case(&routing, t, 1235);
    let x = values(&mut SplitMix64(1236), t * h, 1.0);
    let mut tally = Tally::new(&g);
    check(&mut tally, &layer, &w.host, &d, &x, || {
        "checkpoint-shaped".into()
    });
    tally.report(test);
    let Some(dir) = std::env::var_os("FLASHINFER_RS_FP8_BLOCKS_EXPORT") else {
        eprintln!(
            "{test}: FLASHINFER_RS_FP8_BLOCKS_EXPORT unset: nothing written for transformers"
        );
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = run_once(&g, &layer, &d, &x);
    let bits = |v: &[f32]| -> Vec<u8> {
        v.iter()
            .flat_map(|&x| bf16::from_f32(x).to_bits().to_le_bytes())
            .collect()
    };
    let f32s = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let codes = |v: &[E4m3]| -> Vec<u8> { v.iter().map(|c| c.0).collect() };
    let ids: Vec<u8> = d
        .want
        .ids
        .iter()
        .flat_map(|&v| (v as i32).to_le_bytes())
        .collect();
    let meta = format!(
        "{{\"tokens\": {t}, \"hidden\": {h}, \"intermediate\": {i}, \"experts\": {e}, \"top_k\": {k}}}\n"
    );
    for (name, bytes) in [
        ("meta.json", meta.into_bytes()),
        ("hidden.bf16", bits(&x)),
        ("ids.i32", ids),
        ("weights.f32", f32s(&d.want.weights)),
        ("gate.e4m3", codes(&gate)),
        ("up.e4m3", codes(&up)),
        ("down.e4m3", codes(&down)),
        ("gate.scale.f32", f32s(&gate_s)),
        ("up.scale.f32", f32s(&up_s)),
        ("down.scale.f32", f32s(&down_s)),
        ("output.bf16", bits(&out)),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    eprintln!(
        "{test}: wrote the block's operands and output to {}",
        dir.display()
    );
}
