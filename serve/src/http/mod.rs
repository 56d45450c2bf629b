//! The OpenAI-compatible HTTP server (axum).
//!
//! | route | |
//! |---|---|
//! | `POST /v1/completions` | text or token-id prompt; `stream: true` for SSE |
//! | `POST /v1/chat/completions` | messages through the checkpoint's chat template |
//! | `GET /v1/models` | the one served model |
//! | `GET /health` | 200 while the engine's scheduler runs, else 503 |
//! | `GET /metrics` | Prometheus text format |
//!
//! Every error is OpenAI's JSON shape ([`error::ApiError`]), the HTTP layer's own too: a body over
//! [`body_limit`] (413), a body slower than [`listen::Timeouts::body`] (408), an unreadable body
//! (400), an unknown route (404), a wrong method (405).
//! Requests are checked (parsed, rendered, tokenized) on the blocking pool, so a large prompt
//! never holds an async worker that `/health` and the streams need.

pub mod error;
pub mod listen;
pub mod logprobs;
pub mod request;
pub mod routed;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::engine::{Engine, Event, RequestStream, TokenLogprob};
use crate::text::TextModel;
use error::ApiError;
use request::Checked;

/// What every handler shares.
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// Tokenizer and chat template.
    pub text: Arc<TextModel>,
    /// The served model's name (`model` in requests).
    pub model_name: String,
    /// Prompt + generated tokens at most.
    pub max_model_len: usize,
    /// Token ids accepted in prompts.
    pub vocab_size: usize,
    /// `--enable-return-routed-experts`.
    pub capture: bool,
}

/// The largest request body taken (413 above it): 32 bytes per token of the context, at least
/// 2 MiB. A prompt of `max_model_len` tokens fits as text or as token ids (at most 11 bytes an id
/// with its separator), with room for JSON escapes and a chat's message framing; the bound keeps
/// what one request makes the server parse and tokenize in proportion to what it can run.
pub fn body_limit(max_model_len: usize) -> usize {
    max_model_len.saturating_mul(32).max(2 << 20)
}

/// The routes.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = body_limit(state.max_model_len);
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn not_found() -> Response {
    ApiError::http(StatusCode::NOT_FOUND, "not_found", "no such route").into_response()
}

async fn method_not_allowed() -> Response {
    let message = "this route does not take that method";
    ApiError::http(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        message,
    )
    .into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.model_name, "object": "model", "created": now(), "owned_by": "flashinfer-rs",
        "max_model_len": s.max_model_len,
    }]}))
}

async fn health(State(s): State<Arc<AppState>>) -> Response {
    if s.engine.is_running() {
        Json(json!({"status": "ok"})).into_response()
    } else {
        let message = "the engine's scheduler is not running";
        ApiError::http(StatusCode::SERVICE_UNAVAILABLE, "engine_stopped", message).into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.engine.metrics().render(),
    )
        .into_response()
}

/// Which endpoint answers: names and shapes differ between the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Completion,
    Chat,
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = check(&s, body, request::completion).await;
    respond(s, Kind::Completion, checked).await
}

async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let checked = check(&s, body, request::chat).await;
    respond(s, Kind::Chat, checked).await
}

/// A request's body through `rules` on the blocking pool (parsing, the chat template and the
/// tokenizer take CPU time in proportion to the body), or the body's own rejection.
async fn check(
    s: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    rules: fn(&AppState, &[u8]) -> Result<Checked, ApiError>,
) -> Result<Checked, ApiError> {
    let body = body.map_err(ApiError::from)?;
    let state = Arc::clone(s);
    tokio::task::spawn_blocking(move || rules(&state, &body))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("checking the request: {e}"))))
}

async fn respond(s: Arc<AppState>, kind: Kind, checked: Result<Checked, ApiError>) -> Response {
    let checked = match checked {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let stream = match s.engine.submit(checked.gen.clone()) {
        Ok(st) => st,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let meta = Meta {
        id: format!(
            "{}-{}",
            if kind == Kind::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            stream.id
        ),
        created: now(),
        model: s.model_name.clone(),
        kind,
        checked,
        text: Arc::clone(&s.text),
    };
    if meta.checked.gen.stream {
        sse(meta, stream).into_response()
    } else {
        whole(meta, stream).await
    }
}

/// One choice's content.
struct Part<'a> {
    text: &'a str,
    ids: &'a [u32],
    finish: Option<&'a str>,
    routed: Option<&'a flashinfer_rs::capture::RoutedExperts>,
    logprobs: Option<&'a [TokenLogprob]>,
    chunk: bool,
    first: bool,
}

/// What a response's every part repeats.
struct Meta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    checked: Checked,
    /// For the log-probabilities' token texts.
    text: Arc<TextModel>,
}

