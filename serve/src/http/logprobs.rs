//! Log-probabilities in the response: OpenAI's completion form and its chat form.

use serde_json::{json, Map, Value};

use crate::engine::TokenLogprob;
use crate::text::TextModel;

/// `choices[i].logprobs` of these tokens:
/// - completions: `{"tokens": [text], "token_logprobs": [lp], "top_logprobs": [{text: lp}]}`
///   (no `text_offset`: a token's text need not be where the stream's text has it, an
///   unfinished character being U+FFFD);
/// - chat: `{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
///   "bytes"}]}]}`.
///
/// A token is named by its text ([`TextModel::token_text`]), or `token_id:{id}` with `as_ids`
/// (vLLM's `return_tokens_as_token_ids`); `bytes` are its text's. A NaN log-probability is
/// `null`.
pub fn render(text: &TextModel, logprobs: &[TokenLogprob], chat: bool, as_ids: bool) -> Value {
    let text_of = |id: u32| {
        text.token_text(id)
            .unwrap_or_else(|_| "\u{FFFD}".to_owned())
    };
    // The text decoded once per token named (a chat entry needs it for its bytes too).
    let name = |id: u32, text: Option<&str>| match (as_ids, text) {
        (true, _) => format!("token_id:{id}"),
        (false, Some(t)) => t.to_owned(),
        (false, None) => text_of(id),
    };
    if chat {
        let entry = |id: u32, lp: f32| {
            let text = text_of(id);
            json!({"token": name(id, Some(&text)), "logprob": lp, "bytes": text.as_bytes()})
        };
        let content: Vec<Value> = logprobs
            .iter()
            .map(|l| {
                let mut e = entry(l.token, l.logprob);
                e["top_logprobs"] = l.top.iter().map(|&(id, lp)| entry(id, lp)).collect();
                e
            })
            .collect();
        json!({ "content": content })
    } else {
        let tokens: Vec<String> = logprobs.iter().map(|l| name(l.token, None)).collect();
        let token_logprobs: Vec<f32> = logprobs.iter().map(|l| l.logprob).collect();
        let top: Vec<Map<String, Value>> = logprobs
            .iter()
            .map(|l| {
                l.top
                    .iter()
                    .map(|&(id, lp)| (name(id, None), json!(lp)))
                    .collect()
            })
            .collect();
        json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top})
    }
}
