//! Shared by the server tests: a tiny random Qwen3-MoE checkpoint, a server started
//! in-process, a plain HTTP/1.1 client over `TcpStream`, `.npy` decoding, and the model run
//! alone (no engine, no HTTP) as the reference.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use candle_core::{DType, Tensor};
use flashinfer_rs_serve::engine::sampling::{Sampler, SamplingParams};
use flashinfer_rs_serve::model::device::Placement;
use flashinfer_rs_serve::model::moe::{BackendKind, MoeWeights, StepCapture};
use flashinfer_rs_serve::model::random::{random_tensors, save_checkpoint};
use flashinfer_rs_serve::model::weights::{quantize_blocks, scales_name};
use flashinfer_rs_serve::model::{KvCache, Model, Qwen3MoeConfig, SeqInput};
use flashinfer_rs_serve::server::{self, ModelSource, RunningServer, ServerOptions};
use flashinfer_rs_serve::text::{write_byte_level_tokenizer, TextModel};
use serde_json::{json, Value};

pub const LAYERS: usize = 3;
pub const EXPERTS: usize = 16;
pub const TOP_K: usize = 4;

/// The tiny model's config: 3 layers (those in `mlp_only` dense, the rest MoE), hidden 64,
/// 16 experts, top-4, the byte-level tokenizer's 259 tokens.
pub fn tiny_config(mlp_only: &[usize]) -> Value {
    json!({
        "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
        "vocab_size": 259, "hidden_size": 64, "intermediate_size": 96,
        "moe_intermediate_size": 64, "num_hidden_layers": LAYERS, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "num_experts": EXPERTS,
        "num_experts_per_tok": TOP_K, "decoder_sparse_step": 1, "mlp_only_layers": mlp_only,
        "norm_topk_prob": true, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 512, "tie_word_embeddings": false,
        "hidden_act": "silu", "torch_dtype": "bfloat16"
    })
}

/// A test's checkpoint directory, removed when dropped: a test run leaves nothing in the temp
/// dir (each run left a 1.4 MB checkpoint per server test before).
pub struct CheckpointDir(PathBuf);

