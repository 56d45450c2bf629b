//! Loading: the fused expert format equals the per-expert one, shards through an index,
//! dense layers, random-config mode.

use std::collections::HashMap;

use crate::common::*;
use candle_core::{DType, Tensor};
use flashinfer_rs_serve::model::moe::{BackendKind, MoeWeights, StepCapture};
use flashinfer_rs_serve::model::random::random_tensors;
use flashinfer_rs_serve::model::weights::Checkpoint;
use flashinfer_rs_serve::model::{KvCache, Model, Qwen3MoeConfig, SeqInput};
use serde_json::json;

fn run(model: &Model, tokens: &[u32]) -> (Vec<Vec<f32>>, Vec<i16>) {
    let (l, k, _) = model.capture_shape();
    let mut cap = StepCapture::new(tokens.len(), l, k, true);
    let mut cache = KvCache::default();
    let logits = model
        .forward(
            &mut [SeqInput {
                tokens,
                cache: &mut cache,
            }],
            &mut cap,
        )
        .unwrap();
    (logits.to_vec2().unwrap(), cap.ids().to_vec())
}

#[test]
fn fused_sharded_checkpoint_equals_per_expert_one() {
    let cfg_json = tiny_config(&[1]);
    let cfg: Qwen3MoeConfig = serde_json::from_value(cfg_json.clone()).unwrap();
    assert_eq!(cfg.moe_layers(), vec![0, 2]);
    let tensors = random_tensors(&cfg, 11).unwrap();
    let a = Model::load(&cfg, &tensors, BackendKind::Cpu).unwrap();
    // The fused form: gate_up [E, 2I, H] gate rows first, down [E, H, I], in two shards.
    let mut fused: HashMap<String, Tensor> = HashMap::new();
    let mut rest: HashMap<String, Tensor> = HashMap::new();
    for l in cfg.moe_layers() {
        let p = format!("model.layers.{l}.mlp.experts");
        let get = |e: usize, n: &str| tensors[&format!("{p}.{e}.{n}.weight")].clone();
        let gu: Vec<Tensor> = (0..EXPERTS)
            .map(|e| Tensor::cat(&[get(e, "gate_proj"), get(e, "up_proj")], 0).unwrap())
            .collect();
        fused.insert(format!("{p}.gate_up_proj"), Tensor::stack(&gu, 0).unwrap());
        let down: Vec<Tensor> = (0..EXPERTS).map(|e| get(e, "down_proj")).collect();
        fused.insert(format!("{p}.down_proj"), Tensor::stack(&down, 0).unwrap());
    }
    for (k, v) in &tensors {
        if !k.contains(".experts.") {
            rest.insert(k.clone(), v.clone());
        }
    }
    let dir = std::env::temp_dir().join(format!("fi-serve-fused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    candle_core::safetensors::save(&fused, dir.join("model-00001-of-00002.safetensors")).unwrap();
    let rest_bf: HashMap<String, Tensor> = rest
        .iter()
        .map(|(k, v)| (k.clone(), v.to_dtype(DType::F32).unwrap()))
        .collect();
    candle_core::safetensors::save(&rest_bf, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let mut map = serde_json::Map::new();
    for k in fused.keys() {
        map.insert(k.clone(), json!("model-00001-of-00002.safetensors"));
    }
    for k in rest.keys() {
        map.insert(k.clone(), json!("model-00002-of-00002.safetensors"));
    }
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
    let b = Model::load(&cfg, &Checkpoint::open(&dir).unwrap(), BackendKind::Cpu).unwrap();
    let tokens: Vec<u32> = (0..9).map(|i| (i * 29 % 259) as u32).collect();
    let (la, ca) = run(&a, &tokens);
    let (lb, cb) = run(&b, &tokens);
    assert_eq!(la, lb);
    assert_eq!(ca, cb);
    assert_eq!(ca.len(), 9 * 2 * TOP_K, "two MoE layers captured");
    std::fs::remove_dir_all(&dir).ok();
}

/// A token's logits and routing are the same whether it runs alone, in a prefill, or in a
/// batch beside other requests.
#[test]
fn a_tokens_numbers_do_not_depend_on_its_batch() {
    let cfg: Qwen3MoeConfig = serde_json::from_value(tiny_config(&[])).unwrap();
    let m = Model::load(&cfg, &random_tensors(&cfg, 5).unwrap(), BackendKind::Cpu).unwrap();
    let (l, k, _) = m.capture_shape();
    let a: Vec<u32> = vec![10, 20, 30, 40, 50];
    let (alone, cap_alone) = run(&m, &a);
    // The same prompt beside two others in one step.
    let (x, y) = (vec![7u32, 8, 9], vec![100u32; 11]);
    let mut caches = [KvCache::default(), KvCache::default(), KvCache::default()];
    let mut cap = StepCapture::new(19, l, k, false);
    let [c0, c1, c2] = &mut caches;
    let logits = m
        .forward(
            &mut [
                SeqInput {
                    tokens: &x,
                    cache: c0,
                },
                SeqInput {
                    tokens: &a,
                    cache: c1,
                },
                SeqInput {
                    tokens: &y,
                    cache: c2,
                },
            ],
            &mut cap,
        )
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(logits[1], alone[0]);
    let rows = cap.to_step_rows().ids;
    let alone_rows = {
        let mut c = StepCapture::new(5, l, k, false);
        c.ids_mut().0.copy_from_slice(&cap_alone);
        c.to_step_rows().ids
    };
    assert_eq!(&rows[3 * l * k..8 * l * k], &alone_rows[..]);
}

/// The fine-grained fp8 fixture checkpoint (`fixtures/tiny-qwen3-moe-fp8`) and its config.
fn fp8_fixture() -> (std::path::PathBuf, Qwen3MoeConfig) {
    let dir = fixtures_root().join("tiny-qwen3-moe-fp8");
    let cfg = Qwen3MoeConfig::from_file(&dir.join("config.json")).unwrap();
    (dir, cfg)
}

/// An fp8 checkpoint whose config does not say how it is scaled is refused, not served with
/// its codes taken for weights (what candle's loading alone does).
#[test]
fn fp8_weights_without_a_quantization_config_are_refused() {
    let (dir, mut cfg) = fp8_fixture();
    let ckpt = Checkpoint::open(&dir).unwrap();
    assert!(Model::load(&cfg, &ckpt, BackendKind::Cpu).is_ok());
    cfg.quantization_config = None;
    let err = format!(
        "{:#}",
        Model::load(&cfg, &ckpt, BackendKind::Cpu).err().unwrap()
    );
    assert!(err.contains("no quantization_config"), "{err}");
}

/// The fp8 experts fused as transformers 5 keeps them (`gate_up_proj` `[E, 2I, H]` gate rows
/// first, `down_proj` `[E, H, I]`, each with its `_scale_inv` of the same blocks) load as the
/// per-expert fp8 tensors do: the same logits and routed experts.
#[test]
fn fused_fp8_experts_equal_per_expert_ones() {
    let (dir, cfg) = fp8_fixture();
    let ckpt = Checkpoint::open(&dir).unwrap();
    use flashinfer_rs_serve::model::weights::TensorSource;
    let mut fused: HashMap<String, Tensor> = HashMap::new();
    for l in cfg.moe_layers() {
        let p = format!("model.layers.{l}.mlp.experts");
        let get = |e: usize, n: &str| ckpt.get(&format!("{p}.{e}.{n}")).unwrap();
        let experts = 0..cfg.num_experts;
        for (name, parts) in [
            ("gate_up_proj", vec!["gate_proj", "up_proj"]),
            ("down_proj", vec!["down_proj"]),
        ] {
            for suffix in ["weight", "weight_scale_inv"] {
                let stacked: Vec<Tensor> = experts
                    .clone()
                    .map(|e| {
                        let halves: Vec<Tensor> = parts
                            .iter()
                            .map(|n| get(e, &format!("{n}.{suffix}")))
                            .collect();
                        Tensor::cat(&halves, 0).unwrap()
                    })
                    .collect();
                let key = match suffix {
                    "weight" => format!("{p}.{name}"),
                    _ => format!("{p}.{name}_scale_inv"),
                };
                fused.insert(key, Tensor::stack(&stacked, 0).unwrap());
            }
        }
    }
    let all =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    fused.extend(all.into_iter().filter(|(n, _)| !n.contains(".experts.")));
    assert_eq!(
        fused["model.layers.0.mlp.experts.gate_up_proj"].dtype(),
        DType::F8E4M3
    );
    let a = Model::load(&cfg, &ckpt, BackendKind::Cpu).unwrap();
    let b = Model::load(&cfg, &fused, BackendKind::Cpu).unwrap();
    let tokens: Vec<u32> = (0..9).map(|i| (i * 29 % 700) as u32).collect();
    let (la, ca) = run(&a, &tokens);
    let (lb, cb) = run(&b, &tokens);
    assert_eq!(la, lb);
    assert_eq!(ca, cb);
}

/// The steps the fp8 tests run: a prefill of 9 and three decode tokens.
fn fp8_steps() -> Steps {
    let p: Vec<u32> = (0..9).map(|i| (i * 29 % 259) as u32).collect();
    vec![vec![p], vec![vec![17]], vec![vec![200]], vec![vec![3]]]
}

/// A fine-grained fp8 checkpoint dequantized (`--moe-weights dequantized`, and `auto` on the
/// CPU backend) is the float checkpoint of its code-times-scale values, bit for bit.
#[test]
fn dequantized_fp8_experts_are_their_values() {
    let (cfg, fp8, values) = fp8_checkpoint(21);
    let want = drive(
        &Model::load(&cfg, &values, BackendKind::Cpu).unwrap(),
        &fp8_steps(),
        true,
    );
    for weights in [MoeWeights::Dequantized, MoeWeights::Auto] {
        let m = Model::load_on(&cfg, &fp8, BackendKind::Cpu, &cpu_with(weights)).unwrap();
        assert_eq!(drive(&m, &fp8_steps(), true), want, "{weights:?}");
    }
}

/// `--moe-weights fp8` on the CPU backend is the block-scale layer's reference (activations
/// quantised per 128 values, GEMM outputs rounded to bf16): close to the dequantized run,
/// not equal to it; refused where the checkpoint's experts are not fp8 or not in 128x128
/// blocks.
#[test]
fn fp8_experts_run_w8a8_or_are_refused() {
    let (cfg, fp8, _) = fp8_checkpoint(21);
    let exact = drive(
        &Model::load_on(
            &cfg,
            &fp8,
            BackendKind::Cpu,
            &cpu_with(MoeWeights::Dequantized),
        )
        .unwrap(),
        &fp8_steps(),
        true,
    );
    let m = Model::load_on(&cfg, &fp8, BackendKind::Cpu, &cpu_with(MoeWeights::Fp8)).unwrap();
    let w8a8 = drive(&m, &fp8_steps(), true);
    // End to end through 3 layers and the head: the quantisation moves the logits, within
    // a fraction of their scale (cpu.rs checks the MoE block itself to a few percent).
    let logits = |d: &[(Vec<Vec<f32>>, Vec<i16>)]| -> Vec<f32> {
        d.iter()
            .flat_map(|(l, _)| l.iter().flatten().copied())
            .collect()
    };
    let (a, b) = (logits(&exact), logits(&w8a8));
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(b.iter().all(|v| v.is_finite()));
    assert!(
        worst > 0.0,
        "fp8 experts computed exactly the dequantized numbers"
    );
    assert!(
        worst < 0.15 * scale,
        "logits moved by {worst}, their scale {scale}"
    );

    // Not fp8 in the checkpoint.
    let plain: Qwen3MoeConfig = serde_json::from_value(tiny_config(&[1])).unwrap();
    let err = Model::load_on(
        &plain,
        &random_tensors(&plain, 5).unwrap(),
        BackendKind::Cpu,
        &cpu_with(MoeWeights::Fp8),
    )
    .err()
    .unwrap();
    assert!(
        format!("{err:#}").contains("not fp8 in the checkpoint"),
        "{err:#}"
    );
    // fp8, but in 32x32 blocks (the transformers fixture).
    let (dir, cfg) = fp8_fixture();
    let ckpt = Checkpoint::open(&dir).unwrap();
    let err = Model::load_on(&cfg, &ckpt, BackendKind::Cpu, &cpu_with(MoeWeights::Fp8))
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("blocks are 32x32"), "{err:#}");
}

/// Random weights for an fp8 config (the benchmark's fp8 model): expert weights are e4m3
/// codes whose values (code times block scale) lie within half an e4m3 step of the same
/// source's float draw for the config without quantisation; the model loads and runs them in
/// fp8 on the CPU.
#[test]
fn random_fp8_experts_are_their_draw_quantised() {
    use flashinfer_rs_serve::model::random::RandomSource;
    use flashinfer_rs_serve::model::weights::{dequantize_blocks, TensorSource};
    let (cfg, _, _) = fp8_checkpoint(0);
    let mut plain = cfg.clone();
    plain.quantization_config = None;
    let (fp8, floats) = (RandomSource::new(&cfg, 9), RandomSource::new(&plain, 9));
    let name = "model.layers.0.mlp.experts.3.down_proj.weight";
    let scale_name = format!("{name}_scale_inv");
    assert!(fp8.contains(&scale_name) && !floats.contains(&scale_name));
    let codes = fp8.get(name).unwrap();
    assert_eq!(codes.dtype(), DType::F8E4M3);
    let scales = fp8.get(&scale_name).unwrap();
    let values = dequantize_blocks(&codes, &scales, (128, 128)).unwrap();
    let want = floats.get(name).unwrap().flatten_all().unwrap();
    let (v, w) = (
        values.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want.to_vec1::<f32>().unwrap(),
    );
    let scale = scales.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let c = codes.dim(1).unwrap();
    for (n, (a, b)) in v.iter().zip(&w).enumerate() {
        let s = scale[(n / c / 128) * (c / 128) + (n % c) / 128];
        assert!(
            (a - b).abs() <= b.abs() / 16.0 + s / 1024.0,
            "{name}[{n}]: {a} for {b}"
        );
    }
    assert_eq!(fp8.get("model.norm.weight").unwrap().dtype(), DType::F32);
    let m = Model::load_on(&cfg, &fp8, BackendKind::Cpu, &cpu_with(MoeWeights::Fp8)).unwrap();
    let out = drive(&m, &fp8_steps(), false);
    assert!(out
        .iter()
        .all(|(l, _)| l.iter().flatten().all(|x| x.is_finite())));
}
