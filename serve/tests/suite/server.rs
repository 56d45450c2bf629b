//! The server over real HTTP: completions and chat, streaming and not, routed experts equal
//! to the model run alone, concurrency with cancellations, every bad request's 4xx.

use std::sync::OnceLock;
use std::thread;

use crate::common::*;
use flashinfer_rs_serve::engine::sampling::SamplingParams;
use flashinfer_rs_serve::http::{
    self,
    listen::Timeouts,
    request::{MAX_STOP_BYTES, MAX_STOP_STRINGS},
};
use flashinfer_rs_serve::model::Model;
use flashinfer_rs_serve::server::{load_model, ServerOptions};
use flashinfer_rs_serve::text::TextModel;
use serde_json::{json, Value};

struct Fixture {
    server: Server,
    model: Model,
    text: TextModel,
}

/// One server (and the same model, loaded alone) for the tests of this binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tiny_checkpoint("main", 7);
        let opts = Server::options(&dir);
        let (model, text, _) = load_model(&opts).unwrap();
        Fixture {
            server: Server::start(opts),
            model,
            text,
        }
    })
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        top_k: 0,
        min_p: 0.0,
    }
}

/// The routed rows of a choice (vLLM form), decoded.
fn rows_of(choice: &Value) -> Npy {
    decode_npy_b64(choice["routed_experts"].as_str().expect("routed_experts"))
}

