//! The model on CUDA (`--device cuda`, feature `cuda`): the batched path with the Hopper MoE
//! layer on the model's own device, against the CPU model with the same Hopper layer (rows
//! copied over and back). f32 dense parts agree closely; bf16 ones run and mostly agree.
//! Without a GPU these tests say so and pass, unless `FLASHINFER_RS_REQUIRE_GPU=1`.

#![cfg(feature = "cuda")]

use crate::common::*;
use flashinfer_rs_serve::model::device::{DTypeArg, DeviceKind, Placement};
use flashinfer_rs_serve::model::moe::{BackendKind, MoeWeights};
use flashinfer_rs_serve::model::random::random_tensors;
use flashinfer_rs_serve::model::{Model, Qwen3MoeConfig};

fn gpu(dtype: DTypeArg) -> Option<Placement> {
    match Placement::open(DeviceKind::Cuda, Some(dtype)) {
        Ok(p) => Some(p),
        Err(e) if std::env::var("FLASHINFER_RS_REQUIRE_GPU").as_deref() == Ok("1") => {
            panic!("FLASHINFER_RS_REQUIRE_GPU=1 and no GPU: {e}")
        }
        Err(e) => {
            eprintln!("no GPU ({e}); skipped");
            None
        }
    }
}

fn steps() -> Steps {
    let p = |n: u32, from: u32| (0..n).map(|i| (from + i * 37) % 259).collect::<Vec<u32>>();
    vec![
        vec![p(7, 3), p(5, 90), vec![]],
        vec![vec![11], p(4, 17), p(300, 200)],
        vec![vec![12], vec![40], vec![41]],
        vec![vec![13], vec![], vec![42]],
    ]
}

#[test]
fn the_model_on_cuda_matches_the_cpu_model() {
    let Some(place) = gpu(DTypeArg::F32) else {
        return;
    };
    let cfg: Qwen3MoeConfig = serde_json::from_value(tiny_config(&[1])).unwrap();
    let w = random_tensors(&cfg, 3).unwrap();
    let reference = drive(
        &Model::load(&cfg, &w, BackendKind::Hopper).unwrap(),
        &steps(),
        true,
    );
    let m = Model::load_on(&cfg, &w, BackendKind::Auto, &place).unwrap();
    assert_eq!(m.moe().name(), "hopper");
    let got = drive(&m, &steps(), true);
    for (_, ib) in &got {
        assert!(ib.iter().all(|&e| (0..EXPERTS as i16).contains(&e)));
    }
    let (same, rows) = compare_runs(&reference, &got, 5e-2, "cuda");
    assert!(
        same * 100 >= rows * 98,
        "routed rows equal: {same} of {rows}"
    );
}

#[test]
fn bf16_on_cuda_runs_and_mostly_agrees() {
    let Some(place) = gpu(DTypeArg::Bf16) else {
        return;
    };
    let cfg: Qwen3MoeConfig = serde_json::from_value(tiny_config(&[])).unwrap();
    let w = random_tensors(&cfg, 5).unwrap();
    let reference = drive(
        &Model::load(&cfg, &w, BackendKind::Hopper).unwrap(),
        &steps(),
        true,
    );
    let got = drive(
        &Model::load_on(&cfg, &w, BackendKind::Hopper, &place).unwrap(),
        &steps(),
        true,
    );
    let argmax = |r: &[f32]| (0..r.len()).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap();
    let (mut all, mut same) = (0, 0);
    for ((la, _), (lb, _)) in reference.iter().zip(&got) {
        for (ra, rb) in la.iter().zip(lb) {
            assert!(rb.iter().all(|x| x.is_finite()));
            all += 1;
            same += usize::from(argmax(ra) == argmax(rb));
        }
    }
    assert!(same * 4 >= all * 3, "bf16 argmax agrees on {same} of {all}");
}

/// `--backend cpu` with the model on the GPU is a typed refusal, not a silent copy.
#[test]
fn the_cpu_backend_is_refused_on_cuda() {
    let Some(place) = gpu(DTypeArg::Bf16) else {
        return;
    };
    let cfg: Qwen3MoeConfig = serde_json::from_value(tiny_config(&[])).unwrap();
    let err = Model::load_on(
        &cfg,
        &random_tensors(&cfg, 1).unwrap(),
        BackendKind::Cpu,
        &place,
    )
    .err()
    .expect("refused");
    assert!(err
        .downcast_ref::<flashinfer_rs_serve::model::device::DeviceError>()
        .is_some());
}

/// A fine-grained fp8 checkpoint's experts on flashinfer-rs's block-scale Hopper layer
/// (`--moe-weights fp8`, and `auto`, which takes it on the Hopper backend), the model on the
/// CPU, against the CPU backend's reference of that layer: the same routed experts but for
/// close calls, logits close (both quantise the activations per 128 values; the GPU's GEMMs
/// accumulate in another order).
#[test]
fn fp8_experts_on_hopper_match_their_cpu_reference() {
    if gpu(DTypeArg::F32).is_none() {
        return;
    }
    let (cfg, fp8, _) = fp8_checkpoint(21);
    let reference = drive(
        &Model::load_on(&cfg, &fp8, BackendKind::Cpu, &cpu_with(MoeWeights::Fp8)).unwrap(),
        &steps(),
        true,
    );
    for weights in [MoeWeights::Fp8, MoeWeights::Auto] {
        let m = Model::load_on(&cfg, &fp8, BackendKind::Hopper, &cpu_with(weights)).unwrap();
        assert_eq!(m.moe().name(), "hopper-fp8", "{weights:?}");
        let got = drive(&m, &steps(), true);
        let (same, rows) = compare_runs(&reference, &got, 5e-2, &format!("{weights:?}"));
        assert!(
            same * 100 >= rows * 95,
            "{weights:?}: routed rows equal: {same} of {rows}"
        );
    }
}
