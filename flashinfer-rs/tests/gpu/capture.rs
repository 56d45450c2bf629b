//! The capture store over real routing kernels: L layers write their replay views directly,
//! each step is read back asynchronously, and every captured row must equal the oracle, over
//! 1,000+ steps of random batch sizes and layouts, eagerly and through a CUDA graph.
use flashinfer_rs::capture::{CaptureConfig, CaptureStore, CollectedStep, StepBuffer, StepLayout};
use flashinfer_rs::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use flashinfer_rs::cudarc::driver::{CudaGraph, CudaSlice};
use flashinfer_rs::routing::oracle::{self, SplitMix64};
use flashinfer_rs::routing::{
    RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod, TopKRouter,
};

use crate::common::{env_list, gpu, Gpu};
use crate::models;
use crate::routing::weight_matches;

/// Rows of pre-generated logits per layer; each step routes a random window of them.
const POOL: usize = 2048;
const MAX_ROWS: usize = 96;
/// Steps before device memory is measured (see `Soak`).
const WARM_UP: usize = 50;

struct Model {
    cfg: RoutingConfig,
    layers: usize,
    /// Per layer: `[POOL, E]` logits on the device, their bias, and the oracle's ids and
    /// weights for every pool row.
    pool: Vec<CudaSlice<f32>>,
    bias: Option<CudaSlice<f32>>,
    want: Vec<oracle::Routed>,
}

/// The oracle a model's rows are checked against (`oracle::route` for upstream's router,
/// `oracle::route_topk` for ours).
type Oracle =
    fn(&RoutingConfig, &[f32], Option<&[f32]>, usize) -> flashinfer_rs::Result<oracle::Routed>;

/// A model routed by upstream's kernels (`oracle::route`); layer `l`'s logits from seed `l`.
fn model(g: &Gpu, cfg: RoutingConfig, layers: usize) -> Model {
    pooled_model(g, cfg, layers, 0, oracle::route)
}

/// `layers` layers of `POOL` rows of logits (layer `l` from seed `first_seed + l`), all
/// separated for one bias of the model, and `want_of`'s rows for them.
fn pooled_model(
    g: &Gpu,
    cfg: RoutingConfig,
    layers: usize,
    first_seed: u64,
    want_of: Oracle,
) -> Model {
    let (_, bias) = oracle::separated_logits(&cfg, 0, false, 7).unwrap();
    let (mut pool, mut want) = (Vec::new(), Vec::new());
    for l in 0..layers {
        let seed = first_seed + l as u64;
        let logits =
            oracle::separated_logits_for_bias(&cfg, POOL, false, seed, bias.as_deref()).unwrap();
        want.push(want_of(&cfg, &logits, bias.as_deref(), POOL).unwrap());
        pool.push(g.stream.clone_htod(&logits).unwrap());
    }
    let bias = bias.map(|b| g.stream.clone_htod(&b).unwrap());
    Model {
        cfg,
        layers,
        pool,
        bias,
        want,
    }
}

/// A random layout for a step of this rank.
fn random_layout(rng: &mut SplitMix64, fixed_rows: Option<usize>) -> StepLayout {
    match (fixed_rows, rng.below(3)) {
        (Some(padded), _) => StepLayout::padded(1 + rng.below(padded), padded).unwrap(),
        (None, 0) => StepLayout::single(1 + rng.below(MAX_ROWS)),
        (None, 1) => {
            let real = 1 + rng.below(MAX_ROWS / 2);
            StepLayout::padded(real, real + rng.below(MAX_ROWS / 2)).unwrap()
        }
        _ => {
            let ranks: Vec<usize> = (0..4).map(|_| rng.below(MAX_ROWS / 4)).collect();
            StepLayout::data_parallel(rng.below(4), &ranks).unwrap()
        }
    }
}

