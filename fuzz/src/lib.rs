//! Fuzz entry points: each takes arbitrary bytes, builds arguments for one validation layer
//! from them, and checks what must hold whatever the input (no panic, no overflow, and when
//! the layer accepts, the invariants its callers rely on). Only flashinfer-rs's public,
//! GPU-free API is called (the kernels' plans, `flashinfer_rs::plan`, and the capture
//! types). The cargo-fuzz targets in `fuzz_targets/` call these; flashinfer-rs's
//! `tests/fuzz_corpus.rs` includes this file and replays the committed corpora and past
//! crash inputs through them on stable.

use flashinfer_rs::capture::{
    Assembler, AssemblerConfig, ExpertMap, LayerMajorRows, RoutedExperts, RowOwner, SlotStore,
    SlotStoreConfig, StepLayout, StepRows,
};
use flashinfer_rs::fused::plan::fi_dtype;
use flashinfer_rs::fused::{Activation, MoeOptions, Tactic, WeightLayout};
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};

/// Reads fuzz bytes as numbers; past the end it yields zeros, so every input is usable.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }
    /// One byte.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    /// A little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    /// A size: mostly small (so accepted inputs are reached), sometimes any u64.
    pub fn size(&mut self) -> usize {
        match self.u8() % 4 {
            0 => self.u8() as usize,
            1 => self.u32() as usize % 5000,
            2 => self.u32() as usize,
            _ => u64::from_le_bytes(std::array::from_fn(|_| self.u8())) as usize,
        }
    }
    /// A small count (0..=max).
    pub fn small(&mut self, max: u8) -> usize {
        (self.u8() % (max + 1)) as usize
    }
    /// A bool.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    /// Any f32 bit pattern (NaN and infinities included).
    pub fn f32(&mut self) -> f32 {
        f32::from_bits(self.u32())
    }
    /// Whether input is left.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

fn method(b: &mut Bytes) -> RoutingMethod {
    match b.u8() % 9 {
        0 => RoutingMethod::Default,
        1 => RoutingMethod::Renormalize,
        2 => RoutingMethod::RenormalizeNaive,
        3 => RoutingMethod::DeepSeekV3 {
            n_group: b.u32() % 20,
            topk_group: b.u32() % 8,
            routed_scaling_factor: b.f32(),
        },
        4 => RoutingMethod::Llama4,
        5 => RoutingMethod::TopK,
        6 => RoutingMethod::SigmoidRenorm {
            norm_topk_prob: b.bool(),
        },
        7 => RoutingMethod::MiniMax2 {
            routed_scaling_factor: b.f32(),
        },
        _ => RoutingMethod::Sigmoid,
    }
}

/// A routing config: mostly plausible numbers, sometimes anything.
pub fn routing_config_from(b: &mut Bytes) -> RoutingConfig {
    let m = method(b);
    let wild = b.u8().is_multiple_of(8);
    let num = |b: &mut Bytes, small: u32| if wild { b.u32() } else { b.u32() % small };
    let e = num(b, 3000);
    let k = num(b, 40);
    let mut cfg = RoutingConfig::new(m, e, k);
    if b.bool() {
        cfg = cfg.with_local_experts(num(b, 3000), num(b, 3000));
    }
    if b.bool() {
        cfg = cfg.with_tile_tokens_dim(num(b, 600));
    }
    cfg
}

/// Target `routing_config`: `RoutingConfig::validate` and, when it accepts, what the kernels
/// rely on.
pub fn routing_config(data: &[u8]) {
    let mut b = Bytes::new(data);
    let cfg = routing_config_from(&mut b);
    if cfg.validate().is_ok() {
        let lim = cfg.method.limits();
        assert!(cfg.top_k >= 1 && cfg.top_k <= cfg.num_experts, "{cfg:?}");
        assert!(
            cfg.num_experts <= lim.max_experts && cfg.top_k <= lim.max_top_k,
            "{cfg:?}"
        );
        assert!(
            u64::from(cfg.local_expert_offset) + u64::from(cfg.local_num_experts)
                <= u64::from(cfg.num_experts),
            "{cfg:?}"
        );
        assert!(cfg.tile_tokens_dim.is_power_of_two(), "{cfg:?}");
        let p = cfg.raw_params(b.size(), fi_dtype::FI_DTYPE_F32, fi_dtype::FI_DTYPE_BF16);
        assert_eq!(p.top_k as u32, cfg.top_k);
    }
}

