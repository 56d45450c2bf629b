//! The Hopper MoE layer (`cutlass::CutlassMoe`) timed on one GPU, against its own capture-off
//! run and the GPU's physical limits; the PyTorch layer a user would write is timed by
//! scripts/bench_torch_moe.py in the same session (BENCHMARKS.md, section 7).
//!
//!     bash scripts/gpu-pack.sh && bash gpu-pack/bench.sh layer     # on the GPU machine
//!     bash gpu-pack/bench.sh layer deepseek                          # one layer (qwen3, deepseek)
//!
//! A layer's name runs that layer only (on an H200 the Qwen3 layer takes about 6 s, the
//! DeepSeek-V3-sized one about a minute, mostly filling its 22.5 GB of weights and timing).
//! `MOE_LAYER_TOKENS=1,8,64` times those sizes only (any sizes: 1024,2048 too), for a short call;
//! `MOE_LAYER_PROFILE=1` times nothing and makes one call of each layer per size inside the
//! profiler's range instead (`bash scripts/layer-profile.sh`: where a call's time goes).
//!
//! Layers: a Qwen3-30B-A3B layer (128 experts, top-8, hidden 2048, intermediate 768) and a
//! DeepSeek-V3-sized one in bf16 (256 experts, top-8, hidden 7168, intermediate 2048), routed
//! from bf16 logits by the layer's top-k
//! router (Renormalize). Timing: CUDA events around CUDA-graph launches of 20 back-to-back
//! layer calls (fewer where 20 would take over 5 ms: as many as fill 5 ms by one eager call's
//! time, at least one), 5 warm-up replays, 30 timed, capture on and off interleaved replay by
//! replay, median, of the layer as `CutlassMoe::new` makes it (the decode kernels up to its
//! `DECODE_MAX_TOKENS` limit for the experts' size, else the grouped GEMMs with tactics chosen
//! per call). Beside it, the fp8 per-tensor layer on the same shapes (`CutlassMoe::new_fp8`, in a
//! build with `sm90-moe-fp8`; capture off; its weights are half the bytes), with its decode
//! kernels forced and its grouped GEMMs forced (tactics per call) up to 64 tokens (the two sides
//! of `FP8_DECODE_MAX_TOKENS`), and the fp8
//! block-scale layer (`CutlassMoe::new_fp8_blocks`: DeepSeek-V3's fp8 format, one scale per
//! 128x128 block, activations quantised per 128 inside; capture off) and its decode kernels
//! forced up to 64 tokens (`CutlassSchedule::DecodeUpTo`, capture off) and its GEMM with the
//! fastest fixed pair of its two tiles (128x64, 64x64; searched as below), the bf16 decode
//! kernels alone up to 64 tokens (`CutlassSchedule::DecodeUpTo`,
//! capture off) and the fastest fixed tactic pair of the grouped GEMMs at that size
//! (`CutlassSchedule::Tactics`, found by a search per GEMM, capture off, 10 replays each;
//! every timing to stderr, and each layer's output digest at each size: the bits of one call's
//! output hashed, equal across builds whose kernels compute the same bits). The limits:
//! bytes of expert weights the step must read (the experts its tokens hit, counted from the
//! replay) / HBM bandwidth, and FLOPs (2 x tokens x top-k x 3 x hidden x intermediate) / dense
//! bf16 tensor-core peak.
use std::sync::Arc;

use flashinfer_rs::cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashinfer_rs::cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits,
};
use flashinfer_rs::cutlass::{
    CutlassBatch, CutlassBlockScales, CutlassElement, CutlassFp8Scales, CutlassKernels, CutlassMoe,
    CutlassMoeConfig, CutlassRouting, CutlassSchedule, CutlassTactic, CutlassWeights,
    CutlassWorkspace, WeightBuffer,
};
use flashinfer_rs::fused::E4m3;
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::SplitMix64;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::ReplayView;