/// Checks a collected step against the oracle rows the step routed.
fn check(m: &Model, got: &CollectedStep, layout: &StepLayout, offsets: &[usize]) {
    let (l_n, k) = (m.layers, m.cfg.top_k as usize);
    assert_eq!(
        got.rows.tokens,
        layout.keep.len(),
        "step {}: kept rows",
        got.step
    );
    for (r, row) in layout.keep.clone().enumerate() {
        for (l, &offset) in offsets.iter().enumerate() {
            let at = (r * l_n + l) * k;
            let want_row = offset + row;
            assert_eq!(
                &got.rows.ids[at..at + k],
                &m.want[l].ids[want_row * k..(want_row + 1) * k],
                "step {} row {row} layer {l}",
                got.step
            );
        }
    }
}

/// Bookkeeping shared by the eager and graph soaks: steps in flight, rows checked, and device
/// memory measured after a warm-up (CUDA loads each kernel lazily on first launch, and the
/// random batch sizes reach new kernel tiers during the first steps).
struct Soak<'a> {
    m: &'a Model,
    pending: std::collections::VecDeque<(StepLayout, Vec<usize>)>,
    checked: usize,
    free_before: Option<usize>,
    /// Resident host memory (bytes) at the warm-up, pinned readback buffers included.
    rss_before: Option<usize>,
    started: std::time::Instant,
}