/// Target `routing_call`: the per-call rules of the routing call on sizes
/// ([`RoutePlan::check_batch`](flashinfer_rs::plan::RoutePlan::check_batch)).
pub fn routing_call(data: &[u8]) {
    use flashinfer_rs::plan::{RouteBatchSizes, RoutePlan, RoutingBuffersShape};
    let mut b = Bytes::new(data);
    let cfg = routing_config_from(&mut b);
    let Ok(plan) = RoutePlan::new(cfg) else {
        return;
    };
    // Read in the order the corpora were made with: the call's sizes, then the buffers'.
    let call = RouteBatchSizes {
        num_tokens: b.size(),
        logits: b.size(),
        bias: b.bool().then(|| b.size()),
        replay: b.bool().then(|| (b.size(), b.size())),
        buffers: RoutingBuffersShape::default(),
    };
    let same = !b.u8().is_multiple_of(4);
    let buffers = RoutingBuffersShape {
        max_tokens: b.size(),
        num_experts: if same {
            cfg.num_experts as usize
        } else {
            b.size()
        },
        top_k: if same { cfg.top_k as usize } else { b.size() },
        tile_tokens_dim: if same {
            cfg.tile_tokens_dim as usize
        } else {
            b.size()
        },
    };
    let call = RouteBatchSizes { buffers, ..call };
    if plan.check_batch(&call).is_ok() {
        let (t, e, k) = (
            call.num_tokens,
            cfg.num_experts as usize,
            cfg.top_k as usize,
        );
        assert!(t <= buffers.max_tokens);
        assert!(call.logits as u128 >= t as u128 * e as u128);
        if let Some((rows, cols)) = call.replay {
            assert!(rows >= t && cols == k);
        }
    }
}

