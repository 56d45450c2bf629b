//! One rank of the harness: its communicator, the three layouts' stores, and the checks.
use std::ops::Range;
use std::process::ExitCode;
use std::sync::Arc;

use flashinfer_rs::capture::{
    shard_ranges, CaptureConfig, CaptureStore, CollectedStep, ShardGather, StepLayout,
};
use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream};
use flashinfer_rs::cudarc::nccl::{Comm, Id};
use flashinfer_rs::routing::oracle::{self, SplitMix64};
use flashinfer_rs::routing::{RouteInput, Router, RoutingBuffers, RoutingConfig, RoutingMethod};

/// MoE layers per step.
const LAYERS: usize = 4;
/// Rows of pre-generated logits per layer (the same on every rank: one seed).
const POOL: usize = 1024;
/// The most tokens one rank holds in a step (its shard, or its DP batch).
const MAX_SHARD: usize = 48;

fn env(var: &str) -> usize {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set (the launcher sets it)"))
        .parse()
        .unwrap_or_else(|_| panic!("{var}: not a number"))
}

/// The unique id the launcher made, from its hex form.
fn nccl_id() -> Id {
    let hex = std::env::var("FLASHINFER_RS_NCCL_ID").expect("FLASHINFER_RS_NCCL_ID");
    let mut internal = [0 as std::ffi::c_char; 128];
    for (i, byte) in internal.iter_mut().enumerate() {
        let b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("a hex NCCL id");
        *byte = b as std::ffi::c_char;
    }
    Id::uninit(internal)
}

/// Per layer: the pool's logits on the device and the oracle's ids for every pool row.
struct Pool {
    cfg: RoutingConfig,
    logits: Vec<CudaSlice<f32>>,
    want: Vec<Vec<i16>>,
}

impl Pool {
    fn new(stream: &Arc<CudaStream>, cfg: RoutingConfig) -> Pool {
        let (mut logits, mut want) = (Vec::new(), Vec::new());
        for l in 0..LAYERS {
            let host =
                oracle::separated_logits_for_bias(&cfg, POOL, false, 300 + l as u64, None).unwrap();
            want.push(oracle::route(&cfg, &host, None, POOL).unwrap().ids);
            logits.push(stream.clone_htod(&host).unwrap());
        }
        Pool { cfg, logits, want }
    }

    /// Layer `l`'s logits of pool rows `rows`.
    fn input(&self, l: usize, rows: Range<usize>) -> RouteInput<'_> {
        let e = self.cfg.num_experts as usize;
        RouteInput {
            logits: self.logits[l].slice(rows.start * e..rows.end * e).into(),
            bias: None,
            num_tokens: rows.len(),
        }
    }

    /// Asserts that collected rows `at..at + len` of every layer are pool rows
    /// `pool_row..pool_row + len` (`what` names the layout and the step in a failure).
    fn check(&self, got: &CollectedStep, at: usize, pool_row: usize, len: usize, what: &str) {
        let k = self.cfg.top_k as usize;
        for r in 0..len {
            for l in 0..LAYERS {
                let g = ((at + r) * LAYERS + l) * k;
                let w = (pool_row + r) * k;
                assert_eq!(
                    &got.rows.ids[g..g + k],
                    &self.want[l][w..w + k],
                    "{what}: row {} layer {l}",
                    at + r
                );
            }
        }
    }
}

/// What one step routes: every rank's batch size and pool offset (the same on every rank).
struct Step {
    sizes: Vec<usize>,
    offsets: Vec<usize>,
}

impl Step {
    fn draw(rng: &mut SplitMix64, world: usize) -> Step {
        Step {
            // Zero included: a DP rank with no tokens this step still takes part.
            sizes: (0..world).map(|_| rng.below(MAX_SHARD + 1)).collect(),
            offsets: (0..world).map(|_| rng.below(POOL - MAX_SHARD)).collect(),
        }
    }
    fn rows_of(&self, rank: usize) -> Range<usize> {
        self.offsets[rank]..self.offsets[rank] + self.sizes[rank]
    }
}

fn store(stream: &Arc<CudaStream>, max_tokens: usize, top_k: usize) -> CaptureStore {
    let cfg = CaptureConfig::new(LAYERS, max_tokens, top_k);
    CaptureStore::new(stream, cfg).unwrap()
}

/// Rows checked per layout, over the run.
#[derive(Default)]
struct Checked {
    per_rank: usize,
    dispatch: usize,
    sequence_parallel: usize,
}