/// This process's resident set (`VmRSS` of `/proc/self/status`; Linux, else `None`).
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl<'a> Soak<'a> {
    fn new(m: &'a Model) -> Soak<'a> {
        Soak {
            m,
            pending: Default::default(),
            checked: 0,
            free_before: None,
            rss_before: None,
            started: std::time::Instant::now(),
        }
    }

    fn step_begins(&mut self, g: &Gpu, i: usize) {
        if i == WARM_UP {
            g.stream.synchronize().unwrap();
            self.free_before = Some(g.ctx.mem_get_info().unwrap().0);
            self.rss_before = resident_bytes();
        }
    }

    /// After `end_step`: with `max_in_flight` steps in flight, the oldest is collected and
    /// checked while the newer ones compute.
    fn step_ended(
        &mut self,
        store: &mut CaptureStore,
        layout: StepLayout,
        offsets: Vec<usize>,
        max_in_flight: usize,
    ) {
        self.pending.push_back((layout, offsets));
        if store.in_flight() == max_in_flight {
            self.collect_one(store);
        }
    }

    fn collect_one(&mut self, store: &mut CaptureStore) -> bool {
        let Some(got) = store.collect().unwrap() else {
            return false;
        };
        let (layout, offsets) = self.pending.pop_front().unwrap();
        check(self.m, &got, &layout, &offsets);
        self.checked += 1;
        true
    }

    fn finish(mut self, g: &Gpu, store: &mut CaptureStore, steps: usize, mode: &str) {
        while self.collect_one(store) {}
        g.stream.synchronize().unwrap();
        let free_after = g.ctx.mem_get_info().unwrap().0;
        // compute-sanitizer allocates device memory for its own bookkeeping as the run goes:
        // scripts/sanitize.sh sets this, and the check would measure the tool, not the store.
        let memory = if std::env::var_os("FLASHINFER_RS_UNDER_SANITIZER").is_some() {
            "device memory not checked (under compute-sanitizer)".to_string()
        } else if let Some(before) = self.free_before {
            assert_eq!(
                before, free_after,
                "device memory changed over steps {WARM_UP}..{steps}"
            );
            "device memory flat".to_string()
        } else {
            format!("device memory not checked (no steps after the {WARM_UP}-step warm-up)")
        };
        // Host memory is reported, not asserted: the allocator may keep freed pages resident.
        let mib = |b: usize| b as f64 / 1048576.0;
        let host = match (self.rss_before, resident_bytes()) {
            (Some(before), Some(after)) => format!(
                "; host resident {:.1} MiB at step {WARM_UP}, {:.1} MiB at the end",
                mib(before),
                mib(after)
            ),
            (None, Some(after)) => format!("; host resident {:.1} MiB at the end", mib(after)),
            _ => String::new(),
        };
        eprintln!(
            "capture {mode}: {} layers, {} steps checked against the oracle in {:.1} s, {memory}{host}",
            self.m.layers,
            self.checked,
            self.started.elapsed().as_secs_f64()
        );
    }
}

/// A store for `m`'s layers, `MAX_ROWS` rows, ids only.
fn store_config(m: &Model, readback_buffers: usize) -> CaptureConfig {
    CaptureConfig::new(m.layers, MAX_ROWS, m.cfg.top_k as usize)
        .with_readback_buffers(readback_buffers)
}

/// Routes `t` rows of every layer (layer `l` from pool row `offsets[l]`) into the store's
/// views.
fn route_layers(
    g: &Gpu,
    m: &Model,
    router: &Router,
    buffers: &mut RoutingBuffers,
    store: &mut CaptureStore,
    t: usize,
    offsets: &[usize],
) {
    let e = m.cfg.num_experts as usize;
    for (l, &off) in offsets.iter().enumerate() {
        let input = RouteInput {
            logits: m.pool[l].slice(off * e..(off + t) * e).into(),
            bias: m.bias.as_ref().map(Into::into),
            num_tokens: t,
        };
        let mut view = store.replay_view(l).unwrap();
        router
            .route(&g.stream, &input, buffers, Some(&mut view))
            .unwrap();
    }
}

/// A CUDA graph of what `record` enqueues on the test's stream. Turns cudarc's event tracking
/// off (capture must not record its per-buffer events); the caller turns it back on when its
/// replays are done.
fn capture_graph(g: &Gpu, record: impl FnOnce()) -> CudaGraph {
    unsafe { g.ctx.disable_event_tracking() };
    g.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    record();
    g.stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("graph")
}

fn eager(g: &Gpu, m: &Model, steps: usize) {
    let router = Router::new(m.cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &m.cfg, MAX_ROWS).unwrap();
    let mut store = CaptureStore::new(&g.stream, store_config(m, 2)).unwrap();
    let mut rng = SplitMix64(m.layers as u64);
    let mut soak = Soak::new(m);
    for i in 0..steps {
        soak.step_begins(g, i);
        let layout = random_layout(&mut rng, None);
        let offsets: Vec<usize> = (0..m.layers).map(|_| rng.below(POOL - MAX_ROWS)).collect();
        store.begin_step(&g.stream, layout.clone()).unwrap();
        route_layers(
            g,
            m,
            &router,
            &mut buffers,
            &mut store,
            layout.routed_rows,
            &offsets,
        );
        store.end_step(&g.stream).unwrap();
        soak.step_ended(&mut store, layout, offsets, 2);
    }
    soak.finish(g, &mut store, steps, "eager");
}

fn graph(g: &Gpu, m: &Model, steps: usize) {
    let (e, k) = (m.cfg.num_experts as usize, m.cfg.top_k as usize);
    let padded = 64;
    let router = Router::new(m.cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &m.cfg, padded).unwrap();
    let cfg = CaptureConfig::new(m.layers, padded, k).with_readback_buffers(3);
    let mut store = CaptureStore::new(&g.stream, cfg).unwrap();
    // Fixed logits buffers, one per layer, refilled before every replay.
    let mut inputs: Vec<CudaSlice<f32>> = (0..m.layers)
        .map(|_| g.stream.alloc_zeros(padded * e).unwrap())
        .collect();

    let graph = capture_graph(g, || {
        for (l, logits) in inputs.iter().enumerate() {
            let input = RouteInput {
                logits: logits.into(),
                bias: m.bias.as_ref().map(Into::into),
                num_tokens: padded,
            };
            let mut view = store.replay_view(l).unwrap();
            router
                .route(&g.stream, &input, &mut buffers, Some(&mut view))
                .unwrap();
        }
    });

    let mut rng = SplitMix64(99 + m.layers as u64);
    let mut soak = Soak::new(m);
    for i in 0..steps {
        soak.step_begins(g, i);
        let layout = random_layout(&mut rng, Some(padded));
        let offsets: Vec<usize> = (0..m.layers).map(|_| rng.below(POOL - MAX_ROWS)).collect();
        for (l, &off) in offsets.iter().enumerate() {
            let src = m.pool[l].slice(off * e..(off + padded) * e);
            g.stream.memcpy_dtod(&src, &mut inputs[l]).unwrap();
        }
        store.begin_step(&g.stream, layout.clone()).unwrap();
        graph.launch().unwrap();
        store.end_step(&g.stream).unwrap();
        soak.step_ended(&mut store, layout, offsets, 3);
    }
    soak.finish(g, &mut store, steps, "graph (replayed)");
    unsafe { g.ctx.enable_event_tracking() };
}

#[test]
fn captured_rows_equal_the_oracle_over_a_thousand_steps() {
    let Some(g) = gpu("captured_rows_equal_the_oracle_over_a_thousand_steps") else {
        return;
    };
    // FLASHINFER_RS_SOAK_STEPS=10000 turns this into the long soak. FLASHINFER_RS_SOAK_LAYERS
    // caps the layer counts: the sanitizers slow every launch 10-100x, and more layers only
    // repeat the same kernels on other logits (scripts/sanitize.sh sets it).
    let steps = env_list("FLASHINFER_RS_SOAK_STEPS", &[1000])[0];
    let max_layers = env_list("FLASHINFER_RS_SOAK_LAYERS", &[usize::MAX])[0];
    let (qwen3, deepseek) = (models::qwen3_30b_a3b(), models::deepseek_v3());
    for (cfg, layers) in [
        (RoutingConfig::new(RoutingMethod::Renormalize, 64, 4), 4),
        (qwen3.cfg, qwen3.moe_layers),
        (deepseek.cfg, deepseek.moe_layers),
    ] {
        let m = model(&g, cfg, layers.min(max_layers));
        eager(&g, &m, steps);
        graph(&g, &m, steps);
    }
}

/// The next step starts overwriting every layer view at once while the previous step's 8 MB
/// are still on their way to the host. With cudarc's event tracking off (as under CUDA graphs)
/// nothing but the store orders the two; the previous step's rows must arrive intact.
#[test]
fn the_next_step_cannot_overwrite_rows_still_being_read_back() {
    let Some(g) = gpu("the_next_step_cannot_overwrite_rows_still_being_read_back") else {
        return;
    };
    let (layers, tokens) = (61usize, 8192usize);
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 64, 8);
    let router = Router::new(cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &cfg, tokens).unwrap();
    let cap = CaptureConfig::new(layers, tokens, 8);
    let mut store = CaptureStore::new(&g.stream, cap).unwrap();
    let mut want = Vec::new();
    let mut logits = Vec::new();
    for seed in [1u64, 2] {
        let (l, _) = oracle::separated_logits(&cfg, tokens, false, seed).unwrap();
        want.push(oracle::route(&cfg, &l, None, tokens).unwrap().ids);
        logits.push(g.stream.clone_htod(&l).unwrap());
    }
    g.stream.synchronize().unwrap();
    unsafe { g.ctx.disable_event_tracking() };
    for step_logits in &logits {
        store
            .begin_step(&g.stream, StepLayout::single(tokens))
            .unwrap();
        for l in 0..layers {
            let input = RouteInput {
                logits: step_logits.into(),
                bias: None,
                num_tokens: tokens,
            };
            let mut view = store.replay_view(l).unwrap();
            router
                .route(&g.stream, &input, &mut buffers, Some(&mut view))
                .unwrap();
        }
        store.end_step(&g.stream).unwrap();
    }
    for (step, want) in want.iter().enumerate() {
        let got = store.collect().unwrap().unwrap();
        for l in 0..layers {
            for r in 0..tokens {
                let at = (r * layers + l) * 8;
                assert_eq!(
                    &got.rows.ids[at..at + 8],
                    &want[r * 8..(r + 1) * 8],
                    "step {step} layer {l} row {r}"
                );
            }
        }
    }
    unsafe { g.ctx.enable_event_tracking() };
    eprintln!("capture ordering: 2 steps of 61 x 8192 rows, back to back, both read back intact");
}

