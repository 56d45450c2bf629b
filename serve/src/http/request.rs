//! OpenAI request bodies, parsed and checked into engine requests.

use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::engine::{CaptureOptions, GenRequest, SamplingParams};
use crate::text::ChatMessage;

/// `prompt`: a string, token ids, or a list of one of those.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<i64>),
    /// Texts (one supported).
    Texts(Vec<String>),
    /// Token id lists (one supported).
    IdLists(Vec<Vec<i64>>),
}

/// `stop`: a string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// Message content: a string or text parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ContentField {
    /// Text.
    Text(String),
    /// Parts (`{"type": "text", "text": ...}`).
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// Part type (`text` only).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its text.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message of a request.
#[derive(Debug, Deserialize)]
pub struct MessageIn {
    /// Role.
    pub role: String,
    /// Content (may be null for an assistant turn with tool calls; taken as empty).
    #[serde(default)]
    pub content: Option<ContentField>,
}

/// The fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    model: Option<String>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    seed: Option<i64>,
    stop: Option<StopField>,
    #[serde(default)]
    stream: bool,
    n: Option<i64>,
    #[serde(default)]
    return_token_ids: bool,
    #[serde(default)]
    return_tokens_as_token_ids: bool,
    stop_token_ids: Option<Vec<i64>>,
    #[serde(default)]
    ignore_eos: bool,
    #[serde(default)]
    return_routed_experts: bool,
    #[serde(default)]
    return_routed_weights: bool,
    routed_experts_format: Option<String>,
    routed_experts_start_len: Option<i64>,
    routed_experts_prompt_start: Option<i64>,
    /// Completions: an integer (top log-probabilities per token); chat: a boolean.
    logprobs: Option<serde_json::Value>,
    top_logprobs: Option<i64>,
    /// Every other field: checked by [`check_others`].
    #[serde(flatten)]
    others: serde_json::Map<String, serde_json::Value>,
}

/// Fields of OpenAI's API this server takes and does nothing with: none changes the tokens
/// generated or the answer's fields (usage is in every answer's last chunk already).
const IGNORED: [&str; 6] = [
    "user",
    "metadata",
    "store",
    "service_tier",
    "stream_options",
    "parallel_tool_calls",
];

/// Fields this server does not implement, each with the values that ask for nothing
/// (OpenAI's defaults, and vLLM's for its own sampling fields, which RL frameworks send
/// filled in): taken when given so, refused otherwise.
fn asks_nothing(field: &str, value: &serde_json::Value) -> bool {
    use serde_json::Value::{Array, Bool, Number, Object, String};
    match (field, value) {
        ("presence_penalty" | "frequency_penalty" | "min_tokens", Number(n)) => {
            n.as_f64() == Some(0.0)
        }
        ("repetition_penalty" | "best_of" | "length_penalty", Number(n)) => n.as_f64() == Some(1.0),
        ("echo" | "use_beam_search" | "include_stop_str_in_output", Bool(b)) => !b,
        ("skip_special_tokens" | "spaces_between_special_tokens", Bool(b)) => *b,
        ("logit_bias", Object(o)) => o.is_empty(),
        ("tools" | "functions", Array(a)) => a.is_empty(),
        ("tool_choice", String(s)) => s == "none" || s == "auto",
        ("suffix", String(s)) => s.is_empty(),
        ("response_format", Object(o)) => o.get("type").and_then(|t| t.as_str()) == Some("text"),
        _ => false,
    }
}

/// Refuses a field that would change the answer and that this server does not implement
/// (OpenAI refuses fields it does not know, where ignoring one would answer another question
/// than the one asked): null, an ignorable field, or a no-op value of one is taken.
fn check_others(c: &Common) -> Result<(), ApiError> {
    for (field, value) in &c.others {
        if value.is_null() || IGNORED.contains(&field.as_str()) || asks_nothing(field, value) {
            continue;
        }
        return Err(ApiError::bad(
            field,
            format!("{field} = {value} is not supported by this server"),
        ));
    }
    Ok(())
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionBody {
    prompt: Option<PromptField>,
    #[serde(flatten)]
    common: Common,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    messages: Option<Vec<MessageIn>>,
    #[serde(flatten)]
    common: Common,
}

/// The response form of routed experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutedFormat {
    /// `choices[i].routed_experts`: base64 `.npy` `[tokens, layers, top_k]`.
    Vllm,
    /// `choices[i].sglext.routed_experts`: base64 flat int32, with its start length.
    Sglang,
}