/// Target `fused_plan`: every rule of a fused call on sizes (a layer's
/// [`FusedPlan::new`], then its batch's
/// [`FusedPlan::batch_tensors`](flashinfer_rs::plan::FusedPlan::batch_tensors)); when both
/// accept, every tensor handed over fits in what the caller passed.
pub fn fused_plan(data: &[u8]) {
    use flashinfer_rs::fused::plan::{Fp4Act, Fp4W, MoeTensor};
    use flashinfer_rs::plan::{
        FusedBatchSizes, FusedLayerSizes, FusedPlan, Op, RoutingSrc, TensorSize,
    };
    let mut b = Bytes::new(data);
    let op = match b.u8() % 5 {
        0 => Op::Bf16,
        1 => Op::Fp8PerTensor,
        2 => Op::Fp8BlockDeepSeek,
        3 => Op::Fp8BlockMx,
        _ => Op::Fp4 {
            act: [Fp4Act::Bf16, Fp4Act::E4m3, Fp4Act::MxE4m3, Fp4Act::Nvfp4][b.small(3)],
            weights: if b.bool() { Fp4W::Nvfp4 } else { Fp4W::Mxfp4 },
        },
    };
    let routing = routing_config_from(&mut b);
    let (num_tokens, hidden_size, intermediate_size) = (b.size(), b.size(), b.size());
    let dtype = |b: &mut Bytes| (b.u8() % 8) as fi_dtype::Type;
    let src = if b.u8().is_multiple_of(4) {
        RoutingSrc::Packed { len: b.size() }
    } else {
        RoutingSrc::Logits {
            dtype: dtype(&mut b),
            len: b.size(),
            bias: b.bool().then(|| (dtype(&mut b), b.size())),
        }
    };
    let activation = [
        Activation::Gelu,
        Activation::Relu,
        Activation::Silu,
        Activation::Swiglu,
        Activation::Geglu,
        Activation::SwigluBias,
        Activation::Relu2,
        Activation::SwigluStep,
        Activation::Identity,
    ][b.small(8)];
    let layout = [
        WeightLayout::MajorK,
        WeightLayout::MajorMn,
        WeightLayout::BlockMajorK,
    ][b.small(2)];
    let mut opts = MoeOptions::new(layout);
    opts.activation = activation;
    opts.use_shuffled_weight = b.bool();
    opts.do_finalize = b.bool();
    opts.tactic = b.bool().then(|| Tactic {
        tile_n: (b.u32() as i32) as i64,
        config: (b.u32() as i32) as i64,
    });
    let replay = b.bool().then(|| (b.size(), b.size()));
    let mut given = Vec::new();
    // Any tensor of the ABI, the routing ones included: the plan takes those from `src` and
    // `replay` and must refuse them in `given`, never crash.
    let all = MoeTensor::ALL;
    for _ in 0..b.small(24) {
        given.push(TensorSize {
            tensor: all[b.small(all.len() as u8 - 1)],
            dtype: dtype(&mut b),
            len: b.size(),
        });
    }
    // The layer's tensors and the batch's, as a layer and its calls pass them.
    let (weights, inputs) = given.iter().partition(|g| op.in_layer(g.tensor));
    let layer = FusedLayerSizes {
        op,
        hidden_size,
        intermediate_size,
        routing,
        opts,
        weights,
    };
    let batch = FusedBatchSizes {
        num_tokens,
        src,
        replay,
        inputs,
    };
    let planned = FusedPlan::new(layer).and_then(|layer| {
        let batch = layer.batch_tensors(&batch)?;
        Ok(layer
            .layer_tensors()
            .iter()
            .copied()
            .chain(batch)
            .collect::<Vec<_>>())
    });
    if let Ok(specs) = planned {
        for s in &specs {
            let numel = s
                .shape()
                .iter()
                .try_fold(1u128, |acc, &d| (d >= 0).then(|| acc * d as u128))
                .expect("no negative dimension");
            let g = given.iter().find(|g| g.tensor == s.tensor);
            let have = match (s.tensor, src) {
                (MoeTensor::RoutingLogits, RoutingSrc::Logits { len, .. }) => len,
                (MoeTensor::RoutingBias, RoutingSrc::Logits { bias, .. }) => {
                    bias.expect("bias spec without a bias").1
                }
                (MoeTensor::ExpertIndices, RoutingSrc::Packed { len }) => len,
                (MoeTensor::RoutingReplayOut, _) => {
                    let (rows, cols) = replay.expect("replay spec without replay");
                    rows.checked_mul(cols).expect("replay size fits")
                }
                (t, _) => {
                    let g = g.unwrap_or_else(|| panic!("{t:?}: spec of no given tensor"));
                    assert_eq!(g.dtype, s.dtype, "{t:?}: handed over as another dtype");
                    g.len
                }
            };
            assert!(
                numel <= have as u128,
                "{:?} needs {numel}, has {have}",
                s.tensor
            );
        }
        for g in &given {
            assert!(
                specs.iter().any(|s| s.tensor == g.tensor),
                "{:?} passed but not handed over",
                g.tensor
            );
        }
    }
}

/// A layer dimension: mostly a multiple of 64 the CUTLASS MoE takes, sometimes anything.
fn dim(b: &mut Bytes) -> usize {
    if b.u8().is_multiple_of(4) {
        b.size()
    } else {
        64 * (b.small(31) + 1)
    }
}

/// A length: mostly `right` (so the rules after it are reached), sometimes anything.
fn len_or(b: &mut Bytes, right: Option<usize>) -> usize {
    match right {
        Some(n) if !b.u8().is_multiple_of(4) => n,
        _ => b.size(),
    }
}

