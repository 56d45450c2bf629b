//! The batched path (what runs on the GPU) checked on the CPU: the same model loaded
//! row by row (the reference) and batched (one matmul per linear, candle's RMSNorm and RoPE
//! kernels, device-style KV caches and causal masks) agree on logits and routed experts over
//! prefills, chunked prefills and decode steps of several requests in one batch; bf16 dense
//! parts run; random weights made per tensor are deterministic and loaded layer by layer.

use crate::common::*;
use candle_core::{DType, Device};
use flashinfer_rs_serve::model::device::{DTypeArg, DeviceError, DeviceKind, Placement};
use flashinfer_rs_serve::model::moe::{BackendKind, StepCapture};
use flashinfer_rs_serve::model::random::{random_tensors, RandomSource};
use flashinfer_rs_serve::model::weights::TensorSource;
use flashinfer_rs_serve::model::{KvCache, Model, Qwen3MoeConfig, SeqInput};

fn steps() -> Steps {
    let p = |n: u32, from: u32| (0..n).map(|i| (from + i * 37) % 259).collect::<Vec<u32>>();
    vec![
        // Two prefills (one chunked) and a request joining later.
        vec![p(7, 3), p(5, 90), vec![]],
        vec![vec![11], p(4, 17), p(9, 200)],
        vec![vec![12], vec![40], vec![41]],
        vec![vec![13], vec![], p(3, 5)],
        vec![vec![14], vec![42], vec![43]],
    ]
}

fn tiny(mlp_only: &[usize]) -> Qwen3MoeConfig {
    serde_json::from_value(tiny_config(mlp_only)).unwrap()
}

#[test]
fn batched_equals_row_by_row_on_the_cpu() {
    for mlp_only in [vec![], vec![1]] {
        let cfg = tiny(&mlp_only);
        let w = random_tensors(&cfg, 3).unwrap();
        let rows = Model::load(&cfg, &w, BackendKind::Cpu).unwrap();
        let place = Placement::on(Device::Cpu, DType::F32).unwrap();
        let batched = Model::load_on(&cfg, &w, BackendKind::Cpu, &place).unwrap();
        let (a, b) = (
            drive(&rows, &steps(), false),
            drive(&batched, &steps(), false),
        );
        let (same, rows) = compare_runs(&a, &b, 1e-4, "batched");
        assert_eq!(same, rows, "routed experts");
    }
}

/// A cache past its first 256 positions grows (copying what it held) mid-prefill.
#[test]
fn device_kv_caches_grow() {
    let cfg = tiny(&[]);
    let w = random_tensors(&cfg, 4).unwrap();
    let rows = Model::load(&cfg, &w, BackendKind::Cpu).unwrap();
    let place = Placement::on(Device::Cpu, DType::F32).unwrap();
    let batched = Model::load_on(&cfg, &w, BackendKind::Cpu, &place).unwrap();
    let p = |n: u32, from: u32| (0..n).map(|i| (from + i * 13) % 259).collect::<Vec<u32>>();
    let steps = vec![
        vec![p(200, 1), p(3, 2)],
        vec![p(100, 7), vec![9]],
        vec![vec![5], vec![10]],
    ];
    for ((la, ia), (lb, ib)) in drive(&rows, &steps, false)
        .iter()
        .zip(&drive(&batched, &steps, false))
    {
        assert_eq!(ia, ib);
        for (ra, rb) in la.iter().zip(lb) {
            assert!(ra.iter().zip(rb).all(|(x, y)| (x - y).abs() < 1e-4));
        }
    }
}