#[test]
fn completion_returns_the_models_tokens_and_routed_experts() {
    let f = fixture();
    let prompt = "The capital of France is";
    let body = json!({"model": f.server.model, "prompt": prompt, "max_tokens": 12,
        "temperature": 0, "return_routed_experts": true, "return_routed_weights": true});
    let (status, v) = post(f.server.addr, "/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    let ids = f.text.encode(prompt).unwrap();
    let (gen, rows) = solo(&f.model, &f.text, &ids, 12, greedy());
    assert_eq!(choice["text"], json!(f.text.decode(&gen).unwrap()));
    assert_eq!(v["usage"]["completion_tokens"], json!(gen.len()));
    let npy = rows_of(choice);
    let t = ids.len() + gen.len() - 1;
    check_rows(&npy, t, LAYERS);
    let want: Vec<i64> = rows[..t * LAYERS * TOP_K]
        .iter()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(npy.ints, want, "routed experts equal the model run alone");
    let w = decode_npy_b64(choice["routed_weights"].as_str().unwrap());
    assert_eq!(w.shape, npy.shape);
    for row in w.floats.chunks(TOP_K) {
        assert!(
            (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "renormalised: {row:?}"
        );
        assert!(row.windows(2).all(|p| p[0] >= p[1]), "best first: {row:?}");
    }
}

#[test]
fn streaming_chunks_carry_their_tokens_rows_and_add_up_to_the_whole() {
    let f = fixture();
    let body = json!({"prompt": "Streaming test", "max_tokens": 10, "temperature": 0,
        "return_routed_experts": true});
    let (_, whole) = post(f.server.addr, "/v1/completions", &body);
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (status, events) = post_stream(f.server.addr, "/v1/completions", &sbody, None);
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let (mut text, mut ids, mut rows_total) = (String::new(), Vec::new(), 0);
    let prompt_len = f.text.encode("Streaming test").unwrap().len();
    for (i, e) in events[..events.len() - 1].iter().enumerate() {
        let v: Value = serde_json::from_str(e).unwrap();
        let c = &v["choices"][0];
        text.push_str(c["text"].as_str().unwrap());
        if let Some(r) = c["routed_experts"].as_str() {
            let npy = decode_npy_b64(r);
            // The first chunk carries the prompt's rows and its token's; later ones one row.
            let want = if i == 0 { prompt_len + 1 } else { 1 };
            if c["finish_reason"].is_null() {
                assert_eq!(npy.shape[0], want, "chunk {i}");
            }
            rows_total += npy.shape[0];
            ids.extend(npy.ints);
        }
    }
    let full = rows_of(&whole["choices"][0]);
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert_eq!(rows_total, full.shape[0]);
    assert_eq!(ids, full.ints);
}

/// The log-probability of each token and its top ones, as the model run alone gives them
/// (the oracle: log(softmax) of its logits in f64, transformers' `log_softmax` of the raw
/// logits, as vLLM's default `raw_logprobs`): completion form, chat form, and streamed chunks
/// that add up to the whole.
#[test]
fn logprobs_are_the_models_log_softmax_in_both_forms() {
    let f = fixture();
    let prompt = "Log probabilities";
    let ids = f.text.encode(prompt).unwrap();
    let (gen, _, steps) = solo_steps(&f.model, &f.text, &ids, 8, greedy());
    let oracle = |logits: &[f32]| -> Vec<f64> {
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        logits.iter().map(|&l| l as f64 - z.ln()).collect()
    };
    // Tokens named by id: several bytes' texts are all U+FFFD, and top_logprobs is a map.
    let name = |id: u32| format!("token_id:{id}");
    let body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0, "logprobs": 3,
        "return_tokens_as_token_ids": true});
    let (status, v) = post(f.server.addr, "/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), gen.len(), "{lp}");
    for (i, (&token, logits)) in gen.iter().zip(&steps).enumerate() {
        let want = oracle(logits);
        assert_eq!(lp["tokens"][i], json!(name(token)));
        let got = lp["token_logprobs"][i].as_f64().unwrap();
        assert!((got - want[token as usize]).abs() < 1e-4, "{i}: {got}");
        let mut best: Vec<usize> = (0..want.len()).collect();
        best.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 3, "{top:?}");
        for &id in &best[..3] {
            let got = top[&name(id as u32)].as_f64().unwrap();
            assert!((got - want[id]).abs() < 1e-4, "{i} {id}: {got}");
        }
    }
    // Streamed (with capture, which holds each token back a step): the same lists.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["return_routed_experts"] = json!(true);
    let (status, events) = post_stream(f.server.addr, "/v1/completions", &sbody, None);
    assert_eq!(status, 200);
    let (mut tokens, mut values) = (Vec::new(), Vec::new());
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        let l = &v["choices"][0]["logprobs"];
        tokens.extend(l["tokens"].as_array().unwrap().iter().cloned());
        values.extend(l["token_logprobs"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(json!(tokens), lp["tokens"]);
    assert_eq!(json!(values), lp["token_logprobs"]);
    // By text (the default): the tokens' texts.
    let mut tbody = body.clone();
    tbody["return_tokens_as_token_ids"] = json!(false);
    let (_, v) = post(f.server.addr, "/v1/completions", &tbody);
    let names: Vec<String> = gen.iter().map(|&t| f.text.token_text(t).unwrap()).collect();
    assert_eq!(v["choices"][0]["logprobs"]["tokens"], json!(names));
    // Chat: entries with bytes and the top ones in order, the greedy token the first.
    let body = json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 6,
        "temperature": 0, "logprobs": true, "top_logprobs": 2});
    let (status, v) = post(f.server.addr, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(json!(content.len()), v["usage"]["completion_tokens"]);
    for e in content {
        let token = e["token"].as_str().unwrap();
        assert_eq!(e["bytes"], json!(token.as_bytes()));
        let top = e["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 2);
        assert_eq!(top[0]["logprob"], e["logprob"], "{e}");
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
    }
    let (_, v) = post(
        f.server.addr,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 2}),
    );
    assert!(v["choices"][0]["logprobs"].is_null(), "not asked: {v}");
}