const TOKENS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 512, 4096];
/// The decode kernels are timed alone (every call) up to this many tokens.
const DECODE_TIMED: usize = 64;
/// Calls a timed graph holds, at most: fewer where that many would take longer than
/// `GRAPH_US` (`calls_per_graph`).
const CALLS: usize = 20;
/// A timed graph's length worth having: its launch (a few microseconds) is under 0.1% of it.
/// Past it more calls a graph only add device time: at 4096 DeepSeek-V3-sized tokens (14 ms a
/// call) 35 replays of graphs of 20 take 10 s a variant, of one call 0.5 s.
const GRAPH_US: f64 = 5000.0;
const REPS: usize = 30;
const WARMUP: usize = 5;
/// Replays per tactic in the search (capture off only).
const SEARCH_REPS: usize = 10;

struct Gpu {
    stream: Arc<CudaStream>,
    start: CudaEvent,
    end: CudaEvent,
    /// HBM bandwidth (B/s) and dense bf16 tensor-core peak (FLOP/s) of this GPU, if known.
    limits: Option<(f64, f64)>,
}

/// Spec-sheet limits: HBM bandwidth and dense bf16 peak of the SXM parts.
fn limits(name: &str) -> Option<(f64, f64)> {
    if name.contains("H200") {
        Some((4.8e12, 989e12))
    } else if name.contains("H100") {
        Some((3.35e12, 989e12))
    } else {
        None
    }
}

/// `n` pseudo-random bf16 values of magnitude `scale`, made on the device from a 16 Mi block
/// copied over and over (uploading tens of GB from the host would take minutes).
fn device_values(g: &Gpu, n: usize, scale: f32, seed: u64) -> CudaSlice<bf16> {
    device_fill(g, n, seed, |u| bf16::from_f32(u * scale))
}

/// `n` values `make(u)` of pseudo-random `u` in [-1, 1), as [`device_values`] makes them.
fn device_fill<T: DeviceRepr + ValidAsZeroBits + Copy>(
    g: &Gpu,
    n: usize,
    seed: u64,
    make: impl Fn(f32) -> T,
) -> CudaSlice<T> {
    let mut rng = SplitMix64(seed);
    let block: Vec<T> = (0..n.min(1 << 24))
        .map(|_| make(rng.unit() as f32 * 2.0 - 1.0))
        .collect();
    let block = g.stream.clone_htod(&block).unwrap();
    let mut out = g.stream.alloc_zeros::<T>(n).unwrap();
    let mut at = 0;
    while at < n {
        let len = block.len().min(n - at);
        g.stream
            .memcpy_dtod(&block.slice(..len), &mut out.slice_mut(at..at + len))
            .unwrap();
        at += len;
    }
    out
}

struct Model {
    /// What the command line names it by.
    key: &'static str,
    name: &'static str,
    experts: usize,
    top_k: usize,
    hidden: usize,
    inter: usize,
}

/// One size's inputs and outputs.
struct Batch {
    tokens: usize,
    logits: CudaSlice<bf16>,
    x: CudaSlice<bf16>,
    out: CudaSlice<bf16>,
    replay: CudaSlice<i16>,
}

fn forward<W: WeightBuffer>(
    g: &Gpu,
    layer: &CutlassMoe<W>,
    ws: &mut CutlassWorkspace,
    b: &mut Batch,
    capture: bool,
) where
    W::Element: CutlassElement,
{
    let k = layer.config().routing.top_k as usize;
    let batch = CutlassBatch {
        num_tokens: b.tokens,
        routing: CutlassRouting::Logits {
            logits: (&b.logits).into(),
            bias: None,
        },
        hidden_states: b.x.as_view(),
    };
    let mut view = ReplayView::from_slice(&mut b.replay, k).unwrap();
    layer
        .forward(
            &g.stream,
            batch,
            &mut b.out.as_view_mut(),
            ws,
            capture.then_some(&mut view),
        )
        .unwrap();
}