/// A checked request: what the engine runs and how to answer.
#[derive(Debug)]
pub struct Checked {
    /// For the engine.
    pub gen: GenRequest,
    /// Routed experts' response form, when asked.
    pub routed: Option<RoutedFormat>,
    /// Where the routed rows start.
    pub start_len: usize,
    /// vLLM's `return_token_ids`: `token_ids` (and `prompt_token_ids`) in the choices.
    pub token_ids: bool,
    /// vLLM's `return_tokens_as_token_ids`: log-probabilities name tokens `token_id:{id}`, not
    /// by their text (which several tokens can share: every byte of an unfinished character
    /// is U+FFFD, and a completion's `top_logprobs` is a map keyed by it).
    pub tokens_as_ids: bool,
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::malformed(format!("invalid JSON body: {e}")))
}

/// A completion request.
pub fn completion(state: &AppState, bytes: &[u8]) -> Result<Checked, ApiError> {
    let body: CompletionBody = parse(bytes)?;
    check_model(state, &body.common)?;
    check_others(&body.common)?;
    let prompt = match body.prompt {
        None => return Err(ApiError::bad("prompt", "prompt is required")),
        Some(PromptField::Text(t)) => tokenize(state, &t)?,
        Some(PromptField::Ids(ids)) => ids_of(state, "prompt", &ids)?,
        Some(PromptField::Texts(t)) if t.len() == 1 => tokenize(state, &t[0])?,
        Some(PromptField::IdLists(l)) if l.len() == 1 => ids_of(state, "prompt", &l[0])?,
        Some(_) => {
            return Err(ApiError::bad(
                "prompt",
                "only one prompt per request is supported",
            ))
        }
    };
    finish(state, body.common, prompt, false)
}

/// A chat request.
pub fn chat(state: &AppState, bytes: &[u8]) -> Result<Checked, ApiError> {
    let body: ChatBody = parse(bytes)?;
    check_model(state, &body.common)?;
    check_others(&body.common)?;
    let Some(messages) = body.messages.filter(|m| !m.is_empty()) else {
        return Err(ApiError::bad(
            "messages",
            "messages must be a non-empty list",
        ));
    };
    let messages = messages
        .into_iter()
        .map(|m| {
            let content = match m.content {
                None => String::new(),
                Some(ContentField::Text(t)) => t,
                Some(ContentField::Parts(parts)) => parts
                    .into_iter()
                    .map(|p| match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => Ok(t),
                        (kind, _) => Err(ApiError::bad(
                            "messages",
                            format!("content part of type {kind:?} is not supported (text only)"),
                        )),
                    })
                    .collect::<Result<Vec<_>, _>>()?
                    .join(""),
            };
            Ok(ChatMessage {
                role: m.role,
                content,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let text = state
        .text
        .render_chat(&messages)
        .map_err(|e| ApiError::bad("messages", format!("{e:#}")))?;
    let prompt = tokenize(state, &text)?;
    finish(state, body.common, prompt, true)
}

fn check_model(state: &AppState, c: &Common) -> Result<(), ApiError> {
    match &c.model {
        Some(m) if m != &state.model_name => Err(ApiError::unknown_model(m)),
        _ => Ok(()),
    }
}

fn tokenize(state: &AppState, text: &str) -> Result<Vec<u32>, ApiError> {
    state
        .text
        .encode(text)
        .map_err(|e| ApiError::bad("prompt", format!("{e:#}")))
}

/// Token ids given in request field `field`, each in the vocabulary.
fn ids_of(state: &AppState, field: &str, ids: &[i64]) -> Result<Vec<u32>, ApiError> {
    let vocab = state.vocab_size as i64;
    ids.iter()
        .map(|&i| {
            if (0..vocab).contains(&i) {
                Ok(i as u32)
            } else {
                Err(ApiError::bad(
                    field,
                    format!("token id {i} is outside the vocabulary [0, {vocab})"),
                ))
            }
        })
        .collect()
}

/// The sampling and length rules.
fn sampling(c: &Common) -> Result<SamplingParams, ApiError> {
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::bad("n", format!("n must be 1, got {n}")));
        }
    }
    let temperature = c.temperature.unwrap_or(1.0);
    if !temperature.is_finite() || !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad(
            "temperature",
            format!("temperature must be in [0, 2], got {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !top_p.is_finite() || top_p <= 0.0 || top_p > 1.0 {
        return Err(ApiError::bad(
            "top_p",
            format!("top_p must be in (0, 1], got {top_p}"),
        ));
    }
    let top_k = match c.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::bad(
                "top_k",
                format!("top_k must be -1 or 0 (all tokens) or positive, got {k}"),
            ))
        }
    };
    let min_p = c.min_p.unwrap_or(0.0);
    if !min_p.is_finite() || !(0.0..=1.0).contains(&min_p) {
        return Err(ApiError::bad(
            "min_p",
            format!("min_p must be in [0, 1], got {min_p}"),
        ));
    }
    let seed = match c.seed {
        Some(s) => s as u64,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        seed,
        top_k,
        min_p: min_p as f32,
    })
}

