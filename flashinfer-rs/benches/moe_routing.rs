//! Routing and capture benchmarks on one GPU, every number a ratio measured in the same run.
//!
//!     bash scripts/gpu-pack.sh && bash gpu-pack/bench.sh     # on the GPU machine
//!
//! Timing: CUDA events around CUDA-graph launches of N back-to-back calls (so launch gaps do
//! not dominate), warm-up first, variants interleaved replay by replay so clock drift hits
//! both, median and p10..p90 over the repetitions. Prints Markdown tables (BENCHMARKS.md).
use std::sync::Arc;
use std::time::Instant;

use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepBuffer, StepLayout};
use flashinfer_rs::cudarc::driver::sys::{self, CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashinfer_rs::cudarc::driver::{
    CudaContext, CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::oracle::SplitMix64;
use flashinfer_rs::routing::{
    Logits, NoAuxTcOutputs, NoAuxTcRouter, RouteInput, Router, RoutingBuffers, RoutingConfig,
    RoutingMethod, TopKOutputs, TopKRouter,
};
use flashinfer_rs::ReplayView;
use flashinfer_sys as fs;

#[path = "../tests/fixtures/models.rs"]
mod models;
use models::{bench_models, deepseek_v3, qwen3_30b_a3b, topk_bench_models, ModelRouter};

const TOKENS: [usize; 6] = [1, 16, 128, 1024, 8192, 32768];
const REPS: usize = 30;
const WARMUP: usize = 5;

struct Bench {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    start: CudaEvent,
    end: CudaEvent,
}

#[derive(Clone, Copy)]
struct Stat {
    median: f64,
    p10: f64,
    p90: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stat {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

impl Bench {
    /// Milliseconds of one replay of `graph`.
    fn time(&self, graph: &CudaGraph) -> f64 {
        self.start.record(&self.stream).unwrap();
        graph.launch().unwrap();
        self.end.record(&self.stream).unwrap();
        self.end.synchronize().unwrap();
        self.start.elapsed_ms(&self.end).unwrap() as f64
    }

    /// Captures `f` (which enqueues work on the stream) into a graph.
    fn capture(&self, mut f: impl FnMut()) -> CudaGraph {
        self.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .unwrap();
        f();
        self.stream
            .end_capture(CUgraphInstantiate_flags(0))
            .unwrap()
            .unwrap()
    }

    /// Interleaved timings of several graphs: per graph, the per-replay stats divided by `per`.
    fn compare(&self, graphs: &[&CudaGraph], per: f64) -> Vec<Stat> {
        for _ in 0..WARMUP {
            graphs.iter().for_each(|g| {
                self.time(g);
            });
        }
        let mut samples = vec![Vec::new(); graphs.len()];
        for _ in 0..REPS {
            for (i, g) in graphs.iter().enumerate() {
                samples[i].push(self.time(g) * 1000.0 / per);
            }
        }
        samples.into_iter().map(stat).collect()
    }
}

/// Device inputs of a model's router at `t` tokens (random logits; timing does not need separation).
struct Inputs {
    f32: Option<CudaSlice<f32>>,
    bf16: Option<CudaSlice<bf16>>,
    bias: Option<CudaSlice<f32>>,
}

impl Inputs {
    fn new(b: &Bench, s: &ModelRouter, t: usize) -> Inputs {
        let e = s.cfg.num_experts as usize;
        let mut rng = SplitMix64(t as u64);
        let host: Vec<f32> = (0..t * e)
            .map(|_| (rng.unit() * 8.0 - 4.0) as f32)
            .collect();
        let bias = s
            .cfg
            .method
            .needs_bias()
            .then(|| b.stream.clone_htod(&vec![0.01f32; e]).unwrap());
        if s.bf16_logits {
            let h: Vec<bf16> = host.iter().map(|&x| bf16::from_f32(x)).collect();
            Inputs {
                f32: None,
                bf16: Some(b.stream.clone_htod(&h).unwrap()),
                bias,
            }
        } else {
            Inputs {
                f32: Some(b.stream.clone_htod(&host).unwrap()),
                bf16: None,
                bias,
            }
        }
    }
    fn input(&self, t: usize) -> RouteInput<'_> {
        let logits: Logits<'_> = match (&self.f32, &self.bf16) {
            (Some(l), _) => l.into(),
            (_, Some(l)) => l.into(),
            _ => unreachable!(),
        };
        RouteInput {
            logits,
            bias: self.bias.as_ref().map(Into::into),
            num_tokens: t,
        }
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "missed"
    }
}

/// 1. Routing with vs without the replay buffer.
fn replay_overhead(b: &Bench) {
    println!("\n## 1. Replay overhead: routing with vs without `routing_replay_out`\n");
    println!("Per call, median (p10..p90) over {REPS} graph replays of 20 calls; the same raw C ABI launch with a null replay pointer (upstream's path without `routing_replay_out`) and with the replay buffer. Target: ratio <= 1.005.\n");
    println!("| shape | tokens | without replay (us) | with replay (us) | ratio | target |");
    println!("|---|---:|---:|---:|---:|---|");
    const N: usize = 20;
    for s in bench_models() {
        for t in TOKENS {
            let inputs = Inputs::new(b, &s, t);
            let raw = RawRouter::new(b, &s.cfg, &inputs, t);
            let mut replay = b
                .stream
                .alloc_zeros::<i16>(t * s.cfg.top_k as usize)
                .unwrap();
            let replay_ptr = replay.device_ptr_mut(&b.stream).0 as *mut i16;
            // The same launch, once with a null replay pointer (upstream's path without
            // routing_replay_out) and once with the replay buffer.
            let off = b.capture(|| (0..N).for_each(|_| raw.launch(b, std::ptr::null_mut())));
            let on = b.capture(|| (0..N).for_each(|_| raw.launch(b, replay_ptr)));
            let r = b.compare(&[&off, &on], N as f64);
            let ratio = r[1].median / r[0].median;
            println!(
                "| {} | {t} | {:.2} ({:.2}..{:.2}) | {:.2} ({:.2}..{:.2}) | {ratio:.4} | {} |",
                s.name,
                r[0].median,
                r[0].p10,
                r[0].p90,
                r[1].median,
                r[1].p10,
                r[1].p90,
                verdict(ratio <= 1.005)
            );
        }
    }
}

/// 2. A step of L routing calls in a graph: capture off, our zero-copy store, and vLLM's
///    per-layer scratch buffer plus a copy into a token-major buffer.
fn capture_step(b: &Bench) {
    println!("\n## 2. Capture-step overhead: L routing calls per step, inside one CUDA graph\n");
    println!("Per step, median (p10..p90). Target: zero-copy <= 1.01 x capture off.\n");
    println!("| model | L | tokens | capture off (us) | zero-copy store (us) | per-layer copy (us) | zero-copy ratio | per-layer-copy ratio | target |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (name, s) in [
        ("DeepSeek-V3", deepseek_v3()),
        ("Qwen3-30B-A3B", qwen3_30b_a3b()),
    ] {
        let layers = s.moe_layers;
        let router = Router::new(s.cfg).unwrap();
        let k = s.cfg.top_k as usize;
        for t in [1usize, 16, 128, 1024, 8192] {
            let inputs = Inputs::new(b, &s, t);
            let mut bufs = RoutingBuffers::new(&b.stream, &s.cfg, t).unwrap();
            let cap = CaptureConfig::new(layers, t, k);
            let mut store = CaptureStore::new(&b.stream, cap).unwrap();
            // vLLM's design: one scratch [t, k] buffer per layer + a copy kernel per layer into
            // a token-major [t, L, k] buffer.
            let mut scratch: Vec<CudaSlice<i16>> = (0..layers)
                .map(|_| b.stream.alloc_zeros(t * k).unwrap())
                .collect();
            let mut token_major = b.stream.alloc_zeros::<i16>(t * layers * k).unwrap();
            let off = b.capture(|| {
                for _ in 0..layers {
                    router
                        .route(&b.stream, &inputs.input(t), &mut bufs, None)
                        .unwrap();
                }
            });
            let zero_copy = b.capture(|| {
                for l in 0..layers {
                    let mut view = store.replay_view(l).unwrap();
                    router
                        .route(&b.stream, &inputs.input(t), &mut bufs, Some(&mut view))
                        .unwrap();
                }
            });
            let per_layer = b.capture(|| {
                for (l, sc) in scratch.iter_mut().enumerate() {
                    let mut view = ReplayView::from_slice(sc, k).unwrap();
                    router
                        .route(&b.stream, &inputs.input(t), &mut bufs, Some(&mut view))
                        .unwrap();
                    copy_layer_to_token_major(b, sc, &mut token_major, l, layers, t, k);
                }
            });
            let r = b.compare(&[&off, &zero_copy, &per_layer], 1.0);
            let (zc, pl) = (r[1].median / r[0].median, r[2].median / r[0].median);
            println!(
                "| {name} | {layers} | {t} | {:.1} ({:.1}..{:.1}) | {:.1} ({:.1}..{:.1}) | {:.1} ({:.1}..{:.1}) | {zc:.4} | {pl:.3} | {} |",
                r[0].median, r[0].p10, r[0].p90, r[1].median, r[1].p10, r[1].p90, r[2].median, r[2].p10, r[2].p90,
                verdict(zc <= 1.01)
            );
        }
    }
}

/// Layer `l`'s `[t, k]` rows into the token-major `[t, L, k]` buffer: one 2D copy, the
/// per-layer copy of the design we compare against.
fn copy_layer_to_token_major(
    b: &Bench,
    src: &CudaSlice<i16>,
    dst: &mut CudaSlice<i16>,
    l: usize,
    layers: usize,
    t: usize,
    k: usize,
) {
    let e = std::mem::size_of::<i16>();
    let (s, _g1) = src.device_ptr(&b.stream);
    let (d, _g2) = dst.device_ptr_mut(&b.stream);
    let copy = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: std::ptr::null(),
        srcDevice: s,
        srcArray: std::ptr::null_mut(),
        srcPitch: k * e,
        dstXInBytes: l * k * e,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: std::ptr::null_mut(),
        dstDevice: d,
        dstArray: std::ptr::null_mut(),
        dstPitch: layers * k * e,
        WidthInBytes: k * e,
        Height: t,
    };
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, b.stream.cu_stream()) }
        .result()
        .unwrap();
}

