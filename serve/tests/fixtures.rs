//! Against transformers: if `serve/fixtures/tiny-qwen3-moe/expected.json` exists (a small
//! Hugging Face Qwen3-MoE checkpoint with transformers' greedy completions and per-token
//! per-layer router top-k), the server must reproduce them. Without it the test fails, unless
//! FLASHINFER_RS_SERVE_FIXTURES_OPTIONAL=1.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

fn expected_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny-qwen3-moe/expected.json")
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

/// Rows whose router margin is at least this are compared exactly; closer calls may flip
/// between f32 implementations.
const MARGIN: f64 = 1e-4;

#[test]
fn fixtures_match_transformers() {
    let path = expected_path();
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
    let mut opts = Server::options(&dir);
    opts.max_model_len = None;
    let server = Server::start(opts);
    let cases = v["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for (n, case) in cases.iter().enumerate() {
        check_case(&server, n, case);
    }
}

fn check_case(server: &Server, n: usize, case: &Value) {
    let prompt_ids: Vec<i64> = serde_json::from_value(case["prompt_ids"].clone()).unwrap();
    let body = json!({"prompt": prompt_ids, "max_tokens": case["max_tokens"], "temperature": 0,
        "return_routed_experts": true});
    let (status, v) = post(server.addr, "/v1/completions", &body);
    assert_eq!(status, 200, "case {n}: {v}");
    let c = &v["choices"][0];
    if let Some(want) = case["completion_text"].as_str() {
        assert_eq!(
            c["text"].as_str().unwrap(),
            want,
            "case {n}: completion text"
        );
    }
    // The prompt's text tokenizes to its ids.
    if let Some(p) = case["prompt"].as_str() {
        let (_, t) = post(
            server.addr,
            "/v1/completions",
            &json!({"prompt": p, "max_tokens": 1, "temperature": 0}),
        );
        assert_eq!(
            t["usage"]["prompt_tokens"],
            json!(prompt_ids.len()),
            "case {n}: prompt tokens"
        );
    }
    let npy = decode_npy_b64(c["routed_experts"].as_str().unwrap());
    let want: Vec<Vec<Vec<i64>>> = serde_json::from_value(case["routed_experts"].clone()).unwrap();
    let margins: Option<Vec<Vec<f64>>> =
        serde_json::from_value(case["router_margins"].clone()).ok();
    let (layers, k) = (npy.shape[1], npy.shape[2]);
    assert_eq!(want.first().map(Vec::len), Some(layers), "case {n}: layers");
    assert!(
        npy.shape[0].abs_diff(want.len()) <= 1,
        "case {n}: {} rows vs {}",
        npy.shape[0],
        want.len()
    );
    let mut close_calls = 0;
    for (t, row) in want.iter().enumerate().take(npy.shape[0]) {
        for (l, ids) in row.iter().enumerate() {
            let got = &npy.ints[(t * layers + l) * k..][..k];
            let margin = margins.as_ref().map_or(f64::INFINITY, |m| m[t][l]);
            if margin < MARGIN {
                close_calls += 1;
                continue;
            }
            assert_eq!(
                got,
                &ids[..],
                "case {n}: token {t} layer {l} (margin {margin})"
            );
        }
    }
    eprintln!(
        "case {n}: {} rows match ({close_calls} close calls not compared)",
        npy.shape[0]
    );
    let completion: Vec<i64> = serde_json::from_value(case["completion_ids"].clone()).unwrap();
    assert_eq!(
        v["usage"]["completion_tokens"],
        json!(completion.len()),
        "case {n}"
    );
}