/// Routes one layer with the top-k router into the store's id and weight views of `layer`.
fn route_weights(
    g: &Gpu,
    router: &TopKRouter,
    store: &mut CaptureStore,
    layer: usize,
    input: &RouteInput<'_>,
) {
    router
        .route_captured(&g.stream, input, store.layer_views(layer).unwrap())
        .unwrap();
}

/// Checks a collected step's ids and weights against the oracle rows it routed; returns the
/// number of (id, weight) pairs checked.
fn check_weights(m: &Model, got: &CollectedStep, layout: &StepLayout, offsets: &[usize]) -> usize {
    let k = m.cfg.top_k as usize;
    let got_weights = got.rows.weights.as_ref().expect("weights captured");
    assert_eq!(got.rows.tokens, layout.keep.len(), "step {}", got.step);
    for (r, row) in layout.keep.clone().enumerate() {
        for (l, &off) in offsets.iter().enumerate() {
            let at = (r * m.layers + l) * k;
            let w = (off + row) * k;
            assert_eq!(
                &got.rows.ids[at..at + k],
                &m.want[l].ids[w..w + k],
                "step {} row {row} layer {l}",
                got.step
            );
            for j in 0..k {
                assert!(
                    weight_matches(got_weights[at + j], m.want[l].weights[w + j]),
                    "step {} row {row} layer {l} k {j}: weight {} vs the oracle's {}",
                    got.step,
                    got_weights[at + j],
                    m.want[l].weights[w + j]
                );
            }
        }
    }
    layout.keep.len() * offsets.len() * k
}