impl std::ops::Deref for CheckpointDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for CheckpointDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the tiny checkpoint (bf16 safetensors, per-expert keys) and tokenizer into a fresh
/// directory named `name` under the target's temp dir, removed when the result drops (a
/// server reads it only while it starts).
pub fn tiny_checkpoint(name: &str, seed: u64) -> CheckpointDir {
    let dir = std::env::temp_dir().join(format!("fi-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg_json = tiny_config(&[]);
    let cfg: Qwen3MoeConfig = serde_json::from_value(cfg_json.clone()).unwrap();
    let tensors = random_tensors(&cfg, seed).unwrap();
    save_checkpoint(&dir, &cfg_json, &tensors, DType::BF16).unwrap();
    write_byte_level_tokenizer(&dir).unwrap();
    CheckpointDir(dir)
}

/// The MoE backend the tests run on: `FLASHINFER_RS_SERVE_BACKEND` (`cpu`, the default, or
/// `hopper`: the GPU run of the same tests through flashinfer-rs's Hopper layer).
/// Per step, each request's new tokens (an empty slice: the request sits the step out).
pub type Steps = Vec<Vec<Vec<u32>>>;

/// Runs `steps` through `model` (each request with its own KV cache), capturing the routing
/// weights too when `weights`; returns every step's logits (f32) and token-major routed ids.
pub fn drive(model: &Model, steps: &Steps, weights: bool) -> Vec<(Vec<Vec<f32>>, Vec<i16>)> {
    let (l, k, _) = model.capture_shape();
    let mut caches: Vec<KvCache> = (0..steps[0].len()).map(|_| KvCache::default()).collect();
    let mut out = Vec::new();
    for step in steps {
        let n: usize = step.iter().map(Vec::len).sum();
        let mut cap = StepCapture::new(n, l, k, weights);
        let mut seqs: Vec<SeqInput<'_>> = step
            .iter()
            .zip(caches.iter_mut())
            .filter(|(t, _)| !t.is_empty())
            .map(|(tokens, cache)| SeqInput { tokens, cache })
            .collect();
        let logits = model.forward(&mut seqs, &mut cap).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        out.push((logits.to_vec2::<f32>().unwrap(), cap.to_step_rows().ids));
    }
    out
}

/// Compares two [`drive`] runs of the same steps: every logit within `max_gap` of the other
/// run's (a failure names `what` and the step); returns how many routed rows are equal, of
/// how many.
pub fn compare_runs(
    a: &[(Vec<Vec<f32>>, Vec<i16>)],
    b: &[(Vec<Vec<f32>>, Vec<i16>)],
    max_gap: f32,
    what: &str,
) -> (usize, usize) {
    let (mut same, mut rows) = (0, 0);
    let k = TOP_K;
    assert_eq!(a.len(), b.len(), "{what}: steps");
    for (s, ((la, ia), (lb, ib))) in a.iter().zip(b).enumerate() {
        assert_eq!(ia.len(), ib.len(), "{what} step {s}: routed rows");
        for (ra, rb) in ia.chunks(k).zip(ib.chunks(k)) {
            rows += 1;
            same += usize::from(ra == rb);
        }
        for (ra, rb) in la.iter().zip(lb) {
            let gap = ra
                .iter()
                .zip(rb)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(gap < max_gap, "{what} step {s}: logits differ by {gap}");
        }
    }
    (same, rows)
}

pub fn backend() -> BackendKind {
    match std::env::var("FLASHINFER_RS_SERVE_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("cpu") => BackendKind::Cpu,
        Ok("hopper") => BackendKind::Hopper,
        Ok(other) => panic!("FLASHINFER_RS_SERVE_BACKEND={other}: cpu or hopper"),
    }
}

/// A server in its own runtime.
pub struct Server {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<RunningServer>,
    pub addr: SocketAddr,
    pub model: String,
}

impl Server {
    pub fn start(opts: ServerOptions) -> Server {
        Server::try_start(opts).unwrap()
    }

    /// [`Server::start`], or why the server refused to start (its error's chain).
    pub fn try_start(opts: ServerOptions) -> Result<Server, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(server::start(opts))
            .map_err(|e| format!("{e:#}"))?;
        let (addr, model) = (server.addr, server.model_name.clone());
        Ok(Server {
            rt,
            server: Some(server),
            addr,
            model,
        })
    }

    pub fn options(dir: &Path) -> ServerOptions {
        let mut o = ServerOptions::new(ModelSource::Dir(dir.to_path_buf()));
        o.backend = backend();
        o.capture = true;
        o.max_batch_tokens = 256;
        o.max_running = 64;
        o.max_queue = 256;
        o.grace = Duration::from_secs(2);
        o
    }

    pub fn metric(&self, name: &str) -> f64 {
        let (status, body) = get(self.addr, "/metrics");
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(&format!("flashinfer_serve_{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// Waits until the queue, the running set and the assembler are empty.
    pub fn wait_idle(&self) {
        for _ in 0..400 {
            let idle = [
                "queue_depth",
                "active_requests",
                "assembler_active_requests",
            ]
            .iter()
            .all(|m| self.metric(m) == 0.0);
            if idle {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!(
            "not idle: queue {} active {} assembler {}",
            self.metric("queue_depth"),
            self.metric("active_requests"),
            self.metric("assembler_active_requests")
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            self.rt.block_on(s.shutdown()).unwrap();
        }
    }
}

/// A connection with one HTTP/1.1 request's head written (`Connection: close`, a JSON body of
/// `len` bytes to follow).
pub fn connect(addr: SocketAddr, method: &str, path: &str, len: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    s
}

/// POSTs `n` bytes (spaces) to `path`, written from another thread so the answer can come
/// before the server has read them all (a body over its limit); the status and the body.
pub fn post_sized(addr: SocketAddr, path: &str, n: usize) -> (u16, String) {
    let s = connect(addr, "POST", path, n);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b' '; 64 << 10];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            if w.write_all(&chunk[..k]).is_err() {
                break;
            }
            left -= k;
        }
    });
    let answer = read_answer(s);
    writer.join().unwrap();
    answer
}

/// Reads a connection to its end: the answer's status and body.
pub fn read_answer(mut s: TcpStream) -> (u16, String) {
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}

/// Sends one HTTP/1.1 request; returns the connection, positioned at the body, the status
/// and whether the body is chunked.
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (BufReader<TcpStream>, u16, Option<usize>, bool) {
    let mut s = connect(addr, method, path, body.len());
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let (mut len, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().ok();
        }
        if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        }
    }
    (r, status, len, chunked)
}

