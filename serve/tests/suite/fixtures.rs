//! Against transformers: `serve/fixtures/expected.json` (a small Hugging Face Qwen3-MoE
//! checkpoint with transformers' greedy completions and per-token per-layer router top-k) and
//! `serve/fixtures/expected-fp8.json` (the same weights as a fine-grained fp8 checkpoint, and
//! transformers on it): the server must reproduce them. Without them the tests fail, unless
//! FLASHINFER_RS_SERVE_FIXTURES_OPTIONAL=1.

use std::path::{Path, PathBuf};

use crate::common::*;
use flashinfer_rs_serve::model::moe::BackendKind;
use serde_json::{json, Value};

/// `fixtures/<name>`, or `fixtures/tiny-qwen3-moe/<name>` where an older layout put it.
fn expected_path(name: &str) -> PathBuf {
    let root = fixtures_root();
    let inside = root.join("tiny-qwen3-moe").join(name);
    let beside = root.join(name);
    if !inside.exists() && beside.exists() {
        beside
    } else {
        inside
    }
}

/// The checkpoint directory `model_dir` names (relative to `fixtures/`, or to the file's own
/// directory).
fn model_dir(expected: &Path, v: &Value) -> PathBuf {
    let here = expected.parent().unwrap().to_path_buf();
    match v["model_dir"].as_str() {
        Some(d) => [here.parent().unwrap().join(d), here.join(d)]
            .into_iter()
            .find(|p| p.join("config.json").exists())
            .unwrap_or(here),
        None => here,
    }
}

/// Gaps (probabilities, or logits for tokens) at least this wide are compared exactly: an f32
/// implementation other than torch's moves them by ~1e-7, so only closer calls may flip.
/// The Hopper backend runs the experts in bf16 (weights, activations and the GEMMs' output,
/// as every bf16 MoE kernel does), which moves the next layers' router probabilities by up
/// to ~1e-3 and the logits by ~1e-2: its calls are excused below those.
fn margins() -> (f64, f64) {
    match backend() {
        BackendKind::Cpu => (1e-5, 1e-5),
        _ => (5e-3, 5e-2),
    }
}

#[test]
fn fixtures_match_transformers() {
    match_fixtures("expected.json");
}

/// The same weights as a fine-grained fp8 checkpoint (e4m3 linears with per-block
/// `weight_scale_inv`, as Qwen3-30B-A3B-FP8 ships them): the server's completions and routed
/// experts equal transformers' on it (transformers' own dequantisation, in f32).
#[test]
fn fp8_checkpoint_matches_transformers() {
    match_fixtures("expected-fp8.json");
}

fn match_fixtures(name: &str) {
    let path = expected_path(name);
    if !path.exists() {
        if std::env::var("FLASHINFER_RS_SERVE_FIXTURES_OPTIONAL").as_deref() == Ok("1") {
            eprintln!(
                "{} absent; skipped (FLASHINFER_RS_SERVE_FIXTURES_OPTIONAL=1)",
                path.display()
            );
            return;
        }
        panic!(
            "{} is missing: the transformers fixtures are required (set \
             FLASHINFER_RS_SERVE_FIXTURES_OPTIONAL=1 to skip)",
            path.display()
        );
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let dir = model_dir(&path, &v);
    let server = Server::start(Server::options(&dir));
    let cases = v["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    let moe_layers = v["moe_layers"].as_array().map_or(0, Vec::len);
    for (n, case) in cases.iter().enumerate() {
        check_case(&server, n, case, moe_layers);
    }
}

/// The request a case describes: chat cases through the chat endpoint and its template.
fn request(case: &Value) -> (&'static str, Value) {
    let common = json!({"max_tokens": case["max_tokens"], "temperature": 0,
        "return_routed_experts": true, "return_token_ids": true});
    let mut body = common;
    if case["chat"] == json!(true) {
        body["messages"] = json!([{"role": "user", "content": case["prompt"]}]);
        ("/v1/chat/completions", body)
    } else {
        body["prompt"] = case["prompt"].clone();
        ("/v1/completions", body)
    }
}

/// The `f32` section is the reference of both backends: the CPU backend computes in f32; the
/// Hopper backend too, but for the experts (bf16), which is closer to transformers' f32 run
/// than to its all-bf16 one.
fn check_case(server: &Server, n: usize, case: &Value, moe_layers: usize) {
    let want = &case["f32"];
    let (path, body) = request(case);
    let (status, v) = post(server.addr, path, &body);
    assert_eq!(status, 200, "case {n}: {v}");
    let c = &v["choices"][0];
    assert_eq!(
        c["prompt_token_ids"], case["prompt_ids"],
        "case {n}: tokenizer / chat template"
    );
    let got_ids: Vec<i64> = serde_json::from_value(c["token_ids"].clone()).unwrap();
    let want_ids: Vec<i64> = serde_json::from_value(want["completion_ids"].clone()).unwrap();
    let (margin, token_margin) = margins();
    let token_margins: Vec<f64> =
        serde_json::from_value(want["token_margins"].clone()).unwrap_or_default();
    // Tokens agree up to the first close call; after one, the sequences may part.
    let mut agreed = want_ids.len();
    for (i, (g, w)) in got_ids.iter().zip(&want_ids).enumerate() {
        if g != w {
            let m = token_margins.get(i).copied().unwrap_or(0.0);
            assert!(
                m < token_margin,
                "case {n}: token {i}: {g} vs transformers' {w} (logit margin {m})"
            );
            agreed = i;
            break;
        }
    }
    assert_eq!(got_ids.len(), want_ids.len(), "case {n}: completion length");
    if agreed == want_ids.len() {
        let text = c["text"]
            .as_str()
            .or(c["message"]["content"].as_str())
            .unwrap();
        assert_eq!(
            text,
            want["completion_text"].as_str().unwrap(),
            "case {n}: text"
        );
    }
    let npy = decode_npy_b64(c["routed_experts"].as_str().unwrap());
    let rows: Vec<Vec<Vec<i64>>> = serde_json::from_value(want["routed_experts"].clone()).unwrap();
    let margins: Vec<Vec<f64>> = serde_json::from_value(want["margins"].clone()).unwrap();
    let order: Vec<Vec<f64>> =
        serde_json::from_value(want["order_margins"].clone()).unwrap_or_default();
    let (layers, k) = (npy.shape[1], npy.shape[2]);
    assert_eq!(layers, moe_layers, "case {n}: MoE layers");
    assert_eq!(
        npy.shape[0],
        rows.len(),
        "case {n}: rows (prompt + completion - 1)"
    );
    let prompt_len = case["prompt_ids"].as_array().unwrap().len();
    // Rows of fed tokens the two runs share: the prompt and the agreed completion.
    let shared = (prompt_len + agreed).min(rows.len());
    let mut close = 0;
    for (t, row) in rows.iter().enumerate().take(shared) {
        for (l, ids) in row.iter().enumerate() {
            let got = &npy.ints[(t * layers + l) * k..][..k];
            if margins[t][l] < margin {
                close += 1;
                continue;
            }
            if order.get(t).is_some_and(|o| o[l] < margin) {
                let (mut a, mut b) = (got.to_vec(), ids.clone());
                a.sort_unstable();
                b.sort_unstable();
                assert_eq!(a, b, "case {n}: token {t} layer {l}: expert set");
                continue;
            }
            assert_eq!(
                got,
                &ids[..],
                "case {n}: token {t} layer {l} (margin {})",
                margins[t][l]
            );
        }
    }
    eprintln!("case {n}: {shared} rows x {layers} layers match transformers ({close} close calls skipped)");
}