/// `steps` steps of random layouts with weights capture, eagerly (`padded: None`: every step
/// its own token count) or by replaying one CUDA graph of the layers' routing calls over
/// `padded` rows (fresh logits copied into its fixed inputs before each replay); every
/// collected step checked against the oracle. Returns the pairs checked.
fn weights_soak(g: &Gpu, m: &Model, steps: usize, padded: Option<usize>) -> usize {
    let (e, k) = (m.cfg.num_experts as usize, m.cfg.top_k as usize);
    let router = TopKRouter::new(m.cfg).unwrap();
    let capture = CaptureConfig::new(m.layers, padded.unwrap_or(MAX_ROWS), k).with_weights(true);
    let mut store = CaptureStore::new(&g.stream, capture).unwrap();
    let mut graph = None;
    let mut inputs: Vec<CudaSlice<f32>> = Vec::new();
    if let Some(rows) = padded {
        inputs = (0..m.layers)
            .map(|_| g.stream.alloc_zeros(rows * e).unwrap())
            .collect();
        graph = Some(capture_graph(g, || {
            for (l, logits) in inputs.iter().enumerate() {
                let input = RouteInput {
                    logits: logits.into(),
                    bias: m.bias.as_ref().map(Into::into),
                    num_tokens: rows,
                };
                route_weights(g, &router, &mut store, l, &input);
            }
        }));
    }
    let mut rng = SplitMix64(5 + m.layers as u64 + padded.unwrap_or(0) as u64);
    let mut checked = 0usize;
    for _ in 0..steps {
        let layout = random_layout(&mut rng, padded);
        let t = layout.routed_rows;
        let offsets: Vec<usize> = (0..m.layers).map(|_| rng.below(POOL - MAX_ROWS)).collect();
        // A graph reads its fixed inputs: this step's logits go there first.
        for (input, (l, &off)) in inputs.iter_mut().zip(offsets.iter().enumerate()) {
            let src = m.pool[l].slice(off * e..(off + t) * e);
            g.stream.memcpy_dtod(&src, input).unwrap();
        }
        store.begin_step(&g.stream, layout.clone()).unwrap();
        match &graph {
            Some(graph) => graph.launch().unwrap(),
            None => {
                for (l, &off) in offsets.iter().enumerate() {
                    let input = RouteInput {
                        logits: m.pool[l].slice(off * e..(off + t) * e).into(),
                        bias: m.bias.as_ref().map(Into::into),
                        num_tokens: t,
                    };
                    route_weights(g, &router, &mut store, l, &input);
                }
            }
        }
        store.end_step(&g.stream).unwrap();
        let got = store.collect().unwrap().expect("a step in flight");
        checked += check_weights(m, &got, &layout, &offsets);
    }
    if graph.is_some() {
        unsafe { g.ctx.enable_event_tracking() };
    }
    checked
}