/// Target `cutlass_plan`: every rule of the Hopper MoE layer on sizes: a layer's config and
/// weights' lengths ([`CutlassPlan::new`](flashinfer_rs::cutlass::CutlassPlan::new)), an fp8
/// layer's scales and a block-scale layer's sizes and block scales, then calls' sizes
/// ([`CutlassPlan::check_batch`](flashinfer_rs::cutlass::CutlassPlan::check_batch)). When a
/// rule accepts: the shapes the kernels rely on hold, and every buffer of an accepted call
/// covers what the call reads or writes.
pub fn cutlass_plan(data: &[u8]) {
    use flashinfer_rs::cutlass::{
        CutlassBatchSizes, CutlassFp8Scales, CutlassMoeConfig, CutlassPlan, CutlassRoutingSizes,
    };
    let mut b = Bytes::new(data);
    let routing = routing_config_from(&mut b);
    let (hidden_size, intermediate_size) = (dim(&mut b), dim(&mut b));
    let max_tokens = b.size();
    let config = CutlassMoeConfig {
        routing,
        hidden_size,
        intermediate_size,
        max_tokens,
    };
    let (h, i) = (hidden_size, intermediate_size);
    let local = routing.local_num_experts as usize;
    let product = |dims: &[usize]| dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let fc1 = len_or(&mut b, product(&[local, 2, i, h]));
    let fc2 = len_or(&mut b, product(&[local, h, i]));
    let Ok(plan) = CutlassPlan::new(config, fc1, fc2) else {
        return;
    };
    let (e, k) = (routing.num_experts as usize, routing.top_k as usize);
    assert!(h % 64 == 0 && i % 64 == 0 && (64..=65536).contains(&h) && (64..=65536).contains(&i));
    assert!(max_tokens >= 1 && (max_tokens as u128) * (e as u128) <= i32::MAX as u128);
    assert!(k >= 1 && k <= e && local >= 1);
    assert_eq!((plan.fc1_len(), plan.fc2_len()), (fc1, fc2));
    assert_eq!(plan.fc1_len(), local * 2 * i * h);
    assert_eq!(plan.ep_size() * local, e, "{config:?}");
    assert_eq!(
        plan.ep_rank() * local,
        routing.local_expert_offset as usize,
        "{config:?}"
    );
    assert!(plan.ep_rank() < plan.ep_size());

    // An fp8 per-tensor layer's scales: any f32 bits (NaN, infinities, 0, subnormals).
    let count = |b: &mut Bytes| if b.bool() { local } else { b.small(8) };
    let (n1, n2) = (count(&mut b), count(&mut b));
    let scales = CutlassFp8Scales {
        fc1_weights: (0..n1.min(64)).map(|_| b.f32()).collect(),
        fc2_weights: (0..n2.min(64)).map(|_| b.f32()).collect(),
        fc1_input: b.f32(),
        fc2_input: b.f32(),
    };
    if plan.check_fp8_scales(&scales).is_ok() {
        let usable = |v: f32| v.is_finite() && v > 0.0 && (1.0 / v).is_finite();
        assert_eq!(
            (scales.fc1_weights.len(), scales.fc2_weights.len()),
            (local, local)
        );
        for (input, weights) in [
            (scales.fc1_input, &scales.fc1_weights),
            (scales.fc2_input, &scales.fc2_weights),
        ] {
            assert!(usable(input) && weights.iter().all(|&w| usable(w) && usable(input * w)));
        }
    }

    // A block-scale layer: its sizes and its block scales' lengths.
    let blocks = |n: usize| n / 128;
    let s1 = len_or(&mut b, product(&[local, 2, blocks(i), blocks(h)]));
    let s2 = len_or(&mut b, product(&[local, blocks(h), blocks(i)]));
    if plan.check_fp8_blocks(s1, s2).is_ok() {
        assert!(h % 128 == 0 && i % 128 == 0 && h <= 20480 && i <= 20480);
        assert_eq!(s1, local * 2 * blocks(i) * blocks(h));
        assert_eq!(s2, local * blocks(h) * blocks(i));
    }

    // Calls: mostly within max_tokens with the right lengths, sometimes anything.
    for _ in 0..8 {
        if b.is_empty() {
            break;
        }
        let t = if b.bool() {
            b.size() % (max_tokens + 1)
        } else {
            b.size()
        };
        let rows = |b: &mut Bytes, cols: usize| len_or(b, t.checked_mul(cols));
        let routing = if b.bool() {
            let logits = rows(&mut b, e);
            let bias = b.bool().then(|| len_or(&mut b, Some(e)));
            CutlassRoutingSizes::Logits { logits, bias }
        } else {
            let (ids, scales) = (rows(&mut b, k), rows(&mut b, k));
            CutlassRoutingSizes::Precomputed { ids, scales }
        };
        let call = CutlassBatchSizes {
            num_tokens: t,
            routing,
            hidden_states: rows(&mut b, h),
            output: rows(&mut b, h),
            replay: b.bool().then(|| {
                let r = if b.bool() { t } else { b.size() };
                (r, if b.bool() { k } else { b.size() })
            }),
            captured_weights: b.bool().then(|| rows(&mut b, k)),
        };
        if plan.check_batch(&call).is_err() {
            continue;
        }
        let covers = |len: usize, cols: usize| len as u128 >= t as u128 * cols as u128;
        assert!(t <= max_tokens, "{call:?}");
        assert!(
            covers(call.hidden_states, h) && covers(call.output, h),
            "{call:?}"
        );
        match call.routing {
            CutlassRoutingSizes::Logits { logits, bias } => {
                assert!(covers(logits, e), "{call:?}");
                assert!(bias.is_none_or(|n| n == e), "{call:?}");
                if let Some((r, c)) = call.replay {
                    assert!(r >= t && c == k, "{call:?}");
                }
            }
            CutlassRoutingSizes::Precomputed { ids, scales } => {
                assert!(covers(ids, k) && covers(scales, k), "{call:?}");
                assert!(call.replay.is_none() && call.captured_weights.is_none());
            }
        }
        if let Some(n) = call.captured_weights {
            assert!(covers(n, k), "{call:?}");
        }
    }
}

