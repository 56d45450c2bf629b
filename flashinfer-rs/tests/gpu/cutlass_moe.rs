//! The CUTLASS fused MoE on Hopper (`cutlass::CutlassMoe`, feature `sm90-moe`) against the
//! CPU reference MoE (`fused::oracle::moe`: upstream's test reference `run_moe_dequant`,
//! SwiGLU with the linear half first, f32 on the bf16 weights) fed by the routing oracle
//! (`oracle::route_topk`, the models' reference routers):
//! - every routing method x token counts {1, 7, 64, 257, 2048} x expert counts
//!   {8, 64, 128, 256} (where the method admits them), plus a Qwen3-30B-A3B-sized layer:
//!   output within bf16 tolerance, replay ids equal to the oracle's, spare rows untouched,
//!   output bit-identical with and without replay;
//! - every tactic the build has, fixed with `CutlassSchedule::Tactics`, on both sides of the per-call
//!   choice's threshold; and what each call takes (`CutlassMoe::kernels_for`, the rule the call
//!   applies) on both sides of each threshold, every schedule;
//! - expert parallelism: four ranks, each summing only its own experts, add up to the layer;
//! - precomputed ids give the same output bit for bit;
//! - the decode kernels (every call of up to `DECODE_MAX_TOKENS` tokens in a layer from `new`
//!   with small experts, which the cases above reach at 1 token) forced onto every size: odd
//!   shapes, a Qwen3-sized layer, expert parallelism, repeated and stray precomputed ids;
//! - a CUDA graph of three layers replayed with fresh inputs equals eager calls (grouped
//!   GEMMs and decode kernels);
//! - a capture store over a multi-step run with the layer in the loop (ids and weights);
//! - bad inputs refused with typed errors before anything is launched.
//!
//! Off Hopper, or in a build without `sm90-moe`, the layer is refused with a typed error
//! (checked here too).
use flashinfer_rs::cudarc::driver::CudaView;
use flashinfer_rs::cutlass::{CutlassMoe, CutlassMoeConfig, CutlassTactic, CutlassWeights};
use flashinfer_rs::half::bf16;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use flashinfer_rs::Error;

use crate::common::gpu;

/// A layer for this machine: `Some` where the CUTLASS MoE runs; else the refusal is checked
/// and `None` returned.
pub(crate) fn layer_here<'w>(
    cfg: CutlassMoeConfig,
    weights: CutlassWeights<CudaView<'w, bf16>>,
    test: &str,
) -> Option<CutlassMoe<CudaView<'w, bf16>>> {
    let got = CutlassMoe::new(cfg, weights);
    let build = flashinfer_rs::build_info();
    let ctx = flashinfer_rs::cuda_context(0).unwrap();
    let device = flashinfer_rs::device_info(&ctx).unwrap();
    match got {
        Ok(layer) => {
            assert!(build.cutlass_moe && device.cutlass_moe_supported);
            Some(layer)
        }
        Err(Error::KernelsNotBuilt) if !build.cutlass_moe => {
            assert!(
                std::env::var("FLASHINFER_RS_REQUIRE_CUTLASS_MOE").is_err(),
                "{test}: FLASHINFER_RS_REQUIRE_CUTLASS_MOE is set but this build has no sm90-moe"
            );
            eprintln!(
                "skipped: {test}: built without sm90-moe (refused as KernelsNotBuilt).unwrap()"
            );
            None
        }
        Err(Error::UnsupportedArch(m)) if !device.cutlass_moe_supported => {
            eprintln!("skipped: {test}: not a Hopper GPU (refused: {m})");
            None
        }
        Err(e) => panic!("{test}: unexpected refusal {e:?}"),
    }
}

/// Without the fp8 GEMMs (no `sm90-moe-fp8`), an fp8 layer is refused with a typed error: the
/// bf16 layer's refusal off Hopper, KernelsNotBuilt on it.
#[cfg(not(feature = "sm90-moe-fp8"))]
#[test]
fn fp8_layers_are_refused_without_their_gemms() {
    use flashinfer_rs::cutlass::CutlassFp8Scales;
    use flashinfer_rs::fused::E4m3;
    let test = "cutlass_moe::fp8_layers_are_refused_without_their_gemms";
    let Some(g) = gpu(test) else {
        return;
    };
    let routing = RoutingConfig::new(RoutingMethod::Renormalize, 8, 2);
    let cfg = CutlassMoeConfig {
        routing,
        hidden_size: 64,
        intermediate_size: 64,
        max_tokens: 4,
    };
    let fc1 = g.stream.alloc_zeros::<E4m3>(8 * 2 * 64 * 64).unwrap();
    let fc2 = g.stream.alloc_zeros::<E4m3>(8 * 64 * 64).unwrap();
    let weights = CutlassWeights {
        fc1: fc1.as_view(),
        fc2: fc2.as_view(),
    };
    let scales = CutlassFp8Scales {
        fc1_weights: vec![1.0; 8],
        fc2_weights: vec![1.0; 8],
        fc1_input: 1.0,
        fc2_input: 1.0,
    };
    assert!(!flashinfer_rs::build_info().cutlass_moe_fp8);
    let got = CutlassMoe::new_fp8(cfg, weights, &scales);
    assert!(
        matches!(got, Err(Error::KernelsNotBuilt | Error::UnsupportedArch(_))),
        "{test}: {got:?}"
    );
}

/// Every layer-building test first checks the machine, with tiny weights.
#[test]
fn the_layer_is_built_here_or_refused_with_a_typed_error() {
    let test = "cutlass_moe::the_layer_is_built_here_or_refused_with_a_typed_error";
    let Some(g) = gpu(test) else {
        return;
    };
    let cfg = CutlassMoeConfig {
        routing: RoutingConfig::new(RoutingMethod::Renormalize, 8, 2),
        hidden_size: 64,
        intermediate_size: 64,
        max_tokens: 4,
    };
    let fc1 = g.stream.alloc_zeros::<bf16>(8 * 2 * 64 * 64).unwrap();
    let fc2 = g.stream.alloc_zeros::<bf16>(8 * 64 * 64).unwrap();
    let weights = CutlassWeights {
        fc1: fc1.as_view(),
        fc2: fc2.as_view(),
    };
    let layer = layer_here(cfg, weights, test);
    if let Some(layer) = &layer {
        let (a, b) = layer.tactics().unwrap();
        let names = |t: &[CutlassTactic]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        eprintln!(
            "{test}: GEMM 1 tactics {:?}, GEMM 2 {:?}",
            names(&a),
            names(&b)
        );
        // What the per-call choice looks for (cutlass_moe.cu): the 128x16 swapped tile and
        // the 128x256 one, in both GEMMs, and the 128x64 swapped prefill tactic beside them;
        // and no fused weighted sum (its atomic scatter would make the output's bits vary from
        // call to call).
        let pair = |tile, swap_ab| CutlassTactic {
            tile,
            swap_ab,
            finalize: false,
        };
        for t in [&a, &b] {
            assert!(t.contains(&pair((128, 16), true)) && t.contains(&pair((128, 256), false)));
            assert!(t.contains(&pair((128, 64), true)));
            assert!(t.iter().all(|t| !t.finalize));
        }
    }
}

#[cfg(feature = "sm90-moe")]
pub(crate) mod on_hopper {
    use std::sync::Arc;