/// Weights capture: the top-k router writes each layer's ids into the store's replay view and
/// its fp32 weights into the store's weights view (zero-copy); every collected step's ids and
/// weights must equal the oracle's (`oracle::route_topk`), over 1,000 steps of random layouts
/// (`FLASHINFER_RS_WEIGHTS_STEPS`), eagerly and through a replayed CUDA graph.
#[test]
fn captured_weights_sit_beside_their_ids_and_equal_the_oracle() {
    let Some(g) = gpu("captured_weights_sit_beside_their_ids_and_equal_the_oracle") else {
        return;
    };
    let steps = env_list("FLASHINFER_RS_WEIGHTS_STEPS", &[1000])[0];
    let (qwen3, deepseek) = (models::qwen3_30b_a3b(), models::deepseek_v3());
    for (cfg, layers) in [(qwen3.cfg, 6), (deepseek.cfg, 5)] {
        // Routed by our top-k router: ids and weights from `oracle::route_topk`.
        let m = pooled_model(&g, cfg, layers, 40, oracle::route_topk);
        for (mode, padded) in [("eager", None), ("graph (replayed)", Some(64))] {
            let checked = weights_soak(&g, &m, steps, padded);
            println!(
                "weights capture {mode}, {layers} layers of {} experts: {checked} ids and \
                 weights checked over {steps} steps",
                cfg.num_experts
            );
            assert!(checked > 0);
        }
    }
}

/// The readback waited for and read on a collector thread: the launch thread hands each
/// step's buffer over (`take_oldest`, no wait) and recycles what comes back; the collector
/// checks every row, layer-major as it landed, against the oracle. A buffer goes back only to
/// the store that lent it.
#[test]
fn readback_read_on_a_collector_thread_equals_the_oracle() {
    let Some(g) = gpu("readback_read_on_a_collector_thread_equals_the_oracle") else {
        return;
    };
    let steps = env_list("FLASHINFER_RS_SOAK_STEPS", &[1000])[0];
    let m = model(&g, RoutingConfig::new(RoutingMethod::Renormalize, 64, 4), 4);
    let k = m.cfg.top_k as usize;
    let router = Router::new(m.cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &m.cfg, MAX_ROWS).unwrap();
    let mut store = CaptureStore::new(&g.stream, store_config(&m, 3)).unwrap();
    let mut other = CaptureStore::new(&g.stream, store_config(&m, 3)).unwrap();
    let (to_collector, inbox) = std::sync::mpsc::channel::<(StepBuffer, StepLayout, Vec<usize>)>();
    let (give_back, returned) = std::sync::mpsc::channel::<StepBuffer>();
    let mut rng = SplitMix64(17);
    let checked = std::thread::scope(|s| {
        let want = &m.want;
        let collector = s.spawn(move || {
            let mut checked = 0usize;
            for (buffer, layout, offsets) in inbox {
                let rows = buffer.rows().unwrap();
                assert_eq!(rows.tokens, layout.keep.len());
                for (r, row) in layout.keep.clone().enumerate() {
                    for (l, &off) in offsets.iter().enumerate() {
                        let at = (l * rows.tokens + r) * k;
                        let w = (off + row) * k;
                        assert_eq!(
                            &rows.ids[at..at + k],
                            &want[l].ids[w..w + k],
                            "step {} row {row} layer {l}",
                            buffer.step()
                        );
                    }
                }
                checked += 1;
                give_back.send(buffer).unwrap();
            }
            checked
        });
        let mut sent = 0usize;
        let mut pending = std::collections::VecDeque::new();
        for i in 0..steps {
            let layout = random_layout(&mut rng, None);
            let offsets: Vec<usize> = (0..m.layers).map(|_| rng.below(POOL - MAX_ROWS)).collect();
            store.begin_step(&g.stream, layout.clone()).unwrap();
            route_layers(
                &g,
                &m,
                &router,
                &mut buffers,
                &mut store,
                layout.routed_rows,
                &offsets,
            );
            // Every buffer lent out: wait for one to come back (the collector's pace).
            loop {
                match store.end_step(&g.stream) {
                    Ok(_) => break,
                    Err(flashinfer_rs::Error::Backpressure { .. }) => {
                        store.recycle(returned.recv().unwrap()).unwrap();
                    }
                    Err(err) => panic!("end_step: {err}"),
                }
            }
            pending.push_back((layout, offsets));
            let buffer = store.take_oldest().expect("a step in flight");
            let (layout, offsets) = pending.pop_front().unwrap();
            if i == 0 {
                assert!(other.take_oldest().is_none()); // nothing in flight there
            }
            to_collector.send((buffer, layout, offsets)).unwrap();
            sent += 1;
            while let Ok(buffer) = returned.try_recv() {
                store.recycle(buffer).unwrap();
            }
        }
        drop(to_collector);
        let checked = collector.join().unwrap();
        while let Ok(buffer) = returned.try_recv() {
            store.recycle(buffer).unwrap();
        }
        assert_eq!(checked, sent);
        checked
    });
    // A buffer of one store is refused by another.
    store.begin_step(&g.stream, StepLayout::single(1)).unwrap();
    store.end_step(&g.stream).unwrap();
    let buffer = store.take_oldest().unwrap();
    let refused = other.recycle(buffer).unwrap_err();
    assert!(matches!(
        refused.error,
        flashinfer_rs::Error::InvalidArgument { arg: "buffer", .. }
    ));
    store.recycle(refused.buffer).unwrap(); // handed back, and its store takes it
    assert_eq!(store.in_flight(), 0);
    eprintln!(
        "collector thread: {checked} steps of {} layers checked against the oracle",
        m.layers
    );
}