/// The most log-probabilities a token may ask for beside its own (OpenAI's bound).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// `logprobs` (and chat's `top_logprobs`): `None` when not asked, else how many of the most
/// likely tokens each generated token reports beside itself. Completions take an integer;
/// chat a boolean and `top_logprobs`, as OpenAI's two APIs do.
fn logprobs(c: &Common, chat: bool) -> Result<Option<usize>, ApiError> {
    use serde_json::Value::{Bool, Null, Number};
    let top = |field: &str, n: Option<i64>| match n {
        Some(n) if (0..=MAX_TOP_LOGPROBS as i64).contains(&n) => Ok(n as usize),
        _ => Err(ApiError::bad(
            field,
            format!("{field} must be an integer in [0, {MAX_TOP_LOGPROBS}]"),
        )),
    };
    match (chat, &c.logprobs, c.top_logprobs) {
        (true, None | Some(Null) | Some(Bool(false)), None | Some(0)) => Ok(None),
        (true, None | Some(Null) | Some(Bool(false)), Some(_)) => Err(ApiError::bad(
            "top_logprobs",
            "top_logprobs needs \"logprobs\": true",
        )),
        (true, Some(Bool(true)), n) => top("top_logprobs", Some(n.unwrap_or(0))).map(Some),
        (true, Some(_), _) => Err(ApiError::bad(
            "logprobs",
            "logprobs must be a boolean in a chat request (the count is top_logprobs)",
        )),
        (false, _, Some(_)) => Err(ApiError::bad(
            "top_logprobs",
            "a completion request takes the count as logprobs, not top_logprobs",
        )),
        (false, None | Some(Null) | Some(Bool(false)), None) => Ok(None),
        (false, Some(Number(n)), None) => top("logprobs", n.as_i64()).map(Some),
        (false, Some(_), None) => top("logprobs", None).map(Some),
    }
}

/// The most stop strings a request may give (OpenAI takes 4), and their longest: the scheduler
/// looks for every one in the text after every token, on the thread that runs every request.
pub const MAX_STOP_STRINGS: usize = 16;
/// See [`MAX_STOP_STRINGS`].
pub const MAX_STOP_BYTES: usize = 512;
/// The most `stop_token_ids` a request may give (each sampled token is looked up in them).
pub const MAX_STOP_TOKEN_IDS: usize = 64;