/// A bounded cache (a request's prompt plus its max_tokens) grows by doubling only to its
/// bound, and past it only as far as a write needs; an unbounded one doubles.
#[test]
fn bounded_device_kv_caches_stop_at_their_bound() {
    let cfg = tiny(&[]);
    let w = random_tensors(&cfg, 5).unwrap();
    let place = Placement::on(Device::Cpu, DType::F32).unwrap();
    let batched = Model::load_on(&cfg, &w, BackendKind::Cpu, &place).unwrap();
    let (l, k, _) = batched.capture_shape();
    let tokens: Vec<u32> = (0..300).map(|i| (i * 13 + 1) % 259).collect();
    let run = |cache: &mut KvCache, tokens: &[u32]| {
        let mut cap = StepCapture::new(tokens.len(), l, k, false);
        let mut seqs = [SeqInput { tokens, cache }];
        batched.forward(&mut seqs, &mut cap).unwrap();
    };
    // Capacity in positions, from the bytes one position takes (a first write of 1 token
    // makes a 256-position buffer).
    let mut one = KvCache::default();
    run(&mut one, &tokens[..1]);
    let per_position = one.bytes() / 256;
    let capacity = |c: &KvCache| c.bytes() / per_position;
    let (mut free, mut bounded) = (KvCache::default(), KvCache::bounded(301));
    for cache in [&mut free, &mut bounded] {
        run(cache, &tokens[..200]);
        run(cache, &tokens[200..300]);
    }
    assert_eq!((capacity(&free), capacity(&bounded)), (512, 301));
    run(&mut bounded, &tokens[..2]);
    assert_eq!(
        capacity(&bounded),
        302,
        "past the bound, as far as the write needs"
    );
}

#[test]
fn bf16_dense_parts_run_batched() {
    let cfg = tiny(&[1]);
    let w = random_tensors(&cfg, 3).unwrap();
    let rows = drive(
        &Model::load(&cfg, &w, BackendKind::Cpu).unwrap(),
        &steps(),
        false,
    );
    let place = Placement::on(Device::Cpu, DType::BF16).unwrap();
    let m = Model::load_on(&cfg, &w, BackendKind::Cpu, &place).unwrap();
    let bf = drive(&m, &steps(), false);
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
    let (mut same, mut all) = (0, 0);
    for ((la, _), (lb, _)) in rows.iter().zip(&bf) {
        for (ra, rb) in la.iter().zip(lb) {
            assert!(rb.iter().all(|x| x.is_finite()));
            all += 1;
            same += usize::from(argmax(ra) == argmax(rb));
        }
    }
    assert!(same * 4 >= all * 3, "bf16 argmax agrees on {same} of {all}");
}

#[test]
fn per_tensor_random_weights_are_deterministic_and_build_the_model() {
    let cfg = tiny(&[1]);
    let (a, b) = (RandomSource::new(&cfg, 9), RandomSource::new(&cfg, 9));
    let name = "model.layers.0.mlp.experts.3.up_proj.weight";
    let x = a
        .get(name)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        x,
        b.get(name)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    let other = RandomSource::new(&cfg, 10).get(name).unwrap();
    assert_ne!(x, other.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let bound = (3.0f32 / 64.0).sqrt();
    assert!(x.iter().all(|v| v.abs() <= bound) && x.iter().any(|v| v.abs() > bound / 2.0));
    assert!(a.contains("lm_head.weight") && !a.contains("model.layers.1.mlp.gate.weight"));
    let place = Placement::on(Device::Cpu, DType::F32).unwrap();
    let m = Model::load_on(&cfg, &a, BackendKind::Cpu, &place).unwrap();
    let out = drive(&m, &steps(), false);
    assert!(out
        .iter()
        .all(|(l, _)| l.iter().flatten().all(|x| x.is_finite())));
}

#[test]
fn placement_errors_are_typed() {
    assert!(matches!(
        Placement::open(DeviceKind::Cpu, Some(DTypeArg::Bf16)),
        Err(DeviceError::CpuDtype(DType::BF16))
    ));
    assert!(!Placement::open(DeviceKind::Cpu, None).unwrap().batched);
    #[cfg(not(feature = "cuda"))]
    assert_eq!(
        Placement::open(DeviceKind::Cuda, None).unwrap_err(),
        DeviceError::CudaNotBuilt
    );
    #[cfg(not(feature = "cuda"))]
    {
        let cfg = tiny(&[]);
        let err = Model::load(&cfg, &random_tensors(&cfg, 1).unwrap(), BackendKind::Hopper)
            .err()
            .expect("no Hopper backend in a CPU build");
        assert_eq!(
            err.downcast_ref::<DeviceError>(),
            Some(&DeviceError::CudaNotBuilt)
        );
    }
}