/// `stop_token_ids` end a request at the first such token (kept, as an EOS is); with the
/// model's own EOS set to a token it generates, the request ends there, and `ignore_eos`
/// runs it to `max_tokens`.
#[test]
fn stop_token_ids_and_ignore_eos() {
    let f = fixture();
    let prompt = "Stop tokens";
    let ids = f.text.encode(prompt).unwrap();
    let (gen, _) = solo(&f.model, &f.text, &ids, 8, greedy());
    assert_eq!(gen.len(), 8, "no EOS in the fixture's greedy run: {gen:?}");
    let stop = gen[3];
    let at = gen.iter().position(|&t| t == stop).unwrap();
    let ask = |addr, extra: Value| {
        let mut body = json!({"prompt": prompt, "max_tokens": 8, "temperature": 0,
            "return_token_ids": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (status, v) = post(addr, "/v1/completions", &body);
        assert_eq!(status, 200, "{v}");
        v["choices"][0].clone()
    };
    let c = ask(f.server.addr, json!({"stop_token_ids": [stop]}));
    assert_eq!(c["token_ids"], json!(gen[..=at]), "{c}");
    assert_eq!(c["finish_reason"], "stop");
    // The same weights with that token as the model's EOS.
    let dir = tiny_checkpoint("main-eos", 7);
    std::fs::write(
        dir.join("generation_config.json"),
        json!({"eos_token_id": stop}).to_string(),
    )
    .unwrap();
    let s = Server::start(Server::options(&dir));
    let c = ask(s.addr, json!({}));
    assert_eq!(c["token_ids"], json!(gen[..=at]), "{c}");
    assert_eq!(c["finish_reason"], "stop");
    let c = ask(s.addr, json!({"ignore_eos": true}));
    assert_eq!(c["token_ids"], json!(gen), "{c}");
    assert_eq!(c["finish_reason"], "length");
}

#[test]
fn chat_completions_render_the_template_and_stream() {
    let f = fixture();
    let messages = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]);
    let body = json!({"model": f.server.model, "messages": messages, "max_completion_tokens": 6,
        "temperature": 0, "return_routed_experts": true});
    let (status, v) = post(f.server.addr, "/v1/chat/completions", &body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let prompt = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n";
    let ids = f.text.encode(prompt).unwrap();
    let (gen, rows) = solo(&f.model, &f.text, &ids, 6, greedy());
    assert_eq!(msg["content"], json!(f.text.decode(&gen).unwrap()));
    let npy = rows_of(&v["choices"][0]);
    let t = ids.len() + gen.len() - 1;
    check_rows(&npy, t, LAYERS);
    assert_eq!(
        npy.ints,
        rows[..t * LAYERS * TOP_K]
            .iter()
            .map(|&x| x as i64)
            .collect::<Vec<_>>()
    );
    let mut s = body.clone();
    s["stream"] = json!(true);
    let (status, events) = post_stream(f.server.addr, "/v1/chat/completions", &s, None);
    assert_eq!(status, 200);
    let mut content = String::new();
    for (i, e) in events.iter().filter(|e| *e != "[DONE]").enumerate() {
        let v: Value = serde_json::from_str(e).unwrap();
        assert_eq!(v["object"], "chat.completion.chunk");
        let d = &v["choices"][0]["delta"];
        if i == 0 {
            assert_eq!(d["role"], "assistant");
        }
        content.push_str(d["content"].as_str().unwrap_or(""));
    }
    assert_eq!(content, msg["content"].as_str().unwrap());
}

#[test]
fn sglang_form_start_len_and_token_prompts() {
    let f = fixture();
    let ids = f.text.encode("Token ids in, experts out").unwrap();
    let start = 5;
    let body = json!({"prompt": ids, "max_tokens": 4, "temperature": 0,
        "return_routed_experts": true, "routed_experts_format": "sglang",
        "routed_experts_start_len": start, "return_routed_weights": true});
    let (status, v) = post(f.server.addr, "/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
    let ext = &v["choices"][0]["sglext"];
    assert_eq!(ext["routed_experts_start_len"], json!(start));
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(ext["routed_experts"].as_str().unwrap())
        .unwrap();
    let flat: Vec<i64> = raw
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
        .collect();
    let (gen, rows) = solo(&f.model, &f.text, &ids, 4, greedy());
    let t = ids.len() + gen.len() - 1;
    assert_eq!(flat.len(), (t - start) * LAYERS * TOP_K, "slime's check");
    let want: Vec<i64> = rows[start * LAYERS * TOP_K..t * LAYERS * TOP_K]
        .iter()
        .map(|&x| x as i64)
        .collect();
    assert_eq!(flat, want);
    let w = base64::engine::general_purpose::STANDARD
        .decode(ext["routed_weights"].as_str().unwrap())
        .unwrap();
    assert_eq!(w.len(), flat.len() * 4);
}

#[test]
fn seeded_sampling_is_reproducible_and_stop_strings_cut_the_text() {
    let f = fixture();
    let body = json!({"prompt": "Sampling", "max_tokens": 16, "temperature": 0.9,
        "top_p": 0.95, "seed": 1234});
    let (_, a) = post(f.server.addr, "/v1/completions", &body);
    let (_, b) = post(f.server.addr, "/v1/completions", &body);
    assert_eq!(a["choices"][0]["text"], b["choices"][0]["text"]);
    let ids = f.text.encode("Sampling").unwrap();
    let p = SamplingParams {
        temperature: 0.9,
        top_p: 0.95,
        seed: 1234,
        top_k: 0,
        min_p: 0.0,
    };
    let (gen, _) = solo(&f.model, &f.text, &ids, 16, p);
    let text = f.text.decode(&gen).unwrap();
    assert_eq!(a["choices"][0]["text"], json!(text));
    // Qwen3's recommended form (top_k 20, min_p): the served tokens are the sampler's.
    let mut k = body.clone();
    k["top_k"] = json!(20);
    k["min_p"] = json!(0.05);
    k["return_token_ids"] = json!(true);
    let (status, v) = post(f.server.addr, "/v1/completions", &k);
    assert_eq!(status, 200, "{v}");
    let pk = SamplingParams {
        top_k: 20,
        min_p: 0.05,
        ..p
    };
    let (gen_k, _) = solo(&f.model, &f.text, &ids, 16, pk);
    assert_eq!(v["choices"][0]["token_ids"], json!(gen_k));
    // A stop string taken from the middle of that text ends it there.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let mut s = body.clone();
        s["stop"] = json!([stop]);
        let (_, c) = post(f.server.addr, "/v1/completions", &s);
        let cut = &text[..text.find(&stop).unwrap()];
        assert_eq!(c["choices"][0]["text"], json!(cut));
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        s["stream"] = json!(true);
        let (_, events) = post_stream(f.server.addr, "/v1/completions", &s, None);
        let streamed: String = events
            .iter()
            .filter(|e| *e != "[DONE]")
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(streamed, cut);
    }
}

/// One request of the concurrency runs: its body, and whether the client goes away.
fn mixed_request(i: usize, stream: bool) -> Value {
    let prompts = [
        "a",
        "Hello there, general",
        "The quick brown fox jumps over",
        "MoE routing replay in RL: rollout and training must agree",
    ];
    json!({"prompt": format!("{} #{i}", prompts[i % prompts.len()]), "max_tokens": 3 + (i * 5) % 17,
        "temperature": if i.is_multiple_of(3) { 0.7 } else { 0.0 }, "seed": i, "stream": stream,
        "return_routed_experts": i % 4 != 3})
}

/// The request's result: text and routed ids (streamed or not).
fn run(
    addr: std::net::SocketAddr,
    body: &Value,
    cancel: bool,
) -> Option<(String, Option<Vec<i64>>)> {
    if body["stream"] == json!(true) {
        let (status, events) = post_stream(addr, "/v1/completions", body, cancel.then_some(1));
        assert_eq!(status, 200);
        if cancel {
            return None;
        }
        let (mut text, mut ids, mut any) = (String::new(), Vec::new(), false);
        for e in events.iter().filter(|e| *e != "[DONE]") {
            let c = &serde_json::from_str::<Value>(e).unwrap()["choices"][0];
            text.push_str(c["text"].as_str().unwrap());
            if let Some(r) = c["routed_experts"].as_str() {
                any = true;
                ids.extend(decode_npy_b64(r).ints);
            }
        }
        Some((text, any.then_some(ids)))
    } else if cancel {
        // Send the request and go away without reading the answer.
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let b = body.to_string();
        use std::io::Write as _;
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}", b.len()).unwrap();
        thread::sleep(std::time::Duration::from_millis(5));
        None
    } else {
        let (status, v) = post(addr, "/v1/completions", body);
        assert_eq!(status, 200, "{v}");
        let c = &v["choices"][0];
        let ids = c["routed_experts"].as_str().map(|r| decode_npy_b64(r).ints);
        Some((c["text"].as_str().unwrap().to_owned(), ids))
    }
}