impl Meta {
    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Completion, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    /// One choice with `text`, `finish_reason` and the routed rows, shaped for the endpoint.
    fn choice(&self, part: Part<'_>) -> Value {
        let Part {
            text,
            ids,
            finish,
            routed,
            logprobs,
            chunk,
            first,
        } = part;
        let mut c = Map::new();
        c.insert("index".into(), json!(0));
        match (self.kind, chunk) {
            (Kind::Completion, _) => {
                c.insert("text".into(), json!(text));
            }
            (Kind::Chat, false) => {
                c.insert(
                    "message".into(),
                    json!({"role": "assistant", "content": text}),
                );
            }
            (Kind::Chat, true) => {
                let mut d = Map::new();
                if first {
                    d.insert("role".into(), json!("assistant"));
                }
                if !text.is_empty() || first {
                    d.insert("content".into(), json!(text));
                }
                c.insert("delta".into(), Value::Object(d));
            }
        }
        let logprobs = logprobs.map_or(Value::Null, |l| {
            let chat = self.kind == Kind::Chat;
            logprobs::render(&self.text, l, chat, self.checked.tokens_as_ids)
        });
        c.insert("logprobs".into(), logprobs);
        c.insert("finish_reason".into(), json!(finish));
        if self.checked.token_ids {
            c.insert("token_ids".into(), json!(ids));
            if first || !chunk {
                c.insert("prompt_token_ids".into(), json!(self.checked.gen.prompt));
            }
        }
        if let (Some(e), Some(format)) = (routed, self.checked.routed) {
            let weights = self.checked.gen.capture.is_some_and(|c| c.weights);
            routed::put(&mut c, e, format, self.checked.start_len, weights);
        }
        Value::Object(c)
    }

    fn envelope(&self, choice: Value, chunk: bool, usage: Option<(usize, usize)>) -> Value {
        let mut v = json!({
            "id": self.id, "object": self.object(chunk), "created": self.created,
            "model": self.model, "choices": [choice],
        });
        if let Some((p, c)) = usage {
            v["usage"] = json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c});
        }
        v
    }
}

/// An engine event as a response body: a delta's chunk (`false`: more follow) or the end's
/// choice with the usage (`true`); a failure's message as the error.
fn event_body(
    meta: &Meta,
    event: Option<Event>,
    chunk: bool,
    first: bool,
) -> Result<(Value, bool), String> {
    let (text, ids, routed, logprobs, finish, usage) = match event {
        Some(Event::Delta {
            ids,
            text,
            routed,
            logprobs,
        }) => (text, ids, routed, logprobs, None, None),
        Some(Event::Finished {
            reason,
            ids,
            text,
            routed,
            logprobs,
            prompt_tokens,
            completion_tokens,
        }) => (
            text,
            ids,
            routed,
            logprobs,
            Some(reason),
            Some((prompt_tokens, completion_tokens)),
        ),
        Some(Event::Failed(m)) => return Err(m),
        None => return Err("the engine stopped".into()),
    };
    let choice = meta.choice(Part {
        text: &text,
        ids: &ids,
        finish: finish.map(|r| r.as_str()),
        routed: routed.as_ref(),
        logprobs: logprobs.as_deref(),
        chunk,
        first,
    });
    Ok((meta.envelope(choice, chunk, usage), finish.is_some()))
}

/// A non-streaming answer: waits for the end (the engine sends no deltas to such a request;
/// any would be skipped).
async fn whole(meta: Meta, mut stream: RequestStream) -> Response {
    loop {
        match event_body(&meta, stream.next().await, false, false) {
            Ok((body, true)) => return Json(body).into_response(),
            Ok((_, false)) => continue,
            Err(m) => return ApiError::internal(m).into_response(),
        }
    }
}

enum SseState {
    Open(Box<Meta>, RequestStream, bool),
    Done,
    End,
}

/// A streaming answer: one SSE `data:` chunk per engine event, then `data: [DONE]`. The
/// response body owns the request's stream: a client that goes away drops it, which cancels
/// the request.
fn sse(
    meta: Meta,
    stream: RequestStream,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let start = SseState::Open(Box::new(meta), stream, true);
    let events = futures_util::stream::unfold(start, |state| async move {
        let (meta, mut stream, first) = match state {
            SseState::End => return None,
            SseState::Done => return Some((Ok(SseEvent::default().data("[DONE]")), SseState::End)),
            SseState::Open(meta, stream, first) => (meta, stream, first),
        };
        let (data, next) = match event_body(&meta, stream.next().await, true, first) {
            Ok((body, false)) => (body.to_string(), SseState::Open(meta, stream, false)),
            Ok((body, true)) => (body.to_string(), SseState::Done),
            Err(m) => (ApiError::internal(m).body().to_string(), SseState::Done),
        };
        Some((Ok(SseEvent::default().data(data)), next))
    });
    Sse::new(events)
}