/// A step buffer that is dropped instead of recycled gives its readback buffer back (it used
/// to cost the store that buffer for good), and `is_ready` answers without blocking: an async
/// server polls it, then reads the rows.
#[test]
fn a_dropped_step_buffer_gives_its_readback_buffer_back() {
    let test = "capture::a_dropped_step_buffer_gives_its_readback_buffer_back";
    let Some(g) = gpu(test) else {
        return;
    };
    let cfg = CaptureConfig::new(2, 16, 4);
    let mut store = CaptureStore::new(&g.stream, cfg).unwrap();
    for _ in 0..2 {
        store.begin_step(&g.stream, StepLayout::single(3)).unwrap();
        store.end_step(&g.stream).unwrap();
    }
    let (first, second) = (store.take_oldest().unwrap(), store.take_oldest().unwrap());
    assert_eq!(store.free_readback_buffers(), 0);
    store.begin_step(&g.stream, StepLayout::single(3)).unwrap();
    assert!(matches!(
        store.end_step(&g.stream),
        Err(flashinfer_rs::Error::Backpressure { in_flight: 2 })
    ));
    // Dropped on another thread, as a server's response task would.
    std::thread::spawn(move || drop(first)).join().unwrap();
    assert_eq!(store.free_readback_buffers(), 1);
    store.end_step(&g.stream).unwrap(); // the step still begun ends now
    let third = store.take_oldest().unwrap();
    let started = std::time::Instant::now();
    while !third.is_ready().unwrap() {
        assert!(
            started.elapsed().as_secs() < 10,
            "{test}: the copy never landed"
        );
        std::thread::yield_now();
    }
    let rows = third.rows().unwrap();
    assert_eq!((rows.tokens, rows.ids.len()), (3, 3 * 2 * 4));
    assert!(rows.ids.iter().all(|&id| id == -1), "nothing was routed");
    drop(third);
    store.recycle(second).unwrap();
    assert_eq!(store.free_readback_buffers(), 2);
    eprintln!("{test}: a dropped buffer came back; is_ready polled without blocking");
}