fn solo_of(f: &Fixture, body: &Value) -> (String, Option<Vec<i64>>) {
    let ids = f.text.encode(body["prompt"].as_str().unwrap()).unwrap();
    let p = SamplingParams {
        temperature: body["temperature"].as_f64().unwrap() as f32,
        top_p: 1.0,
        seed: body["seed"].as_u64().unwrap(),
        top_k: 0,
        min_p: 0.0,
    };
    let max = body["max_tokens"].as_u64().unwrap() as usize;
    let (gen, rows) = solo(&f.model, &f.text, &ids, max, p);
    let t = ids.len() + gen.len() - 1;
    let routed = (body["return_routed_experts"] == json!(true)).then(|| {
        rows[..t * LAYERS * TOP_K]
            .iter()
            .map(|&x| x as i64)
            .collect()
    });
    (f.text.decode(&gen).unwrap(), routed)
}

fn concurrent(n: usize) {
    let f = fixture();
    let addr = f.server.addr;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let body = mixed_request(i, i % 2 == 1);
            let cancel = n > 1 && i % 5 == 4;
            thread::spawn(move || (body.clone(), cancel, run(addr, &body, cancel)))
        })
        .collect();
    for h in handles {
        let (body, cancel, got) = h.join().unwrap();
        if cancel {
            continue;
        }
        let (text, routed) = got.unwrap();
        let (want_text, want_routed) = solo_of(f, &body);
        assert_eq!(text, want_text, "{body}");
        assert_eq!(routed, want_routed, "{body}");
    }
    f.server.wait_idle();
}