    use flashinfer_rs::capture::{CaptureConfig, CaptureStore, StepLayout};
    use flashinfer_rs::cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    use flashinfer_rs::cudarc::driver::{CudaSlice, CudaStream, CudaView};
    use flashinfer_rs::cutlass::{
        CutlassBatch, CutlassElement, CutlassKernels, CutlassMoe, CutlassMoeConfig, CutlassRouting,
        CutlassSchedule, CutlassTactic, CutlassWeights, CutlassWorkspace, WeightBuffer,
        DECODE_MAX_TOKENS,
    };
    use flashinfer_rs::fused::oracle::{self as moe_oracle, ActivationRounding, ExpertWeights};
    use flashinfer_rs::fused::Activation;
    use flashinfer_rs::half::bf16;
    use flashinfer_rs::routing::oracle::{self, Regime, SplitMix64};
    use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
    use flashinfer_rs::{Error, ReplayView};

    use super::layer_here;
    use crate::common::{gpu, Gpu};
    use crate::degenerate::one_per_method;
    use crate::routing::{case_data_for, CaseData, DeviceInputs, SENTINEL, SPARE_ROWS};

    /// bf16 tolerance of one output element (the kernels round GEMM 1's output and the
    /// activation to bf16, the reference does not): `|ref - out| <= 0.02 + 0.02 |out|`.
    pub(crate) const ATOL: f32 = 0.02;
    pub(crate) const RTOL: f32 = 0.02;