/// Length, stop and capture rules; the engine request.
fn finish(state: &AppState, c: Common, prompt: Vec<u32>, chat: bool) -> Result<Checked, ApiError> {
    let sampling = sampling(&c)?;
    let logprobs = logprobs(&c, chat)?;
    let max_len = state.max_model_len;
    if prompt.is_empty() {
        return Err(ApiError::bad("prompt", "the prompt is empty"));
    }
    if prompt.len() >= max_len {
        return Err(ApiError::bad(
            "prompt",
            format!(
                "the prompt has {} tokens; this model's maximum context length is {max_len} \
             (prompt + at least one generated token)",
                prompt.len()
            ),
        ));
    }
    let room = max_len - prompt.len();
    let (field, asked) = match (chat, c.max_completion_tokens, c.max_tokens) {
        (true, Some(m), _) => ("max_completion_tokens", Some(m)),
        (_, _, m) => ("max_tokens", m),
    };
    let max_tokens = match asked {
        None => room,
        Some(m) if m < 1 => {
            return Err(ApiError::bad(
                field,
                format!("{field} must be at least 1, got {m}"),
            ))
        }
        Some(m) if m as u64 > room as u64 => {
            return Err(ApiError::bad(
                field,
                format!(
            "{field} ({m}) + the prompt ({} tokens) exceed this model's maximum context length \
             ({max_len})", prompt.len()),
            ))
        }
        Some(m) => m as usize,
    };
    let (routed, start_len) = capture(state, &c, prompt.len())?;
    let stop = match c.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s],
        Some(StopField::Many(v)) => v,
    };
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::bad("stop", "stop strings must not be empty"));
    }
    if stop.len() > MAX_STOP_STRINGS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::bad(
            "stop",
            format!(
                "at most {MAX_STOP_STRINGS} stop strings of at most {MAX_STOP_BYTES} bytes each"
            ),
        ));
    }
    let stop_token_ids = c.stop_token_ids.as_deref().unwrap_or_default();
    if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::bad(
            "stop_token_ids",
            format!("at most {MAX_STOP_TOKEN_IDS} stop token ids"),
        ));
    }
    let stop_token_ids = ids_of(state, "stop_token_ids", stop_token_ids)?;
    let capture = routed.map(|_| CaptureOptions {
        start: start_len,
        weights: c.return_routed_weights,
    });
    Ok(Checked {
        gen: GenRequest {
            prompt,
            max_tokens,
            sampling,
            stop,
            stop_token_ids,
            ignore_eos: c.ignore_eos,
            stream: c.stream,
            capture,
            logprobs,
        },
        routed,
        start_len,
        token_ids: c.return_token_ids,
        tokens_as_ids: c.return_tokens_as_token_ids,
    })
}

/// The routed-experts fields.
fn capture(
    state: &AppState,
    c: &Common,
    prompt_len: usize,
) -> Result<(Option<RoutedFormat>, usize), ApiError> {
    let format = match c.routed_experts_format.as_deref() {
        None | Some("vllm") => RoutedFormat::Vllm,
        Some("sglang") => RoutedFormat::Sglang,
        Some(f) => {
            return Err(ApiError::bad(
                "routed_experts_format",
                format!("must be \"vllm\" or \"sglang\", got {f:?}"),
            ))
        }
    };
    if c.return_routed_weights && !c.return_routed_experts {
        return Err(ApiError::bad(
            "return_routed_weights",
            "return_routed_weights needs return_routed_experts",
        ));
    }
    if !c.return_routed_experts {
        return Ok((None, 0));
    }
    if !state.capture {
        return Err(ApiError::bad("return_routed_experts",
            "this server does not return routed experts: start it with --enable-return-routed-experts"));
    }
    let (field, start) = match (c.routed_experts_start_len, c.routed_experts_prompt_start) {
        (Some(s), _) => ("routed_experts_start_len", s),
        (None, Some(s)) => ("routed_experts_prompt_start", s),
        (None, None) => ("routed_experts_start_len", 0),
    };
    if start < 0 || start as u64 > prompt_len as u64 {
        return Err(ApiError::bad(
            field,
            format!("{field} must be in [0, {prompt_len}] (the prompt's length), got {start}"),
        ));
    }
    Ok((Some(format), start as usize))
}