#[test]
fn concurrency_1_8_64_with_cancellations_equals_solo_runs() {
    for n in [1, 8, 64] {
        concurrent(n);
    }
    assert!(fixture().server.metric("generated_tokens_total") > 0.0);
}

#[test]
fn models_health_metrics() {
    let f = fixture();
    let (status, body) = get(f.server.addr, "/v1/models");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["data"][0]["id"], json!(f.server.model));
    assert_eq!(get(f.server.addr, "/health").0, 200);
    let (status, m) = get(f.server.addr, "/metrics");
    assert_eq!(status, 200);
    assert!(
        m.contains("# TYPE flashinfer_serve_queue_depth gauge"),
        "{m}"
    );
}

/// An answer (`(status, body)`) that must be `status` with an OpenAI error body
/// (`{"error": {"message", "type", "param", "code"}}`, a message); its `error` object.
fn api_error((got, text): (u16, String), status: u16, what: &str) -> Value {
    assert_eq!(got, status, "{what} -> {text}");
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some() && e.get("param").is_some(), "{v}");
    e.clone()
}

fn expect_error(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    status: u16,
    param: Option<&str>,
) {
    let what = String::from_utf8_lossy(body);
    let e = api_error(post_raw(addr, path, body), status, &what);
    if let Some(p) = param {
        assert_eq!(e["param"], json!(p), "{e}");
    }
}