/// FNV-1a over the bits of one eager call's output (capture off): two builds whose kernels
/// compute the same bits print the same digest at the same size, so a candidate that claims
/// the same bits as main is checked by its bench log beside main's (the inputs are seeded).
fn output_digest<W: WeightBuffer>(
    g: &Gpu,
    layer: &CutlassMoe<W>,
    ws: &mut CutlassWorkspace,
    b: &mut Batch,
) -> String
where
    W::Element: CutlassElement,
{
    forward(g, layer, ws, b, false);
    let out = g.stream.clone_dtoh(&b.out).unwrap();
    let digest = out.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, x| {
        (h ^ u64::from(x.to_bits())).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{digest:016x}")
}

/// How many calls a timed graph of this layer holds: `CALLS`, or as many as fill `GRAPH_US`
/// by one eager call's time (after one warm-up call), at least one.
fn calls_per_graph<W: WeightBuffer>(
    g: &Gpu,
    layer: &CutlassMoe<W>,
    ws: &mut CutlassWorkspace,
    b: &mut Batch,
) -> usize
where
    W::Element: CutlassElement,
{
    forward(g, layer, ws, b, false);
    g.start.record(&g.stream).unwrap();
    forward(g, layer, ws, b, false);
    g.end.record(&g.stream).unwrap();
    g.end.synchronize().unwrap();
    let us = g.start.elapsed_ms(&g.end).unwrap() as f64 * 1000.0;
    ((GRAPH_US / us).ceil() as usize).clamp(1, CALLS)
}

/// Median microseconds per layer call of graphs of `calls_per_graph` calls, one graph per
/// entry of `capture` (replay on or off), replayed in turn `reps` times after the warm-up.
fn time_graphs<W: WeightBuffer>(
    g: &Gpu,
    layer: &CutlassMoe<W>,
    ws: &mut CutlassWorkspace,
    b: &mut Batch,
    capture: &[bool],
    reps: usize,
) -> Vec<f64>
where
    W::Element: CutlassElement,
{
    let calls = calls_per_graph(g, layer, ws, b);
    let graphs: Vec<_> = capture
        .iter()
        .map(|&on| {
            g.stream
                .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                .unwrap();
            for _ in 0..calls {
                forward(g, layer, ws, b, on);
            }
            g.stream
                .end_capture(CUgraphInstantiate_flags(0))
                .unwrap()
                .expect("a graph")
        })
        .collect();
    let mut times = vec![Vec::new(); graphs.len()];
    for rep in 0..WARMUP + reps {
        for (graph, times) in graphs.iter().zip(&mut times) {
            g.start.record(&g.stream).unwrap();
            graph.launch().unwrap();
            g.end.record(&g.stream).unwrap();
            g.end.synchronize().unwrap();
            if rep >= WARMUP {
                times.push(g.start.elapsed_ms(&g.end).unwrap() as f64 * 1000.0 / calls as f64);
            }
        }
    }
    times.into_iter().map(median).collect()
}

/// The fastest fixed tactic pair at this size, capture off: GEMM 1's tactics with GEMM 2's
/// first, then GEMM 2's with the best of those: n1 + n2 timings instead of n1 x n2. The GEMMs
/// are separate kernels, so each one's best should not depend much on the other's tactic, but
/// this is a search by coordinate, not the full grid: it can miss a pair whose GEMMs interact.
/// Every timing goes to stderr, for the log, labelled `what`.
fn search_tactics<W: WeightBuffer>(
    g: &Gpu,
    what: &str,
    new_layer: &dyn Fn((u32, u32)) -> CutlassMoe<W>,
    tactics: (&[CutlassTactic], &[CutlassTactic]),
    ws: &mut CutlassWorkspace,
    b: &mut Batch,
) -> (f64, (u32, u32))
where
    W::Element: CutlassElement,
{
    let counts = (tactics.0.len() as u32, tactics.1.len() as u32);
    let mut time = |pair: (u32, u32)| {
        let t = time_graphs(g, &new_layer(pair), ws, b, &[false], SEARCH_REPS)[0];
        // The tiles by name too: a log read later need not know the runner's tactic order.
        eprintln!(
            "tokens {}: {what} tactics {}/{} ({} / {}): {t:.1} us",
            b.tokens, pair.0, pair.1, tactics.0[pair.0 as usize], tactics.1[pair.1 as usize]
        );
        t
    };
    let best = |times: Vec<(f64, (u32, u32))>| {
        times
            .into_iter()
            .min_by(|x, y| x.0.total_cmp(&y.0))
            .unwrap()
    };
    let (_, (a, _)) = best((0..counts.0).map(|a| (time((a, 0)), (a, 0))).collect());
    best((0..counts.1).map(|c| (time((a, c)), (a, c))).collect())
}

/// What `layer`'s own rule takes at `t` tokens, tactics by index and tile, for the log.
fn rule<W: WeightBuffer>(layer: &CutlassMoe<W>, t: usize) -> String
where
    W::Element: CutlassElement,
{
    match layer.kernels_for(t).unwrap() {
        CutlassKernels::Gemms(a, c) => {
            let (t1, t2) = layer.tactics().unwrap();
            format!("tactics {a}/{c} ({} / {})", t1[a as usize], t2[c as usize])
        }
        other => format!("{other:?}"),
    }
}

/// `MOE_LAYER_PROFILE=1`: no timing; one call of each layer per size, inside the profiler's
/// range (`ncu --profile-from-start off`, scripts/layer-profile.sh).
fn profiling() -> bool {
    std::env::var("MOE_LAYER_PROFILE").is_ok_and(|v| v == "1")
}

/// `f` between cuProfilerStart and cuProfilerStop (the calls a profiler started with its
/// collection off records).
fn profiler_range(f: impl FnOnce()) {
    // SAFETY: both take no arguments and act on the current context, which main made current.
    let start = unsafe { sys::cuProfilerStart() };
    assert_eq!(start, sys::CUresult::CUDA_SUCCESS, "cuProfilerStart");
    f();
    let stop = unsafe { sys::cuProfilerStop() };
    assert_eq!(stop, sys::CUresult::CUDA_SUCCESS, "cuProfilerStop");
}

/// The sizes to time: `MOE_LAYER_TOKENS` (a comma-separated list, ascending; sizes outside
/// the table's, e.g. 1024 and 2048 where a tile's band ends, are timed too), else [`TOKENS`].
/// Each with its data's seed: a table size's index in [`TOKENS`] (so its data is every run's
/// same), another size's own value past them.
fn sizes() -> Vec<(u64, usize)> {
    let seed = |t: usize| {
        TOKENS
            .iter()
            .position(|&s| s == t)
            .map_or(100 + t as u64, |n| n as u64)
    };
    match std::env::var("MOE_LAYER_TOKENS") {
        Ok(list) => list
            .split(',')
            .map(|t| {
                let t = t
                    .trim()
                    .parse()
                    .expect("MOE_LAYER_TOKENS: comma-separated token counts");
                assert!(t > 0, "MOE_LAYER_TOKENS: token counts start at 1");
                (seed(t), t)
            })
            .collect(),
        Err(_) => TOKENS.iter().map(|&t| (seed(t), t)).collect(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench_model(g: &Gpu, m: &Model) {
    let (e, k, h, i) = (m.experts, m.top_k, m.hidden, m.inter);
    let sizes = sizes();
    let fc1 = device_values(g, e * 2 * i * h, 2.0 / (h as f32).sqrt(), 1);
    let fc2 = device_values(g, e * h * i, 2.0 / (i as f32).sqrt(), 2);
    let config = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, e as u32, k as u32),
        hidden_size: h,
        intermediate_size: i,
        max_tokens: sizes.iter().map(|&(_, t)| t).max().unwrap_or(1),
    };
    let weights = || CutlassWeights {
        fc1: fc1.as_view(),
        fc2: fc2.as_view(),
    };
    // What a user gets: the layer's own per-call tactic choice.
    let layer = CutlassMoe::new(config, weights()).unwrap();
    let (t1, t2) = layer.tactics().unwrap();
    let counts = (t1.len() as u32, t2.len() as u32);
    let fixed = |pair: (u32, u32)| {
        CutlassMoe::with_schedule(config, weights(), CutlassSchedule::Tactics(pair.0, pair.1))
            .unwrap()
    };
    let mut ws = layer.workspace(&g.stream).unwrap();
    let decode =
        CutlassMoe::with_schedule(config, weights(), CutlassSchedule::DecodeUpTo(DECODE_TIMED))
            .unwrap();
    let mut decode_ws = decode.workspace(&g.stream).unwrap();
    // fp8 codes uniform over e4m3's range, scaled to the bf16 weights' magnitudes; the layer as
    // `new_fp8` makes it, its decode kernels forced and its grouped GEMMs forced (tactics per
    // call), all three on the same weights.
    let fp8_codes = flashinfer_rs::build_info().cutlass_moe_fp8.then(|| {
        let code = |u: f32| E4m3::from_f32(u * 448.0);
        (
            device_fill(g, e * 2 * i * h, 3, code),
            device_fill(g, e * h * i, 4, code),
        )
    });
    let fp8_layer = |schedule| {
        let (fc1, fc2) = fp8_codes.as_ref()?;
        let scales = CutlassFp8Scales {
            fc1_weights: vec![2.0 / (h as f32).sqrt() / 448.0; e],
            fc2_weights: vec![2.0 / (i as f32).sqrt() / 448.0; e],
            fc1_input: 1.0 / 448.0,
            fc2_input: 4.0 / 448.0,
        };
        let weights = CutlassWeights {
            fc1: fc1.as_view(),
            fc2: fc2.as_view(),
        };
        let layer = CutlassMoe::fp8_with_schedule(config, weights, &scales, schedule).unwrap();
        let ws = layer.workspace(&g.stream).unwrap();
        Some((layer, ws))
    };
    let mut fp8 = fp8_layer(CutlassSchedule::Fastest);
    let mut fp8_decode = fp8_layer(CutlassSchedule::DecodeUpTo(DECODE_TIMED));
    let mut fp8_gemms = fp8_layer(CutlassSchedule::DecodeUpTo(0));
    // The same codes' magnitudes with one scale per 128x128 block; the layer as
    // `new_fp8_blocks` makes it, and the decode kernels forced (both on the same weights).
    let block_codes = flashinfer_rs::build_info().cutlass_moe_fp8.then(|| {
        let code = |u: f32| E4m3::from_f32(u * 448.0);
        (
            device_fill(g, e * 2 * i * h, 5, code),
            device_fill(g, e * h * i, 6, code),
        )
    });
    let block_layer = |schedule| {
        let (fc1, fc2) = block_codes.as_ref()?;
        let n = |rows: usize, cols: usize| e * (rows / 128) * (cols / 128);
        let scales = CutlassBlockScales {
            fc1: g
                .stream
                .clone_htod(&vec![2.0 / (h as f32).sqrt() / 448.0; n(2 * i, h)])
                .unwrap(),
            fc2: g
                .stream
                .clone_htod(&vec![2.0 / (i as f32).sqrt() / 448.0; n(h, i)])
                .unwrap(),
        };
        let weights = CutlassWeights {
            fc1: fc1.as_view(),
            fc2: fc2.as_view(),
        };
        let layer = CutlassMoe::fp8_blocks_with_schedule(config, weights, scales, schedule);
        let layer = layer.unwrap();
        let ws = layer.workspace(&g.stream).unwrap();
        Some((layer, ws))
    };
    let mut blocks = block_layer(CutlassSchedule::Fastest);
    let mut block_decode = block_layer(CutlassSchedule::DecodeUpTo(DECODE_TIMED));
    // The block-scale GEMM's tiles (128x64, 64x64), fixed per GEMM.
    let block_tiles = blocks.as_ref().map(|(l, _)| l.tactics().unwrap());
    let block_fixed = |pair: (u32, u32)| {
        block_layer(CutlassSchedule::Tactics(pair.0, pair.1))
            .expect("a block-scale layer")
            .0
    };
    println!(
        "\n### {} ({e} experts, top-{k}, hidden {h}, intermediate {i}; {} x {} tactics)\n",
        m.name, counts.0, counts.1
    );
    println!("| tokens | layer, capture on (us) | capture off (us) | on / off | fp8 layer (us) | bf16 / fp8 | fp8 HBM use | fp8 decode kernels (us) | fp8 GEMMs (us) | fp8 block-scale layer (us) | bf16 / block | block HBM use | block decode kernels (us) | block GEMM, best tiles (us) | which | decode kernels (us) | best fixed tactics (us) | which | experts read | HBM use on their weights | dense bf16 peak |");
    println!(
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---:|---:|---:|"
    );
    for (n, t) in sizes {
        let mut b = Batch {
            tokens: t,
            logits: device_values(g, t * e, 4.0, 10 + n),
            x: device_values(g, t * h, 1.0, 20 + n),
            out: g.stream.alloc_zeros::<bf16>(t * h).unwrap(),
            replay: g.stream.alloc_zeros::<i16>(t * k).unwrap(),
        };
        if profiling() {
            // One eager call of each layer (as `new`, `new_fp8` and `new_fp8_blocks` make it)
            // inside the profiler's range, after one outside it (first-call costs).
            let mut calls = |b: &mut Batch| {
                forward(g, &layer, &mut ws, b, false);
                if let Some((layer, ws)) = fp8.as_mut() {
                    forward(g, layer, ws, b, false);
                }
                if let Some((layer, ws)) = blocks.as_mut() {
                    forward(g, layer, ws, b, false);
                }
                g.stream.synchronize().unwrap();
            };
            calls(&mut b);
            profiler_range(|| calls(&mut b));
            println!("| {t} | profiled: one call each of the bf16, fp8 and block-scale layers |");
            continue;
        }
        let (best, pair) = search_tactics(g, "bf16", &fixed, (&t1, &t2), &mut ws, &mut b);
        let times = time_graphs(g, &layer, &mut ws, &mut b, &[true, false], REPS);
        let (on, off) = (times[0], times[1]);
        let decoded = if t <= DECODE_TIMED {
            let us = time_graphs(g, &decode, &mut decode_ws, &mut b, &[false], REPS)[0];
            format!("{us:.1}")
        } else {
            "-".into()
        };
        let routed = g.stream.clone_dtoh(&b.replay).unwrap();
        let mut hit = vec![false; e];
        routed.iter().for_each(|&x| hit[x as usize] = true);
        let read = hit.iter().filter(|&&x| x).count();
        let bytes = read as f64 * 3.0 * (h * i) as f64 * 2.0;
        // The fp8 layer routes the same logits: the same experts, half the bytes.
        let fp8_us = fp8
            .as_mut()
            .map(|(layer, ws)| time_graphs(g, layer, ws, &mut b, &[false], REPS)[0]);
        let block_us = blocks
            .as_mut()
            .map(|(layer, ws)| time_graphs(g, layer, ws, &mut b, &[false], REPS)[0]);
        // Time, bf16 / it, and HBM use on its weights' bytes (half the bf16 ones; the block
        // scales add 1/8192 of that).
        let columns = |us: Option<f64>| match us {
            Some(us) => (
                format!("{us:.1}"),
                format!("{:.2}x", off / us),
                g.limits.map_or("n/a".into(), |(bw, _)| {
                    format!("{:.0}%", 100.0 * bytes / 2.0 / (us * 1e-6) / bw)
                }),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let (fp8_time, fp8_ratio, fp8_hbm) = columns(fp8_us);
        let (block_time, block_ratio, block_hbm) = columns(block_us);
        // A forced layer's time (capture off) as a column, up to DECODE_TIMED tokens.
        let mut timed = |layer: Option<&mut (CutlassMoe<_>, CutlassWorkspace)>| match layer {
            Some((layer, ws)) if t <= DECODE_TIMED => {
                format!(
                    "{:.1}",
                    time_graphs(g, layer, ws, &mut b, &[false], REPS)[0]
                )
            }
            _ => "-".into(),
        };
        let block_decoded = timed(block_decode.as_mut());
        let fp8_decoded = timed(fp8_decode.as_mut());
        let fp8_gemmed = timed(fp8_gemms.as_mut());
        let (block_best, block_which) = match (blocks.as_mut(), &block_tiles) {
            (Some((_, ws)), Some((b1, b2))) => {
                let (us, pair) =
                    search_tactics(g, "block-scale", &block_fixed, (b1, b2), ws, &mut b);
                (
                    format!("{us:.1}"),
                    format!("{} / {}", b1[pair.0 as usize], b2[pair.1 as usize]),
                )
            }
            _ => ("-".into(), "-".into()),
        };
        let flops = 2.0 * (t * k) as f64 * 3.0 * (h * i) as f64;
        let (hbm, peak) = match g.limits {
            Some((bw, fl)) => (
                format!("{:.0}%", 100.0 * bytes / (on * 1e-6) / bw),
                format!("{:.1}%", 100.0 * flops / (on * 1e-6) / fl),
            ),
            None => ("n/a".into(), "n/a".into()),
        };
        let fp8_digest = fp8.as_mut().map(|(l, ws)| output_digest(g, l, ws, &mut b));
        let block_digest = blocks
            .as_mut()
            .map(|(l, ws)| output_digest(g, l, ws, &mut b));
        eprintln!(
            "output digest, {} at {t} tokens: bf16 {}, fp8 {}, block scale {}",
            m.key,
            output_digest(g, &layer, &mut ws, &mut b),
            fp8_digest.as_deref().unwrap_or("-"),
            block_digest.as_deref().unwrap_or("-"),
        );
        // What each layer's own rule takes here (`kernels_for`, the rule its calls apply).
        eprintln!(
            "per-call rule, {} at {t} tokens: bf16 {}, fp8 {}, block scale {}",
            m.key,
            rule(&layer, t),
            fp8.as_ref().map_or("-".into(), |(l, _)| rule(l, t)),
            blocks.as_ref().map_or("-".into(), |(l, _)| rule(l, t)),
        );
        println!(
            "| {t} | {on:.1} | {off:.1} | {:.3} | {fp8_time} | {fp8_ratio} | {fp8_hbm} | {fp8_decoded} | {fp8_gemmed} | {block_time} | {block_ratio} | {block_hbm} | {block_decoded} | {block_best} | {block_which} | {decoded} | {best:.1} | {} / {} | {read} | {hbm} | {peak} |",
            on / off,
            t1[pair.0 as usize],
            t2[pair.1 as usize]
        );
    }
}

fn main() {
    if flashinfer_rs::cuda_device_count() == 0 || !flashinfer_rs::build_info().cutlass_moe {
        eprintln!("moe_layer bench: needs a Hopper GPU and the CUTLASS MoE (--features sm90-moe)");
        return;
    }
    let ctx = flashinfer_rs::cuda_context(0).unwrap();
    // Recording a graph must not take cudarc's per-buffer events.
    unsafe { ctx.disable_event_tracking() };
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let name = ctx.name().unwrap();
    let g = Gpu {
        stream: ctx.new_stream().unwrap(),
        start: ctx.new_event(timing).unwrap(),
        end: ctx.new_event(timing).unwrap(),
        limits: limits(&name),
    };
    println!("## 7. The MoE layer on Hopper (`cutlass::CutlassMoe`)\n");
    println!(
        "GPU: {name}; limits used: {}.",
        g.limits
            .map_or("none known for this GPU".to_string(), |(bw, fl)| format!(
                "{:.2} TB/s HBM, {:.0} TFLOP/s dense bf16",
                bw / 1e12,
                fl / 1e12
            ))
    );
    let models = [
        Model {
            key: "qwen3",
            name: "Qwen3-30B-A3B layer",
            experts: 128,
            top_k: 8,
            hidden: 2048,
            inter: 768,
        },
        Model {
            key: "deepseek",
            name: "DeepSeek-V3-sized layer, bf16",
            experts: 256,
            top_k: 8,
            hidden: 7168,
            inter: 2048,
        },
    ];
    // `cargo bench` passes `--bench`; any other argument names the layers to run.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if let Some(unknown) = wanted
        .iter()
        .find(|w| !models.iter().any(|m| m.key == w.as_str()))
    {
        eprintln!("moe_layer bench: no layer {unknown:?} (qwen3, deepseek)");
        std::process::exit(2);
    }
    for m in models
        .iter()
        .filter(|m| wanted.is_empty() || wanted.iter().any(|w| w == m.key))
    {
        bench_model(&g, m);
    }
}