    /// Uniform in `[-scale, scale)`, bf16-exact.
    pub(crate) fn values(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| bf16::from_f32((rng.unit() as f32 * 2.0 - 1.0) * scale).to_f32())
            .collect()
    }

    pub(crate) fn upload(g: &Gpu, v: &[f32]) -> CudaSlice<bf16> {
        let b: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        g.stream.clone_htod(&b).unwrap()
    }

    /// Expert weights of `local` experts, host (f32) and device (bf16).
    struct Weights {
        host: ExpertWeights,
        fc1: CudaSlice<bf16>,
        fc2: CudaSlice<bf16>,
    }

    fn weights(g: &Gpu, local: usize, h: usize, i: usize, seed: u64) -> Weights {
        let mut rng = SplitMix64(seed);
        // Scaled so every GEMM output stays O(1).
        let w1 = values(&mut rng, local * 2 * i * h, 2.0 / (h as f32).sqrt());
        let w2 = values(&mut rng, local * h * i, 2.0 / (i as f32).sqrt());
        Weights {
            fc1: upload(g, &w1),
            fc2: upload(g, &w2),
            host: ExpertWeights { w1, w2 },
        }
    }

    impl Weights {
        fn views(&self) -> CutlassWeights<CudaView<'_, bf16>> {
            CutlassWeights {
                fc1: self.fc1.as_view(),
                fc2: self.fc2.as_view(),
            }
        }

        /// Expert-parallel rank `rank`'s slice (`per` experts) of every expert tensor.
        fn rank_slice(&self, g: &Gpu, rank: usize, per: usize, h: usize, i: usize) -> Weights {
            let host = ExpertWeights {
                w1: self.host.w1[rank * per * 2 * i * h..(rank + 1) * per * 2 * i * h].to_vec(),
                w2: self.host.w2[rank * per * h * i..(rank + 1) * per * h * i].to_vec(),
            };
            Weights {
                fc1: upload(g, &host.w1),
                fc2: upload(g, &host.w2),
                host,
            }
        }
    }

    pub(crate) fn config(
        routing: RoutingConfig,
        h: usize,
        i: usize,
        max_tokens: usize,
    ) -> CutlassMoeConfig {
        CutlassMoeConfig {
            routing,
            hidden_size: h,
            intermediate_size: i,
            max_tokens,
        }
    }

    /// The reference output of `case` (its oracle routing) over the local experts.
    fn reference(cfg: &CutlassMoeConfig, d: &CaseData, x: &[f32], w: &ExpertWeights) -> Vec<f32> {
        let ids: Vec<usize> = d.want.ids.iter().map(|&e| e as usize).collect();
        reference_of(
            cfg,
            d.tokens,
            x,
            &ids,
            &d.want.weights,
            w,
            ActivationRounding::Bf16,
        )
    }

    /// The reference output of `tokens` tokens routed to `ids` with `weights`, over the local
    /// experts (an id outside them adds nothing), the activation rounded as `rounding`.
    pub(crate) fn reference_of(
        cfg: &CutlassMoeConfig,
        tokens: usize,
        x: &[f32],
        ids: &[usize],
        weights: &[f32],
        w: &ExpertWeights,
        rounding: ActivationRounding,
    ) -> Vec<f32> {
        let r = &cfg.routing;
        let p = moe_oracle::ReferenceProblem {
            num_tokens: tokens,
            hidden_size: cfg.hidden_size,
            intermediate_size: cfg.intermediate_size,
            top_k: r.top_k as usize,
            local_expert_offset: r.local_expert_offset as usize,
            local_num_experts: r.local_num_experts as usize,
            activation: Activation::Swiglu,
            routing_scales_on_input: false,
        };
        moe_oracle::moe(&p, x, ids, weights, w, rounding).unwrap()
    }

    /// What one forward call wrote, downloaded.
    #[derive(PartialEq)]
    pub(crate) struct Outcome {
        pub(crate) output: Vec<u16>,
        pub(crate) replay: Option<Vec<i16>>,
    }

    pub(crate) fn forward<W: WeightBuffer>(
        g: &Gpu,
        layer: &CutlassMoe<W>,
        ws: &mut CutlassWorkspace,
        inputs: &DeviceInputs,
        x: &CudaSlice<bf16>,
        tokens: usize,
        with_replay: bool,
    ) -> Result<Outcome, Error>
    where
        W::Element: CutlassElement,
    {
        let (h, k) = (
            layer.config().hidden_size,
            layer.config().routing.top_k as usize,
        );
        let mut out = g
            .stream
            .clone_htod(&vec![bf16::NAN; tokens.max(1) * h])
            .unwrap();
        let mut replay = g
            .stream
            .clone_htod(&vec![SENTINEL; (tokens + SPARE_ROWS) * k])
            .unwrap();
        let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
        let input = inputs.input(tokens);
        let batch = CutlassBatch {
            num_tokens: tokens,
            routing: CutlassRouting::Logits {
                logits: input.logits,
                bias: input.bias,
            },
            hidden_states: x.as_view(),
        };
        layer.forward(
            &g.stream,
            batch,
            &mut out.as_view_mut(),
            ws,
            with_replay.then_some(&mut view),
        )?;
        Ok(Outcome {
            output: g.stream.clone_dtoh(&out).unwrap()[..tokens * h]
                .iter()
                .map(|v| v.to_bits())
                .collect(),
            replay: with_replay.then(|| g.stream.clone_dtoh(&replay).unwrap()),
        })
    }

    pub(crate) fn to_f32(bits: &[u16]) -> Vec<f32> {
        bits.iter().map(|&b| bf16::from_bits(b).to_f32()).collect()
    }

    /// One case's host data: the routing case, the hidden states and the reference output.
    struct Prepared {
        d: CaseData,
        x: Vec<f32>,
        want: Vec<f32>,
    }

    fn prepare(cfg: &CutlassMoeConfig, w: &ExpertWeights, tokens: usize, seed: u64) -> Prepared {
        let d = case(&cfg.routing, tokens, seed);
        let x = values(
            &mut SplitMix64(seed ^ 0x5eed),
            tokens * cfg.hidden_size,
            1.0,
        );
        let want = reference(cfg, &d, &x, w);
        Prepared { d, x, want }
    }

    /// The cases of `cfg` at every token count, prepared in parallel threads.
    fn prepare_all(
        cfg: &CutlassMoeConfig,
        w: &ExpertWeights,
        tokens: &[usize],
        seed: u64,
    ) -> Vec<Prepared> {
        std::thread::scope(|s| {
            let handles: Vec<_> = tokens
                .iter()
                .map(|&t| s.spawn(move || prepare(cfg, w, t, seed * 100_000 + t as u64)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    /// One case: routed from logits with and without replay. `None` when the output is the
    /// reference's, the replay ids are the oracle's with the spare rows untouched, and both
    /// calls wrote the same bits.
    fn verdict(g: &Gpu, cfg: &CutlassMoeConfig, w: &Weights, p: &Prepared) -> Option<String> {
        verdict_of(g, &CutlassMoe::new(*cfg, w.views()).unwrap(), p)
    }

    /// [`verdict`] of a given layer (e.g. with fixed tactics).
    fn verdict_of(g: &Gpu, layer: &CutlassMoe<CudaView<'_, bf16>>, p: &Prepared) -> Option<String> {
        let d = &p.d;
        let cfg = &layer.config();
        let mut ws = layer.workspace(&g.stream).unwrap();
        let x = upload(g, &p.x);
        let inputs = DeviceInputs::upload(&g.stream, d);
        let with = forward(g, layer, &mut ws, &inputs, &x, d.tokens, true).unwrap();
        let without = forward(g, layer, &mut ws, &inputs, &x, d.tokens, false).unwrap();
        if with.output != without.output {
            return Some("output differs with and without replay".into());
        }
        let k = cfg.routing.top_k as usize;
        let replay = with.replay.as_ref().unwrap();
        if replay[d.tokens * k..].iter().any(|&v| v != SENTINEL) {
            return Some("a replay row past num_tokens was written".into());
        }
        if replay[..d.tokens * k] != d.want.ids[..] {
            return Some("replay ids differ from the oracle's".into());
        }
        moe_oracle::check_accuracy(&p.want, &to_f32(&with.output), ATOL, RTOL, 1.0).err()
    }

    pub(crate) fn report(test: &str, passed: usize, failures: Vec<String>) {
        eprintln!("{test}: {passed} cases passed, {} failed", failures.len());
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    pub(crate) fn case(cfg: &RoutingConfig, tokens: usize, seed: u64) -> CaseData {
        case_data_for(
            oracle::route_topk,
            cfg,
            Regime::Separated,
            tokens,
            true,
            seed,
        )
    }

    /// Every routing method (both DeepSeekV3 paths, Llama4 at its top-1) x expert counts
    /// {8, 64, 128, 256} x token counts {1, 7, 64, 257, 2048}, wherever the method admits the
    /// (experts, top-k); the combinations it refuses are counted and named, not run.
    #[test]
    fn every_method_token_and_expert_count_matches_the_reference() {
        let test = "cutlass_moe::every_method_token_and_expert_count_matches_the_reference";
        let Some(g) = gpu(test) else { return };
        let (h, i) = (256, 128);
        let tokens = [1, 7, 64, 257, 2048];
        let (mut passed, mut failures, mut not_admitted) = (0, Vec::new(), Vec::new());
        for (e, k) in [(8u32, 2u32), (64, 6), (128, 8), (256, 8)] {
            let w = weights(&g, e as usize, h, i, e as u64);
            let probe = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
            if layer_here(config(probe, h, i, 1), w.views(), test).is_none() {
                return;
            }
            for (n, m) in one_per_method().into_iter().enumerate() {
                let k = if m.top_k == 1 { 1 } else { k };
                let routing = RoutingConfig::new(m.method, e, k);
                if let Err(why) = flashinfer_rs::routing::TopKRouter::new(routing) {
                    not_admitted.push(format!("{} E={e} K={k}: {why}", m.method.name()));
                    continue;
                }
                let cfg = config(routing, h, i, 2048);
                for p in prepare_all(&cfg, &w.host, &tokens, e as u64 * 100 + n as u64) {
                    match verdict(&g, &cfg, &w, &p) {
                        None => passed += 1,
                        Some(why) => failures.push(format!(
                            "{} E={e} K={k} T={}: {why}",
                            m.method.name(),
                            p.d.tokens
                        )),
                    }
                }
            }
        }
        eprintln!(
            "{test}: {} (method, experts) pairs the methods do not admit: {}",
            not_admitted.len(),
            not_admitted.join("; ")
        );
        report(test, passed, failures);
    }

    /// The tactic pairs the every-tactic tests fix (bf16 here, fp8 in cutlass_moe_fp8): GEMM 1's
    /// each with GEMM 2's first, then GEMM 2's others with GEMM 1's first.
    pub(crate) fn tactic_pairs(n1: u32, n2: u32) -> impl Iterator<Item = (u32, u32)> {
        (0..n1).map(|a| (a, 0)).chain((1..n2).map(|c| (0, c)))
    }

    /// Every tactic the build has, fixed for every call (`CutlassSchedule::Tactics`): GEMM 1's each with
    /// GEMM 2's first and GEMM 2's each with GEMM 1's first, at 1, 37 and 300 tokens (mean rows
    /// per expert 0.25, 9 and 75: both sides of the per-call choice's threshold); an index past
    /// the last is refused.
    #[test]
    fn every_tactic_matches_the_reference() {
        let test = "cutlass_moe::every_tactic_matches_the_reference";
        let Some(g) = gpu(test) else { return };
        let (h, i, e, k) = (256, 128, 16u32, 4u32);
        let w = weights(&g, e as usize, h, i, 90);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        let cfg = config(routing, h, i, 300);
        let Some(layer) = layer_here(cfg, w.views(), test) else {
            return;
        };
        let (t1, t2) = layer.tactics().unwrap();
        let (n1, n2) = (t1.len() as u32, t2.len() as u32);
        let cases = prepare_all(&cfg, &w.host, &[1, 37, 300], 91);
        let (mut passed, mut failures) = (0, Vec::new());
        for (a, c) in tactic_pairs(n1, n2) {
            let fixed =
                CutlassMoe::with_schedule(cfg, w.views(), CutlassSchedule::Tactics(a, c)).unwrap();
            for p in &cases {
                match verdict_of(&g, &fixed, p) {
                    None => passed += 1,
                    Some(why) => failures.push(format!(
                        "tactics {a} ({}) / {c} ({}) T={}: {why}",
                        t1[a as usize], t2[c as usize], p.d.tokens
                    )),
                }
            }
        }
        for bad in [(n1, 0), (0, n2)] {
            match CutlassMoe::with_schedule(cfg, w.views(), CutlassSchedule::Tactics(bad.0, bad.1))
            {
                Err(Error::InvalidArgument { .. }) => {}
                other => panic!("{test}: tactics {bad:?} of {n1} x {n2}: {other:?}"),
            }
        }
        report(test, passed, failures);
    }

    /// What each call takes, as `kernels_for` names it (the function `forward`'s launch
    /// applies), is the rule `CutlassSchedule`'s docs state, on both sides of each threshold
    /// (the decode limit; 16 and 64 mean rows per expert, num_tokens * top_k / num_experts):
    /// `Fastest` in a layer of small experts takes the decode kernels up to
    /// `DECODE_MAX_TOKENS.small`, then the 128x16 swapped tile below 16 rows, 128x64 swapped
    /// below 64 and 128x256 from 64 (in both GEMMs); `DecodeUpTo(n)` moves the decode limit
    /// alone; fixed tactics and `BatchInvariant` take the same GEMMs at every size. A count past
    /// max_tokens is refused.
    #[test]
    fn each_call_takes_the_kernels_its_schedule_names() {
        let test = "cutlass_moe::each_call_takes_the_kernels_its_schedule_names";
        let Some(g) = gpu(test) else { return };
        // 128 experts, top-8: 16 rows an expert at 256 tokens, 64 at 1024.
        let (h, i, e, k) = (64, 64, 128u32, 8u32);
        let w = weights(&g, e as usize, h, i, 95);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        let cfg = config(routing, h, i, 4096);
        let Some(layer) = layer_here(cfg, w.views(), test) else {
            return;
        };
        let (t1, t2) = layer.tactics().unwrap();
        // The first tactic of that tile and order, as the C rule looks it up.
        let index = |t: &[CutlassTactic], tile: (u32, u32), swap_ab: bool| {
            let found = t
                .iter()
                .position(|x| x.tile == tile && x.swap_ab == swap_ab && !x.finalize);
            found.unwrap_or_else(|| panic!("{test}: no {tile:?} tactic (swap_ab {swap_ab})")) as u32
        };
        let gemms = |tile, swap_ab| {
            CutlassKernels::Gemms(index(&t1, tile, swap_ab), index(&t2, tile, swap_ab))
        };
        let (decode, few, some, many) = (
            CutlassKernels::Decode,
            gemms((128, 16), true),
            gemms((128, 64), true),
            gemms((128, 256), false),
        );
        let small = DECODE_MAX_TOKENS.small;
        assert_eq!(layer.decode_max_tokens(), small);
        let forced = |schedule| CutlassMoe::with_schedule(cfg, w.views(), schedule).unwrap();
        let fixed = forced(CutlassSchedule::Tactics(1, 0));
        let fixed_kernels = CutlassKernels::Gemms(1, 0);
        let cases = [
            (&layer, "Fastest", 0, CutlassKernels::Nothing),
            (&layer, "Fastest", 1, decode),
            (&layer, "Fastest", small, decode),
            (&layer, "Fastest", small + 1, few),
            (&layer, "Fastest", 255, few),
            (&layer, "Fastest", 256, some),
            (&layer, "Fastest", 1023, some),
            (&layer, "Fastest", 1024, many),
            (&layer, "Fastest", 4096, many),
            (&fixed, "Tactics(1, 0)", 0, CutlassKernels::Nothing),
            (&fixed, "Tactics(1, 0)", 1, fixed_kernels),
            (&fixed, "Tactics(1, 0)", 4096, fixed_kernels),
        ];
        let decode_up_to_2 = forced(CutlassSchedule::DecodeUpTo(2));
        let invariant = forced(CutlassSchedule::BatchInvariant);
        let more = [
            (&decode_up_to_2, "DecodeUpTo(2)", 2, decode),
            (&decode_up_to_2, "DecodeUpTo(2)", 3, few),
            (&decode_up_to_2, "DecodeUpTo(2)", 1024, many),
            (&invariant, "BatchInvariant", 1, few),
            (&invariant, "BatchInvariant", 4096, few),
        ];
        let mut passed = 0;
        for (layer, schedule, tokens, want) in cases.into_iter().chain(more) {
            let got = layer.kernels_for(tokens).unwrap();
            assert_eq!(got, want, "{test}: {schedule} at {tokens} tokens");
            passed += 1;
        }
        match layer.kernels_for(4097) {
            Err(Error::InvalidArgument { .. }) => {}
            other => panic!("{test}: 4097 tokens of max 4096: {other:?}"),
        }
        eprintln!("{test}: {passed} calls named as the rule says; past max_tokens refused");
    }

    #[test]
    fn a_qwen3_sized_layer_matches_the_reference() {
        let test = "cutlass_moe::a_qwen3_sized_layer_matches_the_reference";
        let Some(g) = gpu(test) else { return };
        let (h, i) = (2048, 768);
        let w = weights(&g, 128, h, i, 3);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8);
        if layer_here(config(routing, h, i, 64), w.views(), test).is_none() {
            return;
        }
        let cfg = config(routing, h, i, 64);
        let p = prepare(&cfg, &w.host, 64, 3);
        let why = verdict(&g, &cfg, &w, &p);
        report(test, why.is_none() as usize, why.into_iter().collect());
    }

    /// The call sizes the batch-invariance tests compare with one call on the whole batch
    /// (`BATCH_TOKENS`): the decode kernels' sizes and both sides of the per-call tactic
    /// choice (16 mean rows per expert: 256 tokens at 128 experts, top-8).
    const PART_TOKENS: [usize; 5] = [1, 3, 7, 64, 257];
    pub(crate) const BATCH_TOKENS: usize = 300;

    /// For each of [`PART_TOKENS`], how many of a call's rows on the batch's first tokens
    /// differ in any bit from the same rows of one call on the whole batch `d` (its hidden
    /// states `x`, routed from `d`'s logits).
    fn rows_moved_by_the_batch<W: WeightBuffer>(
        g: &Gpu,
        layer: &CutlassMoe<W>,
        d: &CaseData,
        x: &[f32],
    ) -> Vec<(usize, usize)>
    where
        W::Element: CutlassElement,
    {
        let h = layer.config().hidden_size;
        let mut ws = layer.workspace(&g.stream).unwrap();
        let inputs = DeviceInputs::upload(&g.stream, d);
        let mut call = |n: usize| {
            forward(
                g,
                layer,
                &mut ws,
                &inputs,
                &upload(g, &x[..n * h]),
                n,
                false,
            )
            .unwrap()
            .output
        };
        let whole = call(d.tokens);
        PART_TOKENS
            .iter()
            .map(|&n| {
                let part = call(n);
                let moved = part.chunks(h).zip(whole.chunks(h)).filter(|(a, b)| a != b);
                (n, moved.count())
            })
            .collect()
    }

    /// `CutlassSchedule::BatchInvariant`: a Qwen3-sized layer's output rows for the first 1, 3,
    /// 7, 64 and 257 tokens of a 300-token batch are bit for bit the rows of one call on all
    /// 300. The fastest schedule's rows are counted beside (they may move: other kernels at
    /// other sizes), which shows the comparison sees a difference where there is one.
    #[test]
    fn batch_invariant_rows_do_not_depend_on_the_rest_of_the_batch() {
        let test = "cutlass_moe::batch_invariant_rows_do_not_depend_on_the_rest_of_the_batch";
        let Some(g) = gpu(test) else { return };
        let (h, i) = (2048, 768);
        let w = weights(&g, 128, h, i, 21);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, 128, 8);
        let cfg = config(routing, h, i, BATCH_TOKENS);
        if layer_here(cfg, w.views(), test).is_none() {
            return;
        }
        let d = case(&routing, BATCH_TOKENS, 22);
        let x = values(&mut SplitMix64(23), BATCH_TOKENS * h, 1.0);
        let invariant =
            CutlassMoe::with_schedule(cfg, w.views(), CutlassSchedule::BatchInvariant).unwrap();
        let fastest = CutlassMoe::new(cfg, w.views()).unwrap();
        assert_batch_invariant(&g, test, [&invariant, &fastest], &d, &x);
    }

    /// Asserts that the first layer (`CutlassSchedule::BatchInvariant`) moves no row with its
    /// batch ([`rows_moved_by_the_batch`]); prints the rows the second (the same weights,
    /// `Fastest`) moves, beside.
    pub(crate) fn assert_batch_invariant<W: WeightBuffer>(
        g: &Gpu,
        test: &str,
        [invariant, fastest]: [&CutlassMoe<W>; 2],
        d: &CaseData,
        x: &[f32],
    ) where
        W::Element: CutlassElement,
    {
        assert_eq!(invariant.schedule(), CutlassSchedule::BatchInvariant);
        let moved = rows_moved_by_the_batch(g, invariant, d, x);
        let fastest = rows_moved_by_the_batch(g, fastest, d, x);
        eprintln!(
            "{test}: (tokens, rows moved) batch-invariant {moved:?}; fastest schedule {fastest:?}"
        );
        assert!(moved.iter().all(|&(_, n)| n == 0), "{moved:?}");
    }

    /// Four ranks of 32 experts each: every rank's output is the reference over its own
    /// experts, and the four add up to the whole layer's (within bf16 rounding of each).
    #[test]
    fn expert_parallel_ranks_sum_only_their_experts() {
        let test = "cutlass_moe::expert_parallel_ranks_sum_only_their_experts";
        let Some(g) = gpu(test) else { return };
        let (e, k, h, i, t) = (128u32, 8u32, 256, 128, 257);
        let all = weights(&g, e as usize, h, i, 11);
        let full = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        if layer_here(config(full, h, i, t), all.views(), test).is_none() {
            return;
        }
        let d = case(&full, t, 12);
        let x_host = values(&mut SplitMix64(13), t * h, 1.0);
        let x = upload(&g, &x_host);
        let inputs = DeviceInputs::upload(&g.stream, &d);
        let mut sum = vec![0f32; t * h];
        let (mut passed, mut failures) = (0, Vec::new());
        let per = (e / 4) as usize;
        for rank in 0..4 {
            let w = all.rank_slice(&g, rank, per, h, i);
            let routing = full.with_local_experts((rank * per) as u32, per as u32);
            let cfg = config(routing, h, i, t);
            let layer = CutlassMoe::new(cfg, w.views()).unwrap();
            let mut ws = layer.workspace(&g.stream).unwrap();
            let got = forward(&g, &layer, &mut ws, &inputs, &x, t, true).unwrap();
            let out = to_f32(&got.output);
            let want = reference(&cfg, &d, &x_host, &w.host);
            match moe_oracle::check_accuracy(&want, &out, ATOL, RTOL, 1.0) {
                Ok(_) => passed += 1,
                Err(why) => failures.push(format!("rank {rank}: {why}")),
            }
            sum.iter_mut().zip(&out).for_each(|(s, o)| *s += o);
        }
        let layer = CutlassMoe::new(config(full, h, i, t), all.views()).unwrap();
        let mut ws = layer.workspace(&g.stream).unwrap();
        let whole = to_f32(
            &forward(&g, &layer, &mut ws, &inputs, &x, t, false)
                .unwrap()
                .output,
        );
        match moe_oracle::check_accuracy(&whole, &sum, 2.0 * ATOL, 2.0 * RTOL, 1.0) {
            Ok(_) => passed += 1,
            Err(why) => failures.push(format!("sum of ranks vs the whole layer: {why}")),
        }
        report(test, passed, failures);
    }

    /// The ids and weights the router wrote, handed back as precomputed routing, give the
    /// same output bit for bit.
    #[test]
    fn precomputed_ids_give_the_same_output() {
        let test = "cutlass_moe::precomputed_ids_give_the_same_output";
        let Some(g) = gpu(test) else { return };
        let (h, i, t) = (256, 128, 64);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, 64, 6);
        let w = weights(&g, 64, h, i, 21);
        let Some(layer) = layer_here(config(routing, h, i, t), w.views(), test) else {
            return;
        };
        let mut ws = layer.workspace(&g.stream).unwrap();
        let d = case(&routing, t, 22);
        let x = upload(&g, &values(&mut SplitMix64(23), t * h, 1.0));
        let inputs = DeviceInputs::upload(&g.stream, &d);
        let routed = forward(&g, &layer, &mut ws, &inputs, &x, t, false).unwrap();
        let ids: Vec<i32> = d.want.ids.iter().map(|&e| i32::from(e)).collect();
        let scales = oracle_weights_as_router_wrote(&g, &layer, &inputs, t);
        let given = forward_given(&g, &layer, &mut ws, &ids, &scales, &x, t);
        let given: Vec<u16> = given.iter().map(|v| v.to_bits()).collect();
        assert!(given == routed.output, "{test}: outputs differ");
        eprintln!("{test}: 1 case passed");
    }

    /// The decode kernels (csrc/moe_decode.cu), taking every call
    /// (`CutlassSchedule::DecodeUpTo(usize::MAX)`), against the reference: shapes with hidden and
    /// intermediate sizes that are not multiples of a warp's 256-element stride (the loops'
    /// tails) and a Qwen3-30B-A3B-sized layer, at 1-8 tokens and at 16 and 64 (an expert
    /// shared by more than the 8 tokens one pass over its rows computes); rows wider than a
    /// Qwen3 one (gpt-oss's hidden 2880, DeepSeek-V3's 7168), which the kernels read in more
    /// than one round of loads per lane, the 2880 one with a tail in its last round; replay and
    /// determinism as in every case here. Then expert parallelism (one rank of four) and
    /// precomputed ids that repeat an expert within a token or fall outside [0, num_experts).
    #[test]
    fn the_decode_kernels_match_the_reference() {
        let test = "cutlass_moe::the_decode_kernels_match_the_reference";
        let Some(g) = gpu(test) else { return };
        let (mut passed, mut failures) = (0, Vec::new());
        let shapes = [
            (256, 128, 16u32, 4u32, &[1usize, 2, 3, 5, 8, 16, 64][..]),
            (320, 192, 8, 2, &[1, 4, 7, 16][..]),
            (2048, 768, 128, 8, &[1, 3, 8][..]),
            (2880, 256, 8, 2, &[1, 5][..]),
            (7168, 256, 8, 2, &[1, 3][..]),
        ];
        for (h, i, e, k, tokens) in shapes {
            let w = weights(&g, e as usize, h, i, 200 + e as u64);
            let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
            let cfg = config(routing, h, i, 64);
            if layer_here(cfg, w.views(), test).is_none() {
                return;
            }
            let layer =
                CutlassMoe::with_schedule(cfg, w.views(), CutlassSchedule::DecodeUpTo(usize::MAX))
                    .unwrap();
            for p in prepare_all(&cfg, &w.host, tokens, 200 + h as u64) {
                match verdict_of(&g, &layer, &p) {
                    None => passed += 1,
                    Some(why) => {
                        failures.push(format!("H={h} I={i} E={e} K={k} T={}: {why}", p.d.tokens))
                    }
                }
            }
        }

        // Rank 2 of 4 (experts 32..48 of 64), 5 tokens.
        let (h, i, e, k, t) = (256, 128, 64u32, 6u32, 5);
        let full = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        let all = weights(&g, e as usize, h, i, 210);
        let per = (e / 4) as usize;
        let w = all.rank_slice(&g, 2, per, h, i);
        let cfg = config(full.with_local_experts(2 * per as u32, per as u32), h, i, t);
        let layer =
            CutlassMoe::with_schedule(cfg, w.views(), CutlassSchedule::DecodeUpTo(usize::MAX))
                .unwrap();
        let p = prepare(&cfg, &w.host, t, 211);
        match verdict_of(&g, &layer, &p) {
            None => passed += 1,
            Some(why) => failures.push(format!("rank 2 of 4, T={t}: {why}")),
        }

        // Precomputed ids: token 0 names expert 3 twice, token 1 names -1 and E + 5 beside a
        // valid expert; the reference skips what is not one of the layer's experts.
        let (e, k, t) = (16u32, 3usize, 3usize);
        let w = weights(&g, e as usize, h, i, 220);
        let cfg = config(
            RoutingConfig::new(RoutingMethod::Renormalize, e, k as u32),
            h,
            i,
            t,
        );
        let layer =
            CutlassMoe::with_schedule(cfg, w.views(), CutlassSchedule::DecodeUpTo(usize::MAX))
                .unwrap();
        let ids: Vec<i32> = vec![3, 3, 7, -1, 9, e as i32 + 5, 15, 0, 1];
        let scales: Vec<f32> = vec![0.5, 0.25, 0.25, 0.4, 0.6, 0.3, 0.1, 0.2, 0.7];
        let x_host = values(&mut SplitMix64(221), t * h, 1.0);
        let oracle_ids: Vec<usize> = ids
            .iter()
            .map(|&v| usize::try_from(v).unwrap_or(usize::MAX))
            .collect();
        let want = reference_of(
            &cfg,
            t,
            &x_host,
            &oracle_ids,
            &scales,
            &w.host,
            ActivationRounding::Bf16,
        );
        let mut ws = layer.workspace(&g.stream).unwrap();
        let x = upload(&g, &x_host);
        let got = forward_given(&g, &layer, &mut ws, &ids, &scales, &x, t);
        let got: Vec<f32> = got.iter().map(|v| v.to_f32()).collect();
        match moe_oracle::check_accuracy(&want, &got, ATOL, RTOL, 1.0) {
            Ok(_) => passed += 1,
            Err(why) => failures.push(format!("precomputed ids with repeats and strays: {why}")),
        }
        report(test, passed, failures);
    }

    /// Programmatic dependent launch (issue 26, upstream 0.7.2.post1 moved the routing kernels'
    /// PDL trigger earlier): the layer's kernels are launched with PDL right after its router,
    /// so each must wait on the grid before it reads the routing. Two batches whose routing
    /// differs are enqueued alternately, 40 calls back to back on one stream with no wait in
    /// between, into the same workspace; every output must be its own batch's reference and
    /// bit-identical to the other calls of that batch (a kernel reading the routing before
    /// the router finished would see the other batch's ids and scales).
    #[test]
    fn back_to_back_calls_read_their_own_routing() {
        let test = "cutlass_moe::back_to_back_calls_read_their_own_routing";
        let Some(g) = gpu(test) else { return };
        let (h, i, t, calls) = (256, 128, 33, 40);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, 64, 6);
        let w = weights(&g, 64, h, i, 31);
        let Some(layer) = layer_here(config(routing, h, i, t), w.views(), test) else {
            return;
        };
        let cfg = layer.config();
        let batches = [prepare(&cfg, &w.host, t, 32), prepare(&cfg, &w.host, t, 33)];
        let inputs: Vec<DeviceInputs> = batches
            .iter()
            .map(|p| DeviceInputs::upload(&g.stream, &p.d))
            .collect();
        let xs: Vec<CudaSlice<bf16>> = batches.iter().map(|p| upload(&g, &p.x)).collect();
        let mut outs: Vec<CudaSlice<bf16>> = (0..calls)
            .map(|_| g.stream.clone_htod(&vec![bf16::NAN; t * h]).unwrap())
            .collect();
        let mut ws = layer.workspace(&g.stream).unwrap();
        g.stream.synchronize().unwrap();
        for (c, out) in outs.iter_mut().enumerate() {
            let input = inputs[c % 2].input(t);
            let batch = CutlassBatch {
                num_tokens: t,
                routing: CutlassRouting::Logits {
                    logits: input.logits,
                    bias: None,
                },
                hidden_states: xs[c % 2].as_view(),
            };
            layer
                .forward(&g.stream, batch, &mut out.as_view_mut(), &mut ws, None)
                .unwrap();
        }
        let got: Vec<Vec<u16>> = outs
            .iter()
            .map(|o| {
                g.stream
                    .clone_dtoh(o)
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect()
            })
            .collect();
        for (c, bits) in got.iter().enumerate() {
            let p = &batches[c % 2];
            if let Err(e) = moe_oracle::check_accuracy(&p.want, &to_f32(bits), ATOL, RTOL, 1.0) {
                panic!("{test}: call {c} (batch {}): {e}", c % 2);
            }
            assert!(
                *bits == got[c % 2],
                "{test}: call {c} differs from call {} of the same batch",
                c % 2
            );
        }
        assert!(got[0] != got[1], "{test}: the two batches must differ");
        eprintln!("{test}: {calls} back-to-back calls read their own routing");
    }

    /// One call on precomputed `ids` and `scales` (host), its output (NaN-filled beforehand)
    /// downloaded.
    fn forward_given(
        g: &Gpu,
        layer: &CutlassMoe<CudaView<'_, bf16>>,
        ws: &mut CutlassWorkspace,
        ids: &[i32],
        scales: &[f32],
        x: &CudaSlice<bf16>,
        t: usize,
    ) -> Vec<bf16> {
        let h = layer.config().hidden_size;
        let ids = g.stream.clone_htod(ids).unwrap();
        let scales = g.stream.clone_htod(scales).unwrap();
        let mut out = g.stream.clone_htod(&vec![bf16::NAN; t * h]).unwrap();
        let batch = CutlassBatch {
            num_tokens: t,
            routing: CutlassRouting::Precomputed {
                ids: ids.as_view(),
                scales: scales.as_view(),
            },
            hidden_states: x.as_view(),
        };
        layer
            .forward(&g.stream, batch, &mut out.as_view_mut(), ws, None)
            .unwrap();
        g.stream.clone_dtoh(&out).unwrap()
    }

    /// The fp32 weights the layer's router writes for `t` tokens (the same router, run alone).
    fn oracle_weights_as_router_wrote(
        g: &Gpu,
        layer: &CutlassMoe<CudaView<'_, bf16>>,
        inputs: &DeviceInputs,
        t: usize,
    ) -> Vec<f32> {
        let router = flashinfer_rs::routing::TopKRouter::new(layer.config().routing).unwrap();
        let k = layer.config().routing.top_k as usize;
        let mut wf = g.stream.alloc_zeros::<f32>(t * k).unwrap();
        let mut out = flashinfer_rs::routing::TopKOutputs {
            ids: None,
            weights_f32: Some(wf.as_view_mut()),
            weights_bf16: None,
        };
        let mut replay = g.stream.alloc_zeros::<i16>(t * k).unwrap();
        let mut view = ReplayView::from_slice(&mut replay, k).unwrap();
        router
            .route(&g.stream, &inputs.input(t), &mut out, Some(&mut view))
            .unwrap();
        g.stream.clone_dtoh(&wf).unwrap()
    }

    /// Three layers captured in one CUDA graph (each layer's output feeds the next), replayed
    /// after fresh hidden states and logits are copied into its fixed inputs: every replay
    /// equals the same three calls made eagerly.
    /// At 57 tokens (the grouped GEMMs) and at 5 (the decode kernels).
    #[test]
    fn a_graph_of_layers_reruns_with_fresh_inputs() {
        let test = "cutlass_moe::a_graph_of_layers_reruns_with_fresh_inputs";
        let Some(g) = gpu(test) else { return };
        let (h, i) = GRAPH_SIZES;
        for t in [57, 5] {
            let ws_host: Vec<Weights> = (0..3).map(|l| weights(&g, 64, h, i, 40 + l)).collect();
            if layer_here(config(graph_routing(), h, i, t), ws_host[0].views(), test).is_none() {
                return;
            }
            let moes: Vec<CutlassMoe<CudaView<'_, bf16>>> = ws_host
                .iter()
                .map(|w| CutlassMoe::new(config(graph_routing(), h, i, t), w.views()).unwrap())
                .collect();
            graph_of_layers(&g, test, t, &moes);
        }
    }

    /// The graph tests' hidden and intermediate sizes, and routing.
    pub(crate) const GRAPH_SIZES: (usize, usize) = (256, 128);
    pub(crate) fn graph_routing() -> RoutingConfig {
        RoutingConfig::new(RoutingMethod::Renormalize, 64, 6)
    }

    /// `moes` (of [`GRAPH_SIZES`] and [`graph_routing`], at `t` tokens) chained, recorded into
    /// a CUDA graph and replayed with fresh inputs: every replay equals eager calls, bit for bit.
    pub(crate) fn graph_of_layers<W: WeightBuffer>(
        g: &Gpu,
        test: &str,
        t: usize,
        moes: &[CutlassMoe<W>],
    ) where
        W::Element: CutlassElement,
    {
        let (h, layers) = (GRAPH_SIZES.0, moes.len());
        let mut spaces: Vec<CutlassWorkspace> = moes
            .iter()
            .map(|m| m.workspace(&g.stream).unwrap())
            .collect();
        // Fixed graph inputs: hidden states, per-layer logits, and per-layer outputs.
        let mut x = g.stream.alloc_zeros::<bf16>(t * h).unwrap();
        let mut logits: Vec<CudaSlice<bf16>> = (0..layers)
            .map(|_| g.stream.alloc_zeros::<bf16>(t * 64).unwrap())
            .collect();
        let mut outs: Vec<CudaSlice<bf16>> = (0..layers)
            .map(|_| g.stream.alloc_zeros::<bf16>(t * h).unwrap())
            .collect();
        let run_all = |x: &CudaSlice<bf16>,
                       logits: &[CudaSlice<bf16>],
                       outs: &mut [CudaSlice<bf16>],
                       spaces: &mut [CutlassWorkspace],
                       stream: &Arc<CudaStream>| {
            for l in 0..layers {
                let (done, rest) = outs.split_at_mut(l);
                let input = if l == 0 { x } else { &done[l - 1] };
                let batch = CutlassBatch {
                    num_tokens: t,
                    routing: CutlassRouting::Logits {
                        logits: (&logits[l]).into(),
                        bias: None,
                    },
                    hidden_states: input.as_view(),
                };
                moes[l]
                    .forward(
                        stream,
                        batch,
                        &mut rest[0].as_view_mut(),
                        &mut spaces[l],
                        None,
                    )
                    .unwrap();
            }
        };
        // Warm-up (the runner's first call may set up state) before capture.
        run_all(&x, &logits, &mut outs, &mut spaces, &g.stream);
        g.stream.synchronize().unwrap();
        // cudarc's per-buffer events cannot be recorded into a graph (see the crate docs).
        unsafe { g.ctx.disable_event_tracking() };
        g.stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .unwrap();
        run_all(&x, &logits, &mut outs, &mut spaces, &g.stream);
        let graph = g
            .stream
            .end_capture(CUgraphInstantiate_flags(0))
            .unwrap()
            .expect("a graph");
        let mut eager_outs: Vec<CudaSlice<bf16>> = (0..layers)
            .map(|_| g.stream.alloc_zeros::<bf16>(t * h).unwrap())
            .collect();
        let mut eager_spaces: Vec<CutlassWorkspace> = moes
            .iter()
            .map(|m| m.workspace(&g.stream).unwrap())
            .collect();
        for replay in 0..5u64 {
            let mut rng = SplitMix64(1000 + replay);
            let xv: Vec<bf16> = values(&mut rng, t * h, 1.0)
                .into_iter()
                .map(bf16::from_f32)
                .collect();
            g.stream.memcpy_htod(&xv, &mut x).unwrap();
            for l in logits.iter_mut() {
                let lv: Vec<bf16> = values(&mut rng, t * 64, 4.0)
                    .into_iter()
                    .map(bf16::from_f32)
                    .collect();
                g.stream.memcpy_htod(&lv, l).unwrap();
            }
            graph.launch().unwrap();
            let graphed: Vec<Vec<bf16>> = outs
                .iter()
                .map(|o| g.stream.clone_dtoh(o).unwrap())
                .collect();
            run_all(&x, &logits, &mut eager_outs, &mut eager_spaces, &g.stream);
            for l in 0..layers {
                let eager = g.stream.clone_dtoh(&eager_outs[l]).unwrap();
                let same = eager
                    .iter()
                    .zip(&graphed[l])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(
                    same,
                    "{test}: replay {replay} layer {l} differs from the eager call"
                );
            }
        }
        unsafe { g.ctx.enable_event_tracking() };
        eprintln!("{test}: T={t}: 5 replays of {layers} layers equal the eager calls");
    }

    /// The capture test's layer: 64 experts, top-6, hidden 256, intermediate 128, up to
    /// `CAPTURE_TOKENS` tokens.
    pub(crate) const CAPTURE_SHAPE: (u32, u32, usize, usize) = (64, 6, 256, 128);
    pub(crate) const CAPTURE_TOKENS: usize = 96;

    /// A serving loop: 40 steps of random token counts, three layers each routed into a
    /// capture store's views (ids and weights) inside the layer; every collected row equals
    /// the oracle's routing of that step's logits.
    #[test]
    fn a_capture_store_records_the_routing_the_layers_used() {
        let test = "cutlass_moe::a_capture_store_records_the_routing_the_layers_used";
        let Some(g) = gpu(test) else { return };
        let (e, k, h, i) = CAPTURE_SHAPE;
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, e, k);
        let w = weights(&g, e as usize, h, i, 60);
        let Some(layer) = layer_here(config(routing, h, i, CAPTURE_TOKENS), w.views(), test) else {
            return;
        };
        capture_store_records_the_routing(&g, &layer, test);
    }

    /// [`a_capture_store_records_the_routing_the_layers_used`]'s loop on `layer` (of
    /// `CAPTURE_SHAPE`, Renormalize routing, `CAPTURE_TOKENS` tokens).
    pub(crate) fn capture_store_records_the_routing<W: WeightBuffer>(
        g: &Gpu,
        layer: &CutlassMoe<W>,
        test: &str,
    ) where
        W::Element: CutlassElement,
    {
        let (layers, steps, max_t) = (3, 40, CAPTURE_TOKENS);
        let (h, routing) = (layer.config().hidden_size, layer.config().routing);
        let k = routing.top_k as usize;
        let mut ws = layer.workspace(&g.stream).unwrap();
        let mut store = CaptureStore::new(
            &g.stream,
            CaptureConfig::new(layers, max_t, k)
                .with_readback_buffers(3)
                .with_weights(true),
        )
        .unwrap();
        let x = upload(g, &values(&mut SplitMix64(61), max_t * h, 1.0));
        let mut out = g.stream.alloc_zeros::<bf16>(max_t * h).unwrap();
        let mut rng = SplitMix64(62);
        let mut wanted = std::collections::VecDeque::new();
        let mut checked = 0;
        for step in 0..steps {
            let t = 1 + rng.below(max_t);
            let cases: Vec<CaseData> = (0..layers)
                .map(|l| case(&routing, t, (step * 10 + l) as u64 + 7000))
                .collect();
            store.begin_step(&g.stream, StepLayout::single(t)).unwrap();
            for (l, d) in cases.iter().enumerate() {
                let inputs = DeviceInputs::upload(&g.stream, d);
                let input = inputs.input(t);
                let batch = CutlassBatch {
                    num_tokens: t,
                    routing: CutlassRouting::Logits {
                        logits: input.logits,
                        bias: None,
                    },
                    hidden_states: x.as_view(),
                };
                let views = store.layer_views(l).unwrap();
                layer
                    .forward_captured(&g.stream, batch, &mut out.as_view_mut(), &mut ws, views)
                    .unwrap();
            }
            store.end_step(&g.stream).unwrap();
            wanted.push_back(cases);
            while let Some(got) = store.collect().unwrap() {
                let cases = wanted.pop_front().unwrap();
                let rows = &got.rows;
                let weights = rows.weights.as_ref().expect("weights captured");
                assert_eq!(rows.tokens, cases[0].tokens, "step {}", got.step);
                for r in 0..rows.tokens {
                    for (l, d) in cases.iter().enumerate() {
                        let at = (r * layers + l) * k;
                        assert_eq!(
                            &rows.ids[at..at + k],
                            &d.want.ids[r * k..(r + 1) * k],
                            "step {} row {r} layer {l}",
                            got.step
                        );
                        for j in 0..k {
                            assert!(
                                crate::routing::weight_matches(
                                    weights[at + j],
                                    d.want.weights[r * k + j]
                                ),
                                "step {} row {r} layer {l}: weight {} vs {}",
                                got.step,
                                weights[at + j],
                                d.want.weights[r * k + j]
                            );
                        }
                    }
                }
                checked += 1;
            }
        }
        g.stream.synchronize().unwrap();
        while let Some(got) = store.collect().unwrap() {
            let cases = wanted.pop_front().unwrap();
            assert_eq!(got.rows.tokens, cases[0].tokens);
            checked += 1;
        }
        assert_eq!(checked, steps, "{test}: every step collected");
        eprintln!("{test}: {steps} steps x {layers} layers captured and checked");
    }

    /// Refusals before any launch: the output keeps its sentinel.
    #[test]
    fn bad_calls_are_refused_before_launch() {
        let test = "cutlass_moe::bad_calls_are_refused_before_launch";
        let Some(g) = gpu(test) else { return };
        let (h, i, t) = (256, 128, 16);
        let routing = RoutingConfig::new(RoutingMethod::Renormalize, 64, 6);
        let w = weights(&g, 64, h, i, 80);
        let Some(layer) = layer_here(config(routing, h, i, t), w.views(), test) else {
            return;
        };
        let mut ws = layer.workspace(&g.stream).unwrap();
        let d = case(&routing, t, 81);
        let inputs = DeviceInputs::upload(&g.stream, &d);
        let x = upload(&g, &values(&mut SplitMix64(82), t * h, 1.0));
        let short_x = g.stream.alloc_zeros::<bf16>(t * h - 1).unwrap();
        let mut out = g
            .stream
            .clone_htod(&vec![bf16::from_f32(7.0); t * h])
            .unwrap();
        let other = CutlassMoe::new(config(routing, h, i, 2 * t), w.views()).unwrap();
        let mut big_ws = other.workspace(&g.stream).unwrap();
        let small = CutlassMoe::new(config(routing, h, i, 1), w.views()).unwrap();
        let mut small_ws = small.workspace(&g.stream).unwrap();
        let mut refused = 0;
        let mut expect = |got: Result<(), Error>, arg: &str| match got {
            Err(Error::InvalidArgument { arg: a, .. }) if a == arg => refused += 1,
            other => panic!("{test}: expected `{arg}` refused, got {other:?}"),
        };
        fn batch<'a>(
            inputs: &'a DeviceInputs,
            tokens: usize,
            x: &'a CudaSlice<bf16>,
        ) -> CutlassBatch<'a> {
            let input = inputs.input(tokens);
            CutlassBatch {
                num_tokens: tokens,
                routing: CutlassRouting::Logits {
                    logits: input.logits,
                    bias: input.bias,
                },
                hidden_states: x.as_view(),
            }
        }
        let batch = |tokens, x| batch(&inputs, tokens, x);
        expect(
            layer.forward(
                &g.stream,
                batch(t + 1, &x),
                &mut out.as_view_mut(),
                &mut ws,
                None,
            ),
            "num_tokens",
        );
        expect(
            layer.forward(
                &g.stream,
                batch(t, &short_x),
                &mut out.as_view_mut(),
                &mut ws,
                None,
            ),
            "hidden_states",
        );
        expect(
            layer.forward(
                &g.stream,
                batch(t, &x),
                &mut out.slice_mut(..t * h - 1),
                &mut ws,
                None,
            ),
            "output",
        );
        expect(
            layer.forward(
                &g.stream,
                batch(t, &x),
                &mut out.as_view_mut(),
                &mut small_ws,
                None,
            ),
            "workspace",
        );
        let mut replay = g.stream.alloc_zeros::<i16>((t - 1) * 6).unwrap();
        let mut view = ReplayView::from_slice(&mut replay, 6).unwrap();
        expect(
            layer.forward(
                &g.stream,
                batch(t, &x),
                &mut out.as_view_mut(),
                &mut ws,
                Some(&mut view),
            ),
            "replay",
        );
        // A bigger layer's workspace serves a smaller one.
        layer
            .forward(
                &g.stream,
                batch(t, &x),
                &mut out.as_view_mut(),
                &mut big_ws,
                None,
            )
            .unwrap();
        // Sizes a layer refuses at construction.
        let mut fresh = g
            .stream
            .clone_htod(&vec![bf16::from_f32(7.0); t * h])
            .unwrap();
        expect(
            layer.forward(
                &g.stream,
                batch(t + 1, &x),
                &mut fresh.as_view_mut(),
                &mut ws,
                None,
            ),
            "num_tokens",
        );
        for bad in [
            config(routing, 200, i, t),
            config(routing, h, 0, t),
            config(routing.with_local_experts(8, 24), h, i, t),
        ] {
            assert!(
                matches!(
                    CutlassMoe::new(bad, w.views()),
                    Err(Error::InvalidArgument { .. })
                ),
                "{bad:?}"
            );
            refused += 1;
        }
        let kept = g.stream.clone_dtoh(&fresh).unwrap();
        assert!(
            kept.iter().all(|v| v.to_f32() == 7.0),
            "{test}: a refused call wrote the output"
        );
        eprintln!("{test}: {refused} bad calls refused with typed errors");
    }
}