/// Every router has the captured form (`route_captured` with a store's `layer_views`):
/// upstream's router writes the ids (and refuses a store that captures weights: it has no
/// fp32 weights to give), NoAuxTc writes ids and weights, the top-k router ids and weights;
/// each captured row equals the oracle of its kernel.
#[test]
fn every_router_routes_into_a_stores_layer_views() {
    let Some(g) = gpu("every_router_routes_into_a_stores_layer_views") else {
        return;
    };
    let cfg = models::deepseek_v3().cfg;
    let (e, k, t) = (cfg.num_experts as usize, cfg.top_k as usize, 77);
    let (logits, bias) = oracle::separated_logits(&cfg, t, false, 11).unwrap();
    let want = oracle::route(&cfg, &logits, bias.as_deref(), t).unwrap();
    let (d_logits, d_bias) = (
        g.stream.clone_htod(&logits).unwrap(),
        g.stream.clone_htod(bias.as_deref().unwrap()).unwrap(),
    );
    let input = RouteInput {
        logits: (&d_logits).into(),
        bias: Some((&d_bias).into()),
        num_tokens: t,
    };
    let step = |store: &mut CaptureStore, route: &mut dyn FnMut(&mut CaptureStore)| {
        store.begin_step(&g.stream, StepLayout::single(t)).unwrap();
        route(store);
        store.end_step(&g.stream).unwrap();
        store.collect().unwrap().expect("the step's rows")
    };
    let ids_only = CaptureConfig::new(1, 128, k);
    let with_weights = CaptureConfig::new(1, 128, k).with_weights(true);

    // Upstream's router: ids into the store; a weights store is refused before any launch.
    let router = Router::new(cfg).unwrap();
    let mut buffers = RoutingBuffers::new(&g.stream, &cfg, 128).unwrap();
    let mut store = CaptureStore::new(&g.stream, ids_only.clone()).unwrap();
    let got = step(&mut store, &mut |s| {
        router
            .route_captured(&g.stream, &input, &mut buffers, s.layer_views(0).unwrap())
            .unwrap()
    });
    assert_eq!(got.rows.ids, want.ids, "Router::route_captured");
    let mut store = CaptureStore::new(&g.stream, with_weights.clone()).unwrap();
    store.begin_step(&g.stream, StepLayout::single(t)).unwrap();
    let e_ = router
        .route_captured(
            &g.stream,
            &input,
            &mut buffers,
            store.layer_views(0).unwrap(),
        )
        .unwrap_err();
    assert!(
        matches!(
            e_,
            flashinfer_rs::Error::InvalidArgument { arg: "views", .. }
        ),
        "{e_}"
    );
    store.end_step(&g.stream).unwrap();
    store.collect().unwrap();

    // NoAuxTc: ids and its fp32 weights into the store.
    let noaux = flashinfer_rs::routing::NoAuxTcRouter::new(cfg).unwrap();
    let mut ids = g.stream.alloc_zeros::<i32>(t * k).unwrap();
    let mut weights = g.stream.alloc_zeros::<f32>(t * k).unwrap();
    let mut store = CaptureStore::new(&g.stream, with_weights).unwrap();
    let got = step(&mut store, &mut |s| {
        let mut out = flashinfer_rs::routing::NoAuxTcOutputs {
            ids: ids.as_view_mut(),
            weights_f32: weights.as_view_mut(),
        };
        noaux
            .route_captured(&g.stream, &input, &mut out, s.layer_views(0).unwrap())
            .unwrap()
    });
    assert_eq!(got.rows.ids, want.ids, "NoAuxTcRouter::route_captured ids");
    let theirs = g.stream.clone_dtoh(&weights).unwrap();
    assert_eq!(
        got.rows.weights.as_deref(),
        Some(&theirs[..]),
        "the store's weights are the call's"
    );
    for (j, (&w, &o)) in theirs.iter().zip(&want.weights).enumerate() {
        assert!(
            weight_matches(w, o),
            "pair {j}: NoAuxTc weight {w} vs the oracle's {o}"
        );
    }
    println!("Router and NoAuxTcRouter route_captured: {t} tokens x {k} of {e} = oracle");
}