/// 3. The step's readback against a plain pinned device-to-host copy of the same bytes.
fn readback(b: &Bench) {
    println!("\n## 3. Readback: a step's asynchronous device-to-host copy\n");
    println!("Store readback: host time from `end_step` to the copy's completion (`wait_for_oldest`), and GPU time (`oldest_copy_gpu_us`: from an event recorded on the compute stream before the staging copy to one on the side stream after the device-to-host copy); peak: a plain pinned `memcpy_dtoh` of the same bytes, host-timed and GPU-timed (events). Target: >= 80% of peak.\n");
    println!("| L x tokens x top_k | bytes | store, host time (GB/s) | peak, host time (GB/s) | ratio | store, GPU time (GB/s) | peak, GPU time (GB/s) | ratio | target (GPU time) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (l, t, k) in [(61usize, 1024usize, 8usize), (61, 8192, 8), (48, 8192, 8)] {
        let bytes = l * t * k * 2;
        let cap = CaptureConfig::new(l, t, k);
        let mut store = CaptureStore::new(&b.stream, cap).unwrap();
        let dev = b.stream.alloc_zeros::<i16>(l * t * k).unwrap();
        let mut host = unsafe { b.ctx.alloc_pinned_with_flags::<i16>(l * t * k, 0) }.unwrap();
        let mut samples = [(); 4].map(|_| Vec::new());
        for i in 0..WARMUP + REPS {
            b.stream.synchronize().unwrap();
            store.begin_step(&b.stream, StepLayout::single(t)).unwrap();
            let t0 = Instant::now();
            store.end_step(&b.stream).unwrap();
            store.wait_for_oldest().unwrap();
            let host_s = t0.elapsed().as_secs_f64();
            let gpu_s = store.oldest_copy_gpu_us().unwrap().unwrap() * 1e-6;
            store.collect().unwrap();
            let t1 = Instant::now();
            b.start.record(&b.stream).unwrap();
            b.stream.memcpy_dtoh(&dev, &mut host).unwrap();
            b.end.record(&b.stream).unwrap();
            b.stream.synchronize().unwrap();
            let peak_host_s = t1.elapsed().as_secs_f64();
            let peak_gpu_s = b.start.elapsed_ms(&b.end).unwrap() as f64 * 1e-3;
            if i >= WARMUP {
                for (v, secs) in samples
                    .iter_mut()
                    .zip([host_s, peak_host_s, gpu_s, peak_gpu_s])
                {
                    v.push(bytes as f64 / secs / 1e9);
                }
            }
        }
        let [oh, ph, og, pg] = samples.map(|v| stat(v).median);
        println!(
            "| {l} x {t} x {k} | {bytes} | {oh:.1} | {ph:.1} | {:.3} | {og:.1} | {pg:.1} | {:.3} | {} |",
            oh / ph,
            og / pg,
            verdict(og / pg >= 0.8)
        );
    }
}