pub fn run(rank: usize) -> ExitCode {
    let world = env("FLASHINFER_RS_WORLD");
    let ctx = flashinfer_rs::cuda_context(env("FLASHINFER_RS_RANK_DEVICE")).unwrap();
    let stream = ctx.new_stream().unwrap();
    let steps = std::env::var("FLASHINFER_RS_RANK_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let comm = Comm::from_rank(stream.clone(), rank, world, nccl_id())
        .unwrap_or_else(|e| panic!("rank {rank}: NCCL communicator: {e:?}"));
    let cfg = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8);
    let (e, k) = (cfg.num_experts as usize, cfg.top_k as usize);
    assert!(
        e % world == 0,
        "{e} experts do not split over {world} ranks"
    );
    let local = cfg.with_local_experts((rank * e / world) as u32, (e / world) as u32);
    let pool = Pool::new(&stream, cfg);
    let padded = world * MAX_SHARD;

    let router = Router::new(cfg).unwrap();
    let ep_router = Router::new(local).unwrap();
    let mut buffers = RoutingBuffers::new(&stream, &cfg, padded).unwrap();
    let mut ep_buffers = RoutingBuffers::new(&stream, &local, padded).unwrap();
    let mut own = store(&stream, MAX_SHARD, k);
    let mut dispatched = store(&stream, padded, k);
    let mut gathered = store(&stream, padded, k);
    // Dispatch buffers: this rank's logits (padded) and every rank's, all-gathered.
    let mut send = stream.alloc_zeros::<f32>(MAX_SHARD * e).unwrap();
    let mut recv = stream.alloc_zeros::<f32>(padded * e).unwrap();
    let mut gather = ShardGather::new(comm, LAYERS, MAX_SHARD, k).unwrap();

    refuses_bad_gathers(&stream, &mut gather, world, k);

    let mut rng = SplitMix64(2026);
    let mut checked = Checked::default();
    for i in 0..steps {
        let step = Step::draw(&mut rng, world);
        let mine = step.rows_of(rank);
        let n = mine.len();
        let what = |layout: &str| format!("rank {rank} step {i} {layout}");

        // 1. Per-rank combine: only this rank's tokens.
        own.begin_step(&stream, StepLayout::per_rank(n)).unwrap();
        for l in (0..LAYERS).filter(|_| n > 0) {
            let mut view = own.replay_view(l).unwrap();
            let input = pool.input(l, mine.clone());
            router
                .route(&stream, &input, &mut buffers, Some(&mut view))
                .unwrap();
        }
        own.end_step(&stream).unwrap();
        let got = own.collect().unwrap().expect("a step in flight");
        pool.check(&got, 0, mine.start, n, &what("per-rank"));
        checked.per_rank += n;

        // 2. Naive DP dispatch with expert parallelism: every rank's tokens, padded.
        let layout = StepLayout {
            routed_rows: padded,
            keep: rank * MAX_SHARD..rank * MAX_SHARD + n,
        };
        dispatched.begin_step(&stream, layout).unwrap();
        for l in 0..LAYERS {
            if n > 0 {
                let src = pool.logits[l].slice(mine.start * e..mine.end * e);
                stream
                    .memcpy_dtod(&src, &mut send.slice_mut(0..n * e))
                    .unwrap();
            }
            gather.comm().all_gather(&send, &mut recv).unwrap();
            let mut view = dispatched.replay_view(l).unwrap();
            let input = RouteInput {
                logits: (&recv).into(),
                bias: None,
                num_tokens: padded,
            };
            ep_router
                .route(&stream, &input, &mut ep_buffers, Some(&mut view))
                .unwrap();
        }
        dispatched.end_step(&stream).unwrap();
        let got = dispatched.collect().unwrap().expect("a step in flight");
        pool.check(&got, 0, mine.start, n, &what("DP dispatch + EP"));
        checked.dispatch += n;

        // 3. Sequence parallelism: shards routed here, gathered once into the store.
        let total: usize = step.sizes.iter().sum();
        gathered
            .begin_step(&stream, StepLayout::sequence_parallel_gathered(total))
            .unwrap();
        for l in (0..LAYERS).filter(|_| n > 0) {
            let mut view = gather.shard_view(l).unwrap();
            let input = pool.input(l, mine.clone());
            router
                .route(&stream, &input, &mut buffers, Some(&mut view))
                .unwrap();
        }
        gather.gather_into(&step.sizes, &mut gathered).unwrap();
        gathered.end_step(&stream).unwrap();
        let got = gathered.collect().unwrap().expect("a step in flight");
        assert_eq!(got.rows.tokens, total, "{}: gathered rows", what("SP"));
        let ranges = shard_ranges(&step.sizes, world, MAX_SHARD, padded).unwrap();
        for (q, range) in ranges.iter().enumerate() {
            let from = step.offsets[q];
            pool.check(&got, range.start, from, range.len(), &what("SP"));
        }
        checked.sequence_parallel += total;
    }
    eprintln!(
        "rank {rank}/{world}: {steps} steps, rows checked against the oracle: per-rank {}, \
         DP dispatch + EP {}, SP gathered {}",
        checked.per_rank, checked.dispatch, checked.sequence_parallel
    );
    ExitCode::SUCCESS
}

/// Bad gathers are refused on the rank that makes them, before any collective is enqueued (so
/// no other rank is left waiting).
fn refuses_bad_gathers(stream: &Arc<CudaStream>, gather: &mut ShardGather, world: usize, k: usize) {
    use flashinfer_rs::Error;
    let mut target = store(stream, world * MAX_SHARD, k);
    let sizes = vec![1; world];
    assert!(matches!(
        gather.gather_into(&sizes, &mut target),
        Err(Error::CaptureProtocol {
            call: "gather_into",
            ..
        })
    ));
    target
        .begin_step(stream, StepLayout::sequence_parallel_gathered(world))
        .unwrap();
    for bad in [vec![1; world + 1], vec![MAX_SHARD + 1; world]] {
        assert!(matches!(
            gather.gather_into(&bad, &mut target),
            Err(Error::InvalidArgument { arg: "shards", .. })
        ));
    }
    let mut other_k = store(stream, world * MAX_SHARD, k + 1);
    assert!(matches!(
        gather.gather_into(&sizes, &mut other_k),
        Err(Error::InvalidArgument { arg: "store", .. })
    ));
    let mut small = store(stream, 1, k);
    assert!(matches!(
        gather.gather_into(&vec![MAX_SHARD; world], &mut small),
        Err(Error::InvalidArgument { arg: "shards", .. })
    ));
}