/// Every bad request and its answer: `path | status | param (- for none) | body`.
const BAD: &str = r#"
c | 400 | - | {not json
c | 400 | - | [1, 2]
c | 400 | - | {"prompt": "hi", "max_tokens": "many"}
c | 400 | prompt | {"max_tokens": 4}
c | 400 | prompt | {"prompt": "", "max_tokens": 4}
c | 400 | max_tokens | {"prompt": "hi", "max_tokens": 0}
c | 400 | max_tokens | {"prompt": "hi", "max_tokens": -3}
c | 400 | max_tokens | {"prompt": "hi", "max_tokens": 100000}
c | 400 | prompt | {"prompt": "LONG", "max_tokens": 4}
c | 400 | prompt | {"prompt": [1, 99999], "max_tokens": 4}
c | 400 | prompt | {"prompt": ["a", "b"], "max_tokens": 4}
c | 400 | n | {"prompt": "hi", "n": 2}
c | 400 | temperature | {"prompt": "hi", "temperature": -1}
c | 400 | top_p | {"prompt": "hi", "top_p": 0}
c | 400 | stop | {"prompt": "hi", "stop": [""]}
c | 404 | model | {"prompt": "hi", "model": "gpt-4"}
c | 400 | routed_experts_format | {"prompt": "hi", "return_routed_experts": true, "routed_experts_format": "x"}
c | 400 | return_routed_weights | {"prompt": "hi", "return_routed_weights": true}
c | 400 | routed_experts_start_len | {"prompt": "hi", "return_routed_experts": true, "routed_experts_start_len": 50}
h | 400 | messages | {"messages": []}
h | 400 | - | {"messages": "hi"}
h | 400 | max_completion_tokens | {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}
h | 400 | messages | {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}
c | 400 | frobnicate | {"prompt": "hi", "frobnicate": 1}
c | 400 | top_k | {"prompt": "hi", "top_k": -2}
c | 400 | min_p | {"prompt": "hi", "min_p": 1.5}
c | 400 | - | {"prompt": "hi", "ignore_eos": 1}
c | 400 | stop_token_ids | {"prompt": "hi", "stop_token_ids": [99999]}
c | 400 | logprobs | {"prompt": "hi", "logprobs": 21}
c | 400 | logprobs | {"prompt": "hi", "logprobs": true}
c | 400 | top_logprobs | {"prompt": "hi", "logprobs": 2, "top_logprobs": 2}
h | 400 | logprobs | {"messages": [{"role": "user", "content": "hi"}], "logprobs": 3}
h | 400 | top_logprobs | {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}
h | 400 | top_logprobs | {"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 21}
c | 400 | presence_penalty | {"prompt": "hi", "presence_penalty": 0.5}
c | 400 | logit_bias | {"prompt": "hi", "logit_bias": {"7": 100}}
h | 400 | tools | {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}
h | 400 | response_format | {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}
"#;

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let f = fixture();
    let long = "x".repeat(600);
    for line in BAD.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.splitn(4, " | ").collect();
        let path = if parts[0] == "c" {
            "/v1/completions"
        } else {
            "/v1/chat/completions"
        };
        let status: u16 = parts[1].parse().unwrap();
        let param = (parts[2] != "-").then_some(parts[2]);
        let body = parts[3].replace("LONG", &long);
        expect_error(f.server.addr, path, body.as_bytes(), status, param);
    }
    // Fields that change nothing are taken: the ignorable ones, nulls, no-op values.
    let (status, v) = post(
        f.server.addr,
        "/v1/completions",
        &json!({"prompt": "still here", "max_tokens": 2, "user": "u", "logprobs": null,
            "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {}, "echo": false,
            "top_logprobs": null, "top_k": -1, "min_p": 0.0, "ignore_eos": false,
            "skip_special_tokens": true, "repetition_penalty": 1.0,
            "stream_options": {"include_usage": true}, "metadata": {"k": "v"}}),
    );
    assert_eq!(status, 200, "{v}");
}

/// The HTTP layer's own refusals are OpenAI JSON errors too: no such route (404), a wrong
/// method (405), a body over the limit (413, `http::body_limit`); and the stop-string bounds.
#[test]
fn the_http_layers_refusals_are_json_errors() {
    let f = fixture();
    let addr = f.server.addr;
    let code = |e: Value| e["code"].clone();
    let e = api_error(get(addr, "/v1/nothing"), 404, "GET /v1/nothing");
    assert_eq!(code(e), json!("not_found"));
    let e = api_error(get(addr, "/v1/completions"), 405, "GET /v1/completions");
    assert_eq!(code(e), json!("method_not_allowed"));
    let models: Value = serde_json::from_str(&get(addr, "/v1/models").1).unwrap();
    let max_model_len = models["data"][0]["max_model_len"].as_u64().unwrap() as usize;
    let limit = http::body_limit(max_model_len);
    let over = post_sized(addr, "/v1/completions", limit + 1);
    let e = api_error(over, 413, &format!("{} bytes", limit + 1));
    assert_eq!(code(e), json!("body_too_large"));
    let many: Vec<String> = (0..=MAX_STOP_STRINGS).map(|i| format!("s{i}")).collect();
    let long = "x".repeat(MAX_STOP_BYTES + 1);
    for stop in [json!(many), json!(long), json!(["a", long])] {
        let body = json!({"prompt": "hi", "max_tokens": 2, "stop": stop}).to_string();
        expect_error(addr, "/v1/completions", body.as_bytes(), 400, Some("stop"));
    }
    let most: Vec<String> = (0..MAX_STOP_STRINGS).map(|i| format!("s{i}")).collect();
    let body = json!({"prompt": "hi", "max_tokens": 2, "stop": most});
    let (status, v) = post(addr, "/v1/completions", &body);
    assert_eq!(status, 200, "{v}");
}