/// Reads one chunk of a chunked body; `None` at its end.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(line.trim(), 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

fn read_body(mut r: BufReader<TcpStream>, len: Option<usize>, chunked: bool) -> String {
    let mut body = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else if let Some(n) = len {
        body.resize(n, 0);
        r.read_exact(&mut body).unwrap();
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    String::from_utf8(body).unwrap()
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (r, status, len, chunked) = send(addr, "GET", path, b"");
    (status, read_body(r, len, chunked))
}

/// POSTs raw bytes; the status and the body.
pub fn post_raw(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let (r, status, len, chunked) = send(addr, "POST", path, body);
    (status, read_body(r, len, chunked))
}

/// POSTs JSON, expects JSON back.
pub fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (status, text) = post_raw(addr, path, body.to_string().as_bytes());
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, v)
}

/// POSTs a streaming request and reads its SSE `data:` payloads; with `cancel_after`, drops
/// the connection after that many events (the rest is never read).
pub fn post_stream(
    addr: SocketAddr,
    path: &str,
    body: &Value,
    cancel_after: Option<usize>,
) -> (u16, Vec<String>) {
    let (mut r, status, len, chunked) = send(addr, "POST", path, body.to_string().as_bytes());
    if status != 200 {
        return (status, vec![read_body(r, len, chunked)]);
    }
    assert!(chunked, "SSE answers are chunked");
    let mut pending = String::new();
    let mut events = Vec::new();
    while let Some(c) = read_chunk(&mut r) {
        pending.push_str(std::str::from_utf8(&c).unwrap());
        while let Some(at) = pending.find("\n\n") {
            let ev: String = pending[..at].to_owned();
            pending.drain(..at + 2);
            for line in ev.lines() {
                if let Some(d) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    events.push(d.to_owned());
                }
            }
            if cancel_after.is_some_and(|n| events.len() >= n) {
                return (status, events); // dropping `r` closes the connection
            }
        }
    }
    (status, events)
}

/// A decoded `.npy`: shape and values.
#[derive(Debug, Clone, PartialEq)]
pub struct Npy {
    pub descr: String,
    pub shape: Vec<usize>,
    pub ints: Vec<i64>,
    pub floats: Vec<f32>,
}

pub fn decode_npy_b64(b64: &str) -> Npy {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => panic!("dtype {other:?}"),
    };
    let (mut ints, mut floats) = (Vec::new(), Vec::new());
    match descr.as_str() {
        "|u1" => {
            ints = npy
                .into_vec::<u8>()
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect()
        }
        "<u2" => {
            ints = npy
                .into_vec::<u16>()
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect()
        }
        "<i2" => {
            ints = npy
                .into_vec::<i16>()
                .unwrap()
                .into_iter()
                .map(i64::from)
                .collect()
        }
        "<f4" => floats = npy.into_vec::<f32>().unwrap(),
        d => panic!("dtype {d}"),
    }
    Npy {
        descr,
        shape,
        ints,
        floats,
    }
}

/// Checks the rules every routed row keeps: top_k distinct experts below `EXPERTS`, and the
/// array is not all zero.
pub fn check_rows(npy: &Npy, tokens: usize, layers: usize) {
    assert_eq!(npy.shape, vec![tokens, layers, TOP_K]);
    assert_eq!(npy.descr, "|u1", "uint8 for <= 256 experts");
    for row in npy.ints.chunks(TOP_K) {
        let mut r = row.to_vec();
        r.sort_unstable();
        r.dedup();
        assert_eq!(r.len(), TOP_K, "distinct experts per row: {row:?}");
        assert!(
            row.iter().all(|&e| (0..EXPERTS as i64).contains(&e)),
            "{row:?}"
        );
    }
    assert!(
        tokens == 0 || npy.ints.iter().any(|&e| e != 0),
        "all-zero routing"
    );
}