/// 3b. Is the readback hidden? Steps of L routing calls (one graph launch each), back to back:
/// without capture, and with the store's readback of each step in flight while the next step
/// computes (two steps in flight, `collect` of the older one every step).
fn readback_overlap(b: &Bench) {
    println!("\n### 3b. Readback hidden behind the next step\n");
    println!("Host time per step over 200 steps (median of 5 runs); DeepSeek-V3 routing, L = 61. `collect()`: the launch thread waits for and transposes each step; collector thread: the launch thread hands each step's buffer to another thread (`take_oldest`, no wait), which waits and views the layer-major rows (`StepBuffer::rows`) and sends it back (`recycle`). Target: with readback / without <= 1.01.\n");
    println!("| tokens | steps without readback (us/step) | with `collect()` (us/step) | inside `collect()`: waiting + transposing (us/step) | ratio | with a collector thread (us/step) | ratio | target (collector thread) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    let s = deepseek_v3();
    let router = Router::new(s.cfg).unwrap();
    let layers = 61;
    const STEPS: usize = 200;
    for t in [128usize, 1024, 8192] {
        let inputs = Inputs::new(b, &s, t);
        let mut bufs = RoutingBuffers::new(&b.stream, &s.cfg, t).unwrap();
        let cap = CaptureConfig::new(layers, t, 8);
        let mut store = CaptureStore::new(&b.stream, cap).unwrap();
        let step = b.capture(|| {
            for l in 0..layers {
                let mut view = store.replay_view(l).unwrap();
                router
                    .route(&b.stream, &inputs.input(t), &mut bufs, Some(&mut view))
                    .unwrap();
            }
        });
        let (mut plain, mut overlapped, mut collecting) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..5 {
            b.stream.synchronize().unwrap();
            let t0 = Instant::now();
            for _ in 0..STEPS {
                step.launch().unwrap();
            }
            b.stream.synchronize().unwrap();
            plain.push(t0.elapsed().as_secs_f64() * 1e6 / STEPS as f64);
            let t1 = Instant::now();
            let mut in_collect = 0.0;
            for _ in 0..STEPS {
                store.begin_step(&b.stream, StepLayout::single(t)).unwrap();
                step.launch().unwrap();
                store.end_step(&b.stream).unwrap();
                if store.in_flight() == 2 {
                    let c = Instant::now();
                    store.collect().unwrap();
                    in_collect += c.elapsed().as_secs_f64();
                }
            }
            collecting.push(in_collect * 1e6 / STEPS as f64);
            while store.collect().unwrap().is_some() {}
            b.stream.synchronize().unwrap();
            overlapped.push(t1.elapsed().as_secs_f64() * 1e6 / STEPS as f64);
        }
        let threaded: Vec<f64> = (0..5)
            .map(|_| steps_with_a_collector_thread(b, &mut store, &step, t, STEPS))
            .collect();
        let (p, o, c, th) = (
            stat(plain).median,
            stat(overlapped).median,
            stat(collecting).median,
            stat(threaded).median,
        );
        println!(
            "| {t} | {p:.1} | {o:.1} | {c:.1} | {:.4} | {th:.1} | {:.4} | {} |",
            o / p,
            th / p,
            verdict(th / p <= 1.01)
        );
    }
}

/// Host time per step (us) of `steps` steps whose readback is read on a collector thread:
/// the launch thread hands each step's buffer over and recycles what comes back, waiting only
/// when every buffer is lent out.
fn steps_with_a_collector_thread(
    b: &Bench,
    store: &mut CaptureStore,
    step: &CudaGraph,
    t: usize,
    steps: usize,
) -> f64 {
    let (to_collector, inbox) = std::sync::mpsc::channel::<StepBuffer>();
    let (give_back, returned) = std::sync::mpsc::channel::<StepBuffer>();
    b.stream.synchronize().unwrap();
    let t0 = Instant::now();
    std::thread::scope(|s| {
        s.spawn(move || {
            for buffer in inbox {
                let rows = buffer.rows().unwrap();
                std::hint::black_box((rows.ids.first(), rows.ids.last()));
                give_back.send(buffer).unwrap();
            }
        });
        for _ in 0..steps {
            store.begin_step(&b.stream, StepLayout::single(t)).unwrap();
            step.launch().unwrap();
            while let Err(flashinfer_rs::Error::Backpressure { .. }) = store.end_step(&b.stream) {
                store.recycle(returned.recv().unwrap()).unwrap();
            }
            if store.in_flight() == 2 {
                to_collector.send(store.take_oldest().unwrap()).unwrap();
            }
            while let Ok(buffer) = returned.try_recv() {
                store.recycle(buffer).unwrap();
            }
        }
        while let Some(buffer) = store.take_oldest() {
            to_collector.send(buffer).unwrap();
        }
        drop(to_collector);
        for buffer in returned.iter() {
            store.recycle(buffer).unwrap();
        }
    });
    b.stream.synchronize().unwrap();
    t0.elapsed().as_secs_f64() * 1e6 / steps as f64
}

/// 2b. Weights capture: whole steps with readback in flight, the store capturing ids and
/// weights against one capturing ids only (the router writes its weights either way: into the
/// store's views, or into the buffer the MoE reads).
fn weights_capture(b: &Bench) {
    println!("\n### 2b. Weights capture: a step with ids and weights captured against ids only\n");
    println!("Host time per step over 200 steps with readback in flight (begin_step, a graph of L `TopKRouter::route` calls, end_step; then `collect()` on the launch thread, or each step's buffer read on a collector thread as in 3b), median of 5 interleaved runs; DeepSeek-V3, L = 61. Target: with weights / ids only <= 1.01.\n");
    println!("| tokens | ids only, `collect()` (us/step) | ids + weights, `collect()` (us/step) | ratio | ids only, collector thread (us/step) | ids + weights, collector thread (us/step) | ratio | target (collector thread) |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    let s = deepseek_v3();
    let router = TopKRouter::new(s.cfg).unwrap();
    let (layers, k) = (61, s.cfg.top_k as usize);
    const STEPS: usize = 200;
    for t in [128usize, 1024, 8192] {
        let inputs = Inputs::new(b, &s, t);
        let mut weights = b.stream.alloc_zeros::<f32>(t * k).unwrap();
        let mut stores = [false, true].map(|capture_weights| {
            CaptureStore::new(
                &b.stream,
                CaptureConfig::new(layers, t, k).with_weights(capture_weights),
            )
            .unwrap()
        });
        let graphs: Vec<CudaGraph> = stores
            .iter_mut()
            .map(|store| {
                b.capture(|| {
                    for l in 0..layers {
                        let views = store.layer_views(l).unwrap();
                        let (mut ids, captured) = (views.ids, views.weights);
                        let mut out = TopKOutputs {
                            ids: None,
                            weights_f32: Some(captured.unwrap_or_else(|| weights.as_view_mut())),
                            weights_bf16: None,
                        };
                        router
                            .route(&b.stream, &inputs.input(t), &mut out, Some(&mut ids))
                            .unwrap();
                    }
                })
            })
            .collect();
        // [ids only, ids + weights] x [collect() on the launch thread, a collector thread].
        let mut per_step: [[Vec<f64>; 2]; 2] = Default::default();
        for _ in 0..5 {
            for (i, (store, graph)) in stores.iter_mut().zip(&graphs).enumerate() {
                per_step[i][0].push(steps_collected_on_the_launch_thread(
                    b, store, graph, t, STEPS,
                ));
                per_step[i][1].push(steps_with_a_collector_thread(b, store, graph, t, STEPS));
            }
        }
        let [[ids_c, w_c], [ids_t, w_t]] =
            [0, 1].map(|how| [0, 1].map(|i| stat(std::mem::take(&mut per_step[i][how])).median));
        println!(
            "| {t} | {ids_c:.1} | {w_c:.1} | {:.4} | {ids_t:.1} | {w_t:.1} | {:.4} | {} |",
            w_c / ids_c,
            w_t / ids_t,
            verdict(w_t / ids_t <= 1.01)
        );
    }
}

/// Host time per step (us) of `steps` steps whose readback `collect()` waits for and
/// transposes on the launch thread, two steps in flight.
fn steps_collected_on_the_launch_thread(
    b: &Bench,
    store: &mut CaptureStore,
    step: &CudaGraph,
    t: usize,
    steps: usize,
) -> f64 {
    b.stream.synchronize().unwrap();
    let t0 = Instant::now();
    for _ in 0..steps {
        store.begin_step(&b.stream, StepLayout::single(t)).unwrap();
        step.launch().unwrap();
        store.end_step(&b.stream).unwrap();
        if store.in_flight() == 2 {
            store.collect().unwrap();
        }
    }
    while store.collect().unwrap().is_some() {}
    b.stream.synchronize().unwrap();
    t0.elapsed().as_secs_f64() * 1e6 / steps as f64
}

/// 4. DeepSeek-V3 routing against upstream's NoAuxTc router, and bandwidth at large T.
fn peers(b: &Bench) {
    println!(
        "\n## 4. DeepSeek-V3 routing against upstream's NoAuxTc router (same GPU, same run)\n"
    );
    println!("Per call, median. Effective bandwidth = logits bytes / time; copy = a device-to-device copy of the logits, (read + write) / time.\n");
    println!("| tokens | ours (us) | NoAuxTc (us) | ours / NoAuxTc | target (<= 1) | logits GB/s | D2D copy GB/s | fraction |");
    println!("|---:|---:|---:|---:|---|---:|---:|---:|");
    let s = deepseek_v3();
    let router = Router::new(s.cfg).unwrap();
    const N: usize = 10;
    for t in TOKENS {
        let inputs = Inputs::new(b, &s, t);
        let mut bufs = RoutingBuffers::new(&b.stream, &s.cfg, t).unwrap();
        let mut replay = b.stream.alloc_zeros::<i16>(t * 8).unwrap();
        let mut values = b.stream.alloc_zeros::<f32>(t * 8).unwrap();
        let mut indices = b.stream.alloc_zeros::<i32>(t * 8).unwrap();
        let mut copy_dst = b.stream.alloc_zeros::<f32>(t * 256).unwrap();
        let logits = inputs.f32.as_ref().unwrap();
        let ours = b.capture(|| {
            let mut view = ReplayView::from_slice(&mut replay, 8).unwrap();
            for _ in 0..N {
                router
                    .route(&b.stream, &inputs.input(t), &mut bufs, Some(&mut view))
                    .unwrap();
            }
        });
        let mut replay2 = b.stream.alloc_zeros::<i16>(t * 8).unwrap();
        let noaux = NoAuxTcRouter::new(s.cfg).unwrap();
        let theirs = b.capture(|| {
            let mut view = ReplayView::from_slice(&mut replay2, 8).unwrap();
            let mut out = NoAuxTcOutputs {
                ids: indices.as_view_mut(),
                weights_f32: values.as_view_mut(),
            };
            for _ in 0..N {
                noaux
                    .route(&b.stream, &inputs.input(t), &mut out, Some(&mut view))
                    .unwrap();
            }
        });
        let copy = b.capture(|| {
            for _ in 0..N {
                b.stream.memcpy_dtod(logits, &mut copy_dst).unwrap();
            }
        });
        let r = b.compare(&[&ours, &theirs, &copy], N as f64);
        let bytes = (t * 256 * 4) as f64;
        let (gbs, copy_gbs) = (bytes / r[0].median / 1e3, 2.0 * bytes / r[2].median / 1e3);
        println!(
            "| {t} | {:.2} | {:.2} | {:.3} | {} | {gbs:.0} | {copy_gbs:.0} | {:.2} |",
            r[0].median,
            r[1].median,
            r[0].median / r[1].median,
            verdict(r[0].median <= r[1].median),
            gbs / copy_gbs
        );
    }
}

/// Host microseconds per call of `first` and of `second`: `calls` calls each, the two loops
/// interleaved over 5 repetitions (median); each timed loop starts from a drained stream.
fn host_us_per_call<const N: usize>(
    b: &Bench,
    calls: usize,
    mut callers: [&mut dyn FnMut(); N],
) -> [f64; N] {
    fn timed(b: &Bench, calls: usize, f: &mut dyn FnMut()) -> f64 {
        b.stream.synchronize().unwrap();
        let t0 = Instant::now();
        for _ in 0..calls {
            f();
        }
        t0.elapsed().as_secs_f64() * 1e6 / calls as f64
    }
    // Interleaved rounds, so drift (clocks, other load) hits every caller alike.
    let mut runs: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    for _ in 0..5 {
        for (f, run) in callers.iter_mut().zip(runs.iter_mut()) {
            run.push(timed(b, calls, *f));
        }
    }
    b.stream.synchronize().unwrap();
    runs.map(|r| stat(r).median)
}

/// 5. Host CPU time per call: the safe API (validation + launch) against a raw C ABI call.
fn host_overhead(b: &Bench) {
    println!("\n## 5. Host overhead per call (CPU time; no synchronisation inside the loop)\n");
    println!("Target: the safe layer adds under 1 us per call.\n");
    println!("| shape | calls | safe `Router::route` (us/call) | raw `fi_routing_run` (us/call) | added (us) | target |");
    println!("|---|---:|---:|---:|---:|---|");
    let s = &qwen3_30b_a3b();
    let t = 16;
    let router = Router::new(s.cfg).unwrap();
    let inputs = Inputs::new(b, s, t);
    let mut bufs = RoutingBuffers::new(&b.stream, &s.cfg, t).unwrap();
    let mut replay = b.stream.alloc_zeros::<i16>(t * 8).unwrap();
    const CALLS: usize = 20000;
    let raw_router = RawRouter::new(b, &s.cfg, &inputs, t);
    let replay_ptr = replay.device_ptr_mut(&b.stream).0 as *mut i16;
    let mut view = ReplayView::from_slice(&mut replay, 8).unwrap();
    let [sa, ra] = host_us_per_call(
        b,
        CALLS,
        [
            &mut || {
                router
                    .route(&b.stream, &inputs.input(t), &mut bufs, Some(&mut view))
                    .unwrap();
            },
            &mut || raw_router.launch(b, replay_ptr),
        ],
    );
    println!(
        "| {} | {CALLS} | {sa:.2} | {ra:.2} | {:.2} | {} |",
        s.name,
        sa - ra,
        verdict(sa - ra < 1.0)
    );
}

/// 5b. Host CPU time of a fused call's own layer (validation, planning, marshalling, the
/// architecture gate): a [`FusedMoe`] built once and called, against the one-shot
/// `trtllm_bf16_moe` (which builds the layer every call: the old call shape, every rule
/// checked per call), against a routing call. Off Blackwell the call stops at the gate with
/// `UnsupportedArch`, so this is an upper bound of what the safe fused layer costs before
/// upstream's launcher: it also pays the shim's device query and the error message a
/// Blackwell call does not. On Blackwell the call would launch the MoE, so the section is
/// skipped there.
fn fused_host_overhead(b: &Bench) {
    use flashinfer_rs::fused::{
        trtllm_bf16_moe, Bf16, Bf16Inputs, Bf16Weights, FusedMoe, MoeBatch, MoeConfig, MoeOptions,
        MoeRoutingInput, SwigluParams, WeightLayout,
    };
    println!("\n## 5b. Host overhead of a fused call's own layer, up to the architecture gate\n");
    if flashinfer_rs::device_info(&b.ctx).unwrap().fused_supported {
        println!("Skipped: this GPU runs the fused MoE (the section measures the layer alone, off Blackwell).");
        return;
    }
    if !fs::BUILT_ARCHS.contains("sm_100") {
        println!("Skipped: this build has no fused kernels (`FEATURES=sm90,sm100 bash scripts/gpu-pack.sh` builds them; the layer is then measured up to the architecture gate).");
        return;
    }
    println!("bf16 MoE (64 experts, top-8, H = 1024, I = 512, 16 tokens) with a replay buffer, on a GPU without the fused kernels: each call validates, plans, checks contexts, fills the C arguments and stops at the shim's architecture gate (`UnsupportedArch`), so these are upper bounds of the layer's cost (they also pay a device query and an error message). `FusedMoe::forward` checks the batch only (the layer was checked once by `FusedMoe::new`); the one-shot `trtllm_bf16_moe` builds the layer every call, as the free functions did before `FusedMoe`. Baseline: the safe routing call of the same shape, same run.\n");
    println!(
        "| shape | calls | `FusedMoe::forward` (us/call) | one-shot `trtllm_bf16_moe` (us/call) | forward / one-shot | `Router::route` (us/call) |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let (t, e, k, h, i) = (16, 64, 8, 1024, 512);
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, e as u32, k as u32);
    let s = &b.stream;
    let logits = s.alloc_zeros::<f32>(t * e).unwrap();
    let hidden = s.alloc_zeros::<bf16>(t * h).unwrap();
    let w1 = s.alloc_zeros::<bf16>(e * 2 * i * h).unwrap();
    let w2 = s.alloc_zeros::<bf16>(e * h * i).unwrap();
    // One output and replay buffer per caller (each closure holds its own borrow).
    let mut outputs = [(); 2].map(|_| s.alloc_zeros::<bf16>(t * h).unwrap());
    let mut replays = [(); 3].map(|_| s.alloc_zeros::<i16>(t * k).unwrap());
    let [out_forward, out_one_shot] = &mut outputs;
    let [replay_forward, replay_one_shot, replay_route] = &mut replays;
    let config = MoeConfig {
        routing: cfg,
        hidden_size: h,
        intermediate_size: i,
        options: MoeOptions::new(WeightLayout::BlockMajorK),
    };
    let weights = || Bf16Weights {
        gemm1_weights: w1.as_view(),
        gemm2_weights: w2.as_view(),
        swiglu: SwigluParams::default(),
    };
    let batch = || MoeBatch::<Bf16> {
        num_tokens: t,
        routing: MoeRoutingInput::Logits {
            logits: (&logits).into(),
            bias: None,
        },
        inputs: Bf16Inputs {
            hidden_states: hidden.as_view(),
            gemm1_lora_delta: None,
        },
    };
    let moe = FusedMoe::<Bf16>::new(config, weights()).unwrap();
    let router = Router::new(cfg).unwrap();
    let mut bufs = RoutingBuffers::new(s, &cfg, t).unwrap();
    let input = RouteInput {
        logits: (&logits).into(),
        bias: None,
        num_tokens: t,
    };
    let refused = |res: flashinfer_rs::Result<_>| {
        assert!(matches!(res, Err(flashinfer_rs::Error::UnsupportedArch(_))));
    };
    const CALLS: usize = 20000;
    let [forward, one_shot, route] = host_us_per_call(
        b,
        CALLS,
        [
            &mut || {
                let mut out = out_forward.as_view_mut();
                let mut view = ReplayView::from_slice(replay_forward, k).unwrap();
                refused(moe.forward(s, batch(), &mut out, Some(&mut view)));
            },
            &mut || {
                let mut out = out_one_shot.as_view_mut();
                let mut view = ReplayView::from_slice(replay_one_shot, k).unwrap();
                refused(trtllm_bf16_moe(
                    s,
                    &config,
                    weights(),
                    batch(),
                    &mut out,
                    Some(&mut view),
                ));
            },
            &mut || {
                let mut view = ReplayView::from_slice(replay_route, k).unwrap();
                router.route(s, &input, &mut bufs, Some(&mut view)).unwrap();
            },
        ],
    );
    println!(
        "| bf16, 64e top-8, H 1024, I 512, T {t} | {CALLS} | {forward:.2} | {one_shot:.2} | {:.2} | {route:.2} |",
        forward / one_shot
    );
}

/// Table 6: the top-k router against upstream's router, NoAuxTc, the launch floor (an empty
/// kernel) and a device-to-device copy of the logits, per model and token count.
fn topk_router(b: &Bench) {
    println!("\n## 6. Top-k router: ids and weights only (same GPU, same run)\n");
    println!("Per call, median over graph launches of {TOPK_CALLS} calls. top-k: ids (int32 + the int16 replay view) and fp32 weights; `replay cost` = with / without the replay view; upstream = `Router::route` with replay (it also builds the grouped-GEMM permutation); floor = an empty one-warp kernel in the same harness; bandwidth = logits bytes / time against a device-to-device copy's (read + write) / time.\n");
    println!("| model | tokens | top-k (us) | replay cost | upstream (us) | top-k / upstream | NoAuxTc (us) | top-k / NoAuxTc | floor (us) | top-k / floor | logits GB/s | / D2D copy |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    // A profiler run picks a few rows: FLASHINFER_RS_BENCH_MODEL (a name's prefix) and
    // FLASHINFER_RS_BENCH_TOKENS (comma-separated), as scripts/profile-topk.sh does.
    let model = std::env::var("FLASHINFER_RS_BENCH_MODEL").ok();
    let tokens: Vec<usize> = std::env::var("FLASHINFER_RS_BENCH_TOKENS")
        .map(|v| v.split(',').filter_map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_else(|_| vec![1, 16, 128, 1024, 8192, 32768, 131072]);
    for m in topk_bench_models() {
        if model.as_deref().is_some_and(|p| !m.name.starts_with(p)) {
            continue;
        }
        for &t in &tokens {
            topk_row(b, &m, t);
        }
    }
}

const TOPK_CALLS: usize = 20;

fn topk_row(b: &Bench, m: &ModelRouter, t: usize) {
    let (e, k) = (m.cfg.num_experts as usize, m.cfg.top_k as usize);
    let s = &b.stream;
    let inputs = Inputs::new(b, m, t);
    let topk = TopKRouter::new(m.cfg).unwrap();
    let mut ids = s.alloc_zeros::<i32>(t * k).unwrap();
    let mut weights = s.alloc_zeros::<f32>(t * k).unwrap();
    let mut replay = s.alloc_zeros::<i16>(t * k).unwrap();
    let mut topk_graph = |with_replay: bool| {
        b.capture(|| {
            let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
            let mut out = TopKOutputs {
                ids: Some(ids.as_view_mut()),
                weights_f32: Some(weights.as_view_mut()),
                weights_bf16: None,
            };
            for _ in 0..TOPK_CALLS {
                topk.route(
                    s,
                    &inputs.input(t),
                    &mut out,
                    with_replay.then_some(&mut view),
                )
                .unwrap();
            }
        })
    };
    let (with, without) = (topk_graph(true), topk_graph(false));
    let router = Router::new(m.cfg).unwrap();
    let mut bufs = RoutingBuffers::new(s, &m.cfg, t).unwrap();
    let mut up_replay = s.alloc_zeros::<i16>(t * k).unwrap();
    let upstream = b.capture(|| {
        let mut view = ReplayView::from_slice(&mut up_replay, k).unwrap();
        for _ in 0..TOPK_CALLS {
            router
                .route(s, &inputs.input(t), &mut bufs, Some(&mut view))
                .unwrap();
        }
    });
    let (mut values, mut indices) = (
        s.alloc_zeros::<f32>(t * k).unwrap(),
        s.alloc_zeros::<i32>(t * k).unwrap(),
    );
    let noaux = (!m.bf16_logits)
        .then(|| NoAuxTcRouter::new(m.cfg).ok())
        .flatten()
        .map(|noaux| {
            b.capture(|| {
                let mut out = NoAuxTcOutputs {
                    ids: indices.as_view_mut(),
                    weights_f32: values.as_view_mut(),
                };
                for _ in 0..TOPK_CALLS {
                    noaux.route(s, &inputs.input(t), &mut out, None).unwrap();
                }
            })
        });
    let floor = b.capture(|| {
        for _ in 0..TOPK_CALLS {
            // SAFETY: launches an empty kernel on a live stream.
            let st = unsafe { fs::fi_launch_empty_kernel(s.cu_stream() as *mut _) };
            assert_eq!(st, fs::fi_status::FI_STATUS_OK);
        }
    });
    let logit_bytes = t * e * if m.bf16_logits { 2 } else { 4 };
    let src = s.alloc_zeros::<u8>(logit_bytes).unwrap();
    let mut dst = s.alloc_zeros::<u8>(logit_bytes).unwrap();
    let copy = b.capture(|| {
        for _ in 0..TOPK_CALLS {
            s.memcpy_dtod(&src, &mut dst).unwrap();
        }
    });
    let mut graphs = vec![&with, &without, &upstream, &floor, &copy];
    if let Some(n) = &noaux {
        graphs.push(n);
    }
    let r = b.compare(&graphs, TOPK_CALLS as f64);
    let ours = r[0].median;
    let (noaux_us, noaux_ratio) = match r.get(5) {
        Some(n) => (
            format!("{:.2}", n.median),
            format!("{:.2}", ours / n.median),
        ),
        None => ("-".into(), "-".into()),
    };
    let gbs = logit_bytes as f64 / ours / 1e3;
    let copy_gbs = 2.0 * logit_bytes as f64 / r[4].median / 1e3;
    println!(
        "| {} | {t} | {ours:.2} | {:.3} | {:.2} | {:.2} | {noaux_us} | {noaux_ratio} | {:.2} | {:.2} | {gbs:.0} | {:.2} |",
        m.name,
        ours / r[1].median,
        r[2].median,
        ours / r[2].median,
        r[3].median,
        ours / r[3].median,
        gbs / copy_gbs
    );
}

/// Routing through the raw C ABI: buffers of its own, pointers and parameters resolved once,
/// as a caller of the raw bindings would. The baseline of tables 1 and 5: its `replay` may be
/// null, which is upstream's path without `routing_replay_out`.
struct RawRouter {
    params: fs::fi_routing_params,
    buffers: fs::fi_routing_buffers,
    logits: *const std::ffi::c_void,
    bias: *const std::ffi::c_void,
    _owned: (CudaSlice<bf16>, Vec<CudaSlice<i32>>),
}

impl RawRouter {
    fn new(b: &Bench, cfg: &RoutingConfig, inputs: &Inputs, t: usize) -> RawRouter {
        let mut sizes = fs::fi_routing_buffer_sizes::default();
        let (e, k) = (cfg.num_experts as i32, cfg.top_k as i32);
        let st = unsafe {
            fs::fi_routing_buffer_sizes_for(t as i32, k, e, cfg.tile_tokens_dim as i32, &mut sizes)
        };
        assert_eq!(st, fs::fi_status::FI_STATUS_OK);
        let mut w = b
            .stream
            .alloc_zeros::<bf16>(sizes.topk.max(1) as usize)
            .unwrap();
        let n = [
            sizes.topk,
            sizes.expert_counts,
            1,
            sizes.topk,
            sizes.max_padded,
            sizes.max_ctas,
            sizes.max_ctas,
            1,
        ];
        let mut ints: Vec<CudaSlice<i32>> = n
            .iter()
            .map(|&n| b.stream.alloc_zeros::<i32>(n.max(1) as usize).unwrap())
            .collect();
        let p: Vec<*mut i32> = ints
            .iter_mut()
            .map(|s| s.device_ptr_mut(&b.stream).0 as *mut i32)
            .collect();
        let buffers = fs::fi_routing_buffers {
            topk_weights: w.device_ptr_mut(&b.stream).0 as *mut _,
            topk_packed: p[0] as *mut _,
            expert_counts: p[1],
            permuted_idx_size: p[2],
            expanded_idx_to_permuted_idx: p[3],
            permuted_idx_to_token_idx: p[4],
            cta_idx_xy_to_batch_idx: p[5],
            cta_idx_xy_to_mn_limit: p[6],
            num_non_exiting_ctas: p[7],
        };
        let logits_dtype = if inputs.bf16.is_some() {
            fs::fi_dtype::FI_DTYPE_BF16
        } else {
            fs::fi_dtype::FI_DTYPE_F32
        };
        let params = cfg.raw_params(t, logits_dtype, fs::fi_dtype::FI_DTYPE_F32);
        let logits = match (&inputs.f32, &inputs.bf16) {
            (Some(l), _) => l.device_ptr(&b.stream).0,
            (_, Some(l)) => l.device_ptr(&b.stream).0,
            _ => unreachable!(),
        } as *const std::ffi::c_void;
        let bias = inputs.bias.as_ref().map_or(std::ptr::null(), |x| {
            x.device_ptr(&b.stream).0 as *const std::ffi::c_void
        });
        RawRouter {
            params,
            buffers,
            logits,
            bias,
            _owned: (w, ints),
        }
    }

    fn launch(&self, b: &Bench, replay: *mut i16) {
        let stream = b.stream.cu_stream() as *mut std::ffi::c_void;
        let st = unsafe {
            fs::fi_routing_run(
                &self.params,
                self.logits,
                self.bias,
                &self.buffers,
                replay,
                stream,
            )
        };
        debug_assert_eq!(st, fs::fi_status::FI_STATUS_OK);
    }
}

fn main() {
    if flashinfer_rs::cuda_device_count() == 0 || !flashinfer_rs::build_info().kernels_built {
        eprintln!("moe_routing bench: needs a GPU and kernels (build with --features sm90,sm100)");
        return;
    }
    let ctx = flashinfer_rs::cuda_context(0).unwrap();
    // Recording a graph must not take cudarc's per-buffer events.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let timing = Some(sys::CUevent_flags::CU_EVENT_DEFAULT);
    let b = Bench {
        start: ctx.new_event(timing).unwrap(),
        end: ctx.new_event(timing).unwrap(),
        ctx: ctx.clone(),
        stream,
    };
    let dev = flashinfer_rs::device_info(&ctx).unwrap();
    println!("# flashinfer-rs benchmarks\n");
    println!(
        "GPU: {} (sm_{}{}, {} SMs); FlashInfer {}; one run, one GPU.",
        ctx.name().unwrap(),
        dev.compute_capability.0,
        dev.compute_capability.1,
        dev.sm_count,
        flashinfer_rs::FLASHINFER_VERSION
    );
    let only = std::env::args().nth(1);
    let run = |name: &str| only.as_deref().is_none_or(|o| o == name);
    if run("replay") {
        replay_overhead(&b);
    }
    if run("capture") {
        capture_step(&b);
        weights_capture(&b);
    }
    if run("readback") {
        readback(&b);
        readback_overlap(&b);
    }
    if run("peers") {
        peers(&b);
    }
    if run("host") {
        host_overhead(&b);
        fused_host_overhead(&b);
    }
    if run("topk") {
        topk_router(&b);
    }
}