/// Target `capture_layout`: step layouts from every constructor against a store size.
pub fn capture_layout(data: &[u8]) {
    let mut b = Bytes::new(data);
    let max_tokens = b.size();
    let layout = match b.u8() % 4 {
        0 => Some(StepLayout::single(b.size())),
        1 => StepLayout::padded(b.size(), b.size()).ok(),
        2 => {
            let ranks: Vec<usize> = (0..b.small(9)).map(|_| b.size()).collect();
            StepLayout::data_parallel(b.small(9), &ranks).ok()
        }
        _ => Some(StepLayout {
            routed_rows: b.size(),
            keep: b.size()..b.size(),
        }),
    };
    if let Some(l) = layout {
        if l.check(max_tokens).is_ok() {
            assert!(l.routed_rows <= max_tokens);
            assert!(l.keep.start <= l.keep.end && l.keep.end <= l.routed_rows);
        }
    }
}

/// A position or count: mostly small (so steps land), sometimes at or past any bound.
fn position(b: &mut Bytes) -> usize {
    match b.u8() % 8 {
        0 => b.size(),
        1 => usize::MAX - b.small(2),
        _ => b.small(12),
    }
}

/// An expert id: mostly valid for a small model, sometimes -1, negative or too large.
fn expert_id(b: &mut Bytes) -> i16 {
    match b.u8() % 8 {
        0 => -1,
        1 => (b.u8() as i16) - 128,
        2 => b.u32() as i16,
        _ => (b.u8() % 64) as i16,
    }
}