/// A client cannot hold a connection: a request head that never ends and an idle connection
/// are closed after the head timeout, a body that never ends is answered 408
/// (`body_timeout`) after the body timeout; the server goes on serving.
#[test]
fn slow_clients_are_cut_off() {
    use std::io::Write as _;
    use std::time::{Duration, Instant};
    let dir = tiny_checkpoint("slow", 4);
    let mut o: ServerOptions = Server::options(&dir);
    let second = Duration::from_secs(1);
    o.timeouts = Timeouts {
        head: second,
        body: second,
    };
    let s = Server::start(o);
    let closed_within = |c: std::net::TcpStream, what: &str| {
        let started = Instant::now();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut rest = Vec::new();
        let _ = std::io::Read::read_to_end(&mut &c, &mut rest);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(20), "{what}: open for {took:?}");
        String::from_utf8_lossy(&rest).into_owned()
    };
    let idle = std::net::TcpStream::connect(s.addr).unwrap();
    let answer = closed_within(idle, "an idle connection");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let mut head = std::net::TcpStream::connect(s.addr).unwrap();
    head.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let answer = closed_within(head, "an unfinished head");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let mut body = connect(s.addr, "POST", "/v1/completions", 100);
    body.write_all(br#"{"prompt": "#).unwrap();
    let e = api_error(read_answer(body), 408, "an unfinished body");
    assert_eq!(e["code"], json!("body_timeout"), "{e}");
    let (status, v) = post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{v}");
}

#[test]
fn routed_experts_need_the_server_flag() {
    let dir = tiny_checkpoint("noflag", 3);
    let mut o: ServerOptions = Server::options(&dir);
    o.capture = false;
    let s = Server::start(o);
    expect_error(
        s.addr,
        "/v1/completions",
        br#"{"prompt": "hi", "return_routed_experts": true}"#,
        400,
        Some("return_routed_experts"),
    );
    let (status, v) = post(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v["choices"][0].get("routed_experts").is_none());
}

/// Requests are admitted against the KV cache's memory: with room for one context's
/// positions, requests that each reserve a whole context run one at a time (the others wait
/// in the queue, none is refused or fails), the reservation never passes the budget and is
/// all freed at the end; a budget under one context is refused at start.
#[test]
fn requests_wait_for_kv_cache_memory() {
    let dir = tiny_checkpoint("kvbudget", 6);
    let mut o: ServerOptions = Server::options(&dir);
    let context = 48;
    o.max_model_len = Some(context);
    let (model, _, _) = load_model(&o).unwrap();
    let per_position = model.kv_bytes_per_position();
    drop(model);
    o.kv_cache_memory = Some(per_position * (context + context / 2));
    let s = Server::start(o.clone());
    let addr = s.addr;
    let handles: Vec<_> = (0..4)
        .map(|i| {
            thread::spawn(move || {
                // No max_tokens: each reserves the whole context.
                let body = json!({"prompt": format!("kv {i}"), "temperature": 0});
                post(addr, "/v1/completions", &body)
            })
        })
        .collect();
    let mut most = (0.0f64, 0.0f64);
    while !handles.iter().all(|h| h.is_finished()) {
        most.0 = most.0.max(s.metric("active_requests"));
        most.1 = most.1.max(s.metric("kv_reserved_positions"));
        thread::sleep(std::time::Duration::from_millis(2));
    }
    for h in handles {
        let (status, v) = h.join().unwrap();
        assert_eq!(status, 200, "{v}");
    }
    assert!(most.0 <= 1.0, "{} requests ran at once", most.0);
    assert!(most.1 <= context as f64, "{} positions reserved", most.1);
    s.wait_idle();
    assert_eq!(s.metric("kv_reserved_positions"), 0.0);
    drop(s);
    o.kv_cache_memory = Some(per_position * (context - 1));
    let refused = Server::try_start(o)
        .err()
        .expect("a budget under one context");
    assert!(refused.contains("--max-model-len"), "{refused}");
}