/// The model run alone, one request, no engine: generated tokens and routed rows
/// (`[fed tokens, layers, top_k]` token-major).
pub fn solo(
    model: &Model,
    text: &TextModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: SamplingParams,
) -> (Vec<u32>, Vec<i16>) {
    let (tokens, rows, _) = solo_steps(model, text, prompt, max_tokens, sampling);
    (tokens, rows)
}

/// [`solo`], with the logits each generated token was sampled from.
pub fn solo_steps(
    model: &Model,
    text: &TextModel,
    prompt: &[u32],
    max_tokens: usize,
    sampling: SamplingParams,
) -> (Vec<u32>, Vec<i16>, Vec<Vec<f32>>) {
    let (layers, top_k, _) = model.capture_shape();
    let mut cache = KvCache::default();
    let mut tokens = prompt.to_vec();
    let mut rows = Vec::new();
    let mut steps = Vec::new();
    let mut sampler = Sampler::new(sampling);
    loop {
        let new = tokens[cache.len()..].to_vec();
        let mut cap = StepCapture::new(new.len(), layers, top_k, false);
        let logits = model
            .forward(
                &mut [SeqInput {
                    tokens: &new,
                    cache: &mut cache,
                }],
                &mut cap,
            )
            .unwrap();
        rows.extend(cap.to_step_rows().ids);
        let logits = logits.to_vec2::<f32>().unwrap().swap_remove(0);
        let t = sampler.sample(&logits);
        steps.push(logits);
        tokens.push(t);
        if text.eos_ids().contains(&t) || tokens.len() - prompt.len() >= max_tokens {
            break;
        }
    }
    (tokens[prompt.len()..].to_vec(), rows, steps)
}

/// A tiny model whose experts the block-scale layer takes (hidden and moe_intermediate 128)
/// as a fine-grained fp8 checkpoint (128x128 blocks; only the experts quantised), random
/// weights from `seed`: its tensors (e4m3 expert codes quantised by flashinfer-rs's
/// `prepare::fp8_blocks`, and their `weight_scale_inv`), and the same checkpoint with every
/// expert weight written out as f32 code times scale.
pub fn fp8_checkpoint(seed: u64) -> (Qwen3MoeConfig, Tensors, Tensors) {
    let mut v = tiny_config(&[1]);
    v["hidden_size"] = json!(128);
    v["moe_intermediate_size"] = json!(128);
    v["head_dim"] = json!(32);
    v["quantization_config"] = json!({"quant_method": "fp8", "fmt": "e4m3",
        "activation_scheme": "dynamic", "weight_block_size": [128, 128]});
    let cfg: Qwen3MoeConfig = serde_json::from_value(v).unwrap();
    let floats = random_tensors(&cfg, seed).unwrap();
    let (mut fp8, mut dequantized) = (floats.clone(), floats.clone());
    for (name, t) in floats.iter().filter(|(n, _)| n.contains(".experts.")) {
        let (codes, scales) = quantize_blocks(t).expect("quantising an expert");
        // The values written out here, not by the loader's own dequantisation.
        let c = t.dim(1).unwrap();
        let s = scales.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let q = codes.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
        let values: Vec<f32> = (q.to_vec1::<f32>().unwrap().iter().enumerate())
            .map(|(n, &q)| q * s[(n / c / 128) * (c / 128) + (n % c) / 128])
            .collect();
        let values = Tensor::from_vec(values, t.dims(), &candle_core::Device::Cpu).unwrap();
        dequantized.insert(name.clone(), values);
        fp8.insert(scales_name(name), scales);
        fp8.insert(name.clone(), codes);
    }
    (cfg, fp8, dequantized)
}

/// `serve/fixtures`, or where FLASHINFER_RS_SERVE_FIXTURES says (a packed test binary runs
/// away from this tree).
pub fn fixtures_root() -> PathBuf {
    std::env::var_os("FLASHINFER_RS_SERVE_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

/// The CPU path's placement with the experts' format `weights`.
pub fn cpu_with(weights: MoeWeights) -> Placement {
    let mut place = Placement::cpu();
    place.moe_weights = weights;
    place
}

/// A checkpoint's tensors by name.
pub type Tensors = std::collections::HashMap<String, Tensor>;