/// Target `assembly`: arbitrary sequences of assembler and KV-slot-store operations over
/// arbitrary configs (zero sizes included), with or without an expert map (replicated
/// experts), positions and token counts up to `usize::MAX`, reversed and out-of-range slot
/// ranges, ids outside the model, steps with and without weights (NaN and infinities
/// included), token-major and layer-major, and incremental exports interleaved. Errors are
/// fine, panics and aborts are not; what is accepted keeps its invariants: exports have the
/// shape they claim and hold only experts of the exported model or -1, weights beside them
/// when rows carried any, lookups hold whole rows.
pub fn assembly(data: &[u8]) {
    let mut b = Bytes::new(data);
    let Some(mut f) = AssemblyFuzz::new(&mut b) else {
        return;
    };
    while !b.is_empty() {
        f.op(&mut b);
    }
}

/// A size: mostly `1 + small(max)` (or `small(max)` when `zero_ok`), sometimes anything.
fn pick(b: &mut Bytes, max: u8, zero_ok: bool) -> usize {
    if b.u8().is_multiple_of(16) {
        b.size()
    } else {
        b.small(max) + usize::from(!zero_ok)
    }
}

/// The `assembly` target's state: the assembler (maybe with an expert map), a KV-slot store,
/// and what exports must hold.
struct AssemblyFuzz {
    asm: Assembler,
    slots: Option<SlotStore>,
    layers: usize,
    top_k: usize,
    /// Experts of the exported ids (the logical count with a map).
    exported_experts: u32,
    max_positions: usize,
}

impl AssemblyFuzz {
    fn new(b: &mut Bytes) -> Option<AssemblyFuzz> {
        let layers = pick(b, 3, false);
        let top_k = pick(b, 3, false);
        let num_experts = match b.u8() % 8 {
            0 => b.u32(),
            1 => 300,
            _ => 64,
        };
        let max_positions = pick(b, 15, false);
        let config = AssemblerConfig::new(layers, top_k, num_experts, max_positions);
        // Sometimes replicated experts: a table of the physical experts (a small model only:
        // the table is the caller's allocation), maybe of another size than the config's.
        let map = (b.u8().is_multiple_of(4) && num_experts <= 1024).then(|| {
            let physical = num_experts as usize + usize::from(b.u8().is_multiple_of(8));
            let logical = b.u32() % 300;
            let table: Vec<u32> = (0..physical).map(|_| b.u32() % (logical + 2)).collect();
            (ExpertMap::new(&table, logical), logical)
        });
        let (asm, exported_experts) = match map {
            None => (Assembler::new(config).ok()?, num_experts),
            Some((map, logical)) => (Assembler::with_expert_map(config, map.ok()?).ok()?, logical),
        };
        let row = layers * top_k; // accepted configs do not overflow
                                  // A request may take up to max_positions x row ids: that is the caller's bound, and a
                                  // bound of terabytes would make the fuzzer's allocator abort. Keep it to 32 MiB.
        if max_positions.saturating_mul(row) > 16 << 20 {
            return None;
        }
        let num_slots = pick(b, 16, true);
        let slots = SlotStore::new(SlotStoreConfig::new(
            num_slots,
            layers,
            top_k,
            num_experts,
            1 << 20,
        ))
        .ok();
        Some(AssemblyFuzz {
            asm,
            slots,
            layers,
            top_k,
            exported_experts,
            max_positions,
        })
    }

    fn row(&self) -> usize {
        self.layers * self.top_k
    }

    /// A step's ids (sometimes one short) and maybe its weights (sometimes one short too).
    fn rows(&self, b: &mut Bytes, tokens: usize) -> (Vec<i16>, Option<Vec<f32>>) {
        let n = tokens * self.row();
        let mut ids: Vec<i16> = (0..n).map(|_| expert_id(b)).collect();
        if b.u8().is_multiple_of(8) {
            ids.pop();
        }
        let weights = b.bool().then(|| {
            let mut w: Vec<f32> = (0..n).map(|_| b.f32()).collect();
            if b.u8().is_multiple_of(8) {
                w.pop();
            }
            w
        });
        (ids, weights)
    }