#[test]
fn a_full_queue_answers_429() {
    let dir = tiny_checkpoint("queue", 5);
    let mut o: ServerOptions = Server::options(&dir);
    o.max_running = 1;
    o.max_queue = 1;
    o.max_batch_tokens = 8;
    let s = Server::start(o);
    let addr = s.addr;
    let handles: Vec<_> = (0..12)
        .map(|i| {
            thread::spawn(move || {
                let body =
                    json!({"prompt": format!("queue {i}"), "max_tokens": 40, "temperature": 0});
                post_raw(addr, "/v1/completions", body.to_string().as_bytes())
            })
        })
        .collect();
    let results: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(
        !busy.is_empty(),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert!(results.iter().any(|r| r.0 == 200));
    for (_, body) in busy {
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
    s.wait_idle();
    assert!(s.metric("rejected_requests_total") > 0.0);
}

/// A client that sends a non-streaming request and goes away frees its slot: the request is
/// aborted (not run to its end) and its capture rows are dropped.
#[test]
fn a_vanished_non_streaming_client_is_cancelled() {
    let dir = tiny_checkpoint("vanish", 9);
    let s = Server::start(Server::options(&dir));
    let body = json!({"prompt": "go", "max_tokens": 500, "temperature": 0,
        "return_routed_experts": true})
    .to_string();
    {
        use std::io::Write as _;
        let mut c = std::net::TcpStream::connect(s.addr).unwrap();
        write!(c, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        thread::sleep(std::time::Duration::from_millis(100));
    }
    s.wait_idle();
    assert_eq!(s.metric("aborted_requests_total"), 1.0);
    assert_eq!(s.metric("finished_requests_total"), 0.0);
}

/// `/health` follows the engine: 200 while its scheduler runs, a 503 JSON error once it has
/// stopped (here by its own shutdown, the HTTP side still listening), and requests then get
/// 503 too; `failed_steps_total` is exported.
#[test]
fn health_follows_the_engine() {
    let dir = tiny_checkpoint("health", 4);
    let s = Server::start(Server::options(&dir));
    let addr = s.addr;
    assert_eq!(get(addr, "/health").0, 200);
    assert_eq!(s.metric("failed_steps_total"), 0.0);
    s.server.as_ref().unwrap().engine().shutdown();
    let e = api_error(get(addr, "/health"), 503, "GET /health");
    assert_eq!(e["code"], json!("engine_stopped"), "{e}");
    let body = json!({"prompt": "hi", "max_tokens": 2}).to_string();
    expect_error(addr, "/v1/completions", body.as_bytes(), 503, None);
}

/// Shutting down with a stream in flight: the shutdown returns, the client gets its stream
/// to the end (finished, or failed with "shutting down" after the grace period).
#[test]
fn graceful_shutdown_with_a_request_in_flight() {
    let dir = tiny_checkpoint("shutdown", 2);
    let mut o = Server::options(&dir);
    o.grace = std::time::Duration::from_millis(200);
    let mut s = Server::start(o);
    let addr = s.addr;
    let client = thread::spawn(move || {
        let body = json!({"prompt": "long", "max_tokens": 500, "stream": true, "temperature": 0});
        post_stream(addr, "/v1/completions", &body, None)
    });
    thread::sleep(std::time::Duration::from_millis(100));
    let server = s.server.take().unwrap();
    s.rt.block_on(server.shutdown()).unwrap();
    let (status, events) = client.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let after = std::net::TcpStream::connect(addr);
    assert!(after.is_err(), "no longer listening");
}