    fn owners(&self, b: &mut Bytes, tokens: usize) -> Vec<RowOwner> {
        (0..tokens + b.small(1))
            .map(|_| {
                if b.u8().is_multiple_of(4) {
                    RowOwner::Padding
                } else {
                    RowOwner::Token {
                        request: request(b),
                        position: position(b),
                    }
                }
            })
            .collect()
    }

    /// What every accepted export must hold.
    fn check(&self, e: &RoutedExperts) {
        assert_eq!(e.ids().len(), e.tokens() * self.row());
        assert!(e.tokens() <= self.max_positions);
        assert_eq!(e.num_experts(), self.exported_experts);
        assert!(e.ids().iter().all(|&i| i == flashinfer_rs::capture::UNKNOWN
            || (0..self.exported_experts as i64).contains(&(i as i64))));
        assert!(e.to_npy().starts_with(b"\x93NUMPY"));
        let _ = e.to_vllm_base64();
        let _ = e.to_flat_base64();
        if let Some(w) = e.weights() {
            assert_eq!(w.len(), e.ids().len());
            assert!(e
                .to_weights_npy()
                .is_some_and(|n| n.starts_with(b"\x93NUMPY")));
            assert!(e.to_flat_weights_base64().is_some());
        }
    }

    fn op(&mut self, b: &mut Bytes) {
        let (layers, top_k) = (self.layers, self.top_k);
        match b.u8() % 10 {
            0 => {
                let _ = self.asm.start(request(b), position(b));
            }
            1 => {
                let tokens = b.small(6);
                let (ids, weights) = self.rows(b, tokens);
                let step = StepRows {
                    weights,
                    tokens,
                    layers,
                    top_k,
                    ids,
                };
                let owners = self.owners(b, tokens);
                let _ = self.asm.push_step(&step, &owners);
                if let Some(s) = self.slots.as_mut() {
                    let names: Vec<Option<usize>> =
                        (0..tokens).map(|_| b.bool().then(|| position(b))).collect();
                    let _ = s.record(&names, &step);
                }
            }
            2 => {
                let tokens = b.small(6);
                let (ids, weights) = self.rows(b, tokens);
                let step = LayerMajorRows {
                    tokens,
                    layers,
                    top_k,
                    ids: &ids,
                    weights: weights.as_deref(),
                };
                let owners = self.owners(b, tokens);
                let _ = self.asm.push_layer_major(&step, &owners);
            }
            3 => {
                let n = if b.bool() { self.row() } else { b.small(8) };
                let ids: Vec<i16> = (0..n).map(|_| expert_id(b)).collect();
                let _ = self.asm.set_row(request(b), position(b), &ids);
            }
            4 => {
                let _ = self.asm.truncate(request(b), position(b));
            }
            5 => {
                self.asm.abort(request(b));
            }
            6 => {
                if let Ok(e) = self.asm.finish(request(b), position(b)) {
                    self.check(&e);
                }
            }
            7 => {
                if let Ok(span) = self.asm.export_new(request(b), position(b)) {
                    self.check(&span.experts);
                }
            }
            8 => {
                let (r, from) = (request(b), position(b));
                if let Ok(span) = self.asm.export_range(r, from, position(b)) {
                    assert_eq!(span.first_position, from);
                    self.check(&span.experts);
                }
            }
            _ => self.slots_op(b),
        }
    }

    fn slots_op(&mut self, b: &mut Bytes) {
        let row = self.row();
        if let Some(s) = self.slots.as_mut() {
            if let Some(found) = s.lookup(position(b)) {
                assert_eq!(found.len(), row);
            }
            let (a, z) = (position(b), position(b));
            let _ = s.invalidate(a..z);
        }
    }
}

fn request(b: &mut Bytes) -> u64 {
    u64::from(b.u8() % 4)
}

/// A fuzz target: bytes in, panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by name (for the corpus replay test).
pub const TARGETS: [(&str, Target); 6] = [
    ("routing_config", routing_config),
    ("routing_call", routing_call),
    ("fused_plan", fused_plan),
    ("cutlass_plan", cutlass_plan),
    ("capture_layout", capture_layout),
    ("assembly", assembly),
];
