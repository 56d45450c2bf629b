//! Text in and out: the checkpoint's tokenizer (`tokenizer.json`), its chat template
//! (`tokenizer_config.json` or `chat_template.jinja`, rendered with minijinja) and its
//! end-of-sequence tokens (`generation_config.json`, `tokenizer_config.json`, `config.json`).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::model::config::ids_of;

/// The template used when the checkpoint has none.
pub const PLAIN_TEMPLATE: &str = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n\
    {% endfor %}{% if add_generation_prompt %}assistant: {% endif %}";

/// One chat message, as the template sees it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Tokenizer, chat template and stop tokens of a model.
pub struct TextModel {
    tokenizer: Tokenizer,
    template: String,
    has_own_template: bool,
    bos_token: Option<String>,
    eos_token: Option<String>,
    eos_ids: Vec<u32>,
}

/// A request's text as its tokens come (the incremental detokenization of TGI and vLLM):
/// each new token decodes a window of the last few tokens, the tokens before it giving the
/// context a decoder needs (a leading space, a byte pair), where decoding everything generated
/// after each token made a long request quadratic in its length on the scheduler's thread.
/// Text is taken once complete: a window that ends in U+FFFD (an unfinished UTF-8 character)
/// or adds nothing (a skipped special token) waits for the next token; [`TextStream::finish`]
/// takes what is left.
#[derive(Debug, Default)]
pub struct TextStream {
    text: String,
    /// Where the window starts: the tokens before `read` decoded as its context.
    prefix: usize,
    /// Tokens whose text is in `text`.
    read: usize,
    /// `(read, text.len())` before the last advance: the text of fewer tokens, for a caller
    /// that sends text only through a token before the last.
    before: (usize, usize),
}

impl TextStream {
    /// The text taken so far.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Takes the complete text of `ids` (every token so far, those already read first) and
    /// returns the byte offset in [`TextStream::as_str`] where the new text starts.
    pub fn push(&mut self, model: &TextModel, ids: &[u32]) -> Result<usize> {
        self.advance(model, ids, false)
    }

    /// At the request's end: takes all the text of `ids`, an unfinished character too (as
    /// U+FFFD, as a decode of them all would), and returns where the new text starts.
    pub fn finish(&mut self, model: &TextModel, ids: &[u32]) -> Result<usize> {
        self.advance(model, ids, true)
    }

    /// The text taken of the first `tokens` tokens: all of it where those are all read,
    /// else the text before the last advance (which read at most the tokens before the last
    /// one pushed), else none.
    pub fn through(&self, tokens: usize) -> &str {
        if self.read <= tokens {
            &self.text
        } else if self.before.0 <= tokens {
            &self.text[..self.before.1]
        } else {
            ""
        }
    }

    fn advance(&mut self, model: &TextModel, ids: &[u32], last: bool) -> Result<usize> {
        let start = self.text.len();
        let (Some(context), Some(all)) = (ids.get(self.prefix..self.read), ids.get(self.prefix..))
        else {
            return Err(anyhow!(
                "detokenizing: {} tokens given after {} read",
                ids.len(),
                self.read
            ));
        };
        if all.len() == context.len() {
            return Ok(start);
        }
        let context = model.decode(context)?;
        let window = model.decode(all)?;
        let mut at = context.len().min(window.len());
        while !window.is_char_boundary(at) {
            at += 1;
        }
        let new = &window[at..];
        if !last && (new.is_empty() || window.ends_with('\u{FFFD}')) {
            return Ok(start);
        }
        self.before = (self.read, start);
        self.text.push_str(new);
        (self.prefix, self.read) = (self.read, ids.len());
        Ok(start)
    }
}

/// A token given as a string or as `{"content": ...}` (tokenizer_config.json has both).
fn token_text(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)?;
    Ok(Some(
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?,
    ))
}

/// The chat template of `tokenizer_config.json` (a string, or a list of named templates of
/// which `default` is taken), else `chat_template.jinja`.
fn chat_template(dir: &Path, cfg: Option<&serde_json::Value>) -> Result<Option<String>> {
    match cfg.and_then(|c| c.get("chat_template")) {
        Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
        Some(serde_json::Value::Array(list)) => {
            let named = |want: &str| {
                list.iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(want))
            };
            if let Some(t) = named("default").or_else(|| list.first()) {
                return Ok(t
                    .get("template")
                    .and_then(|t| t.as_str())
                    .map(str::to_owned));
            }
        }
        _ => {}
    }
    let jinja = dir.join("chat_template.jinja");
    Ok(if jinja.exists() {
        Some(std::fs::read_to_string(jinja)?)
    } else {
        None
    })
}

impl TextModel {
    /// Loads `dir/tokenizer.json` and the files beside it; `config_eos` are the config's
    /// end-of-sequence ids.
    pub fn load(dir: &Path, config_eos: &[u32]) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let tokenizer =
            Tokenizer::from_file(&path).map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
        let cfg = read_json(&dir.join("tokenizer_config.json"))?;
        let gen = read_json(&dir.join("generation_config.json"))?;
        let template = chat_template(dir, cfg.as_ref())?;
        Ok(Self::new(
            tokenizer,
            cfg.as_ref(),
            gen.as_ref(),
            template,
            config_eos,
        ))
    }

    /// The byte-level tokenizer of [`byte_level_tokenizer_json`] with [`CHATML_TEMPLATE`] and
    /// `<|im_end|>` as EOS (models made from a config alone).
    pub fn byte_level(config_eos: &[u32]) -> Result<Self> {
        let json = byte_level_tokenizer_json().to_string();
        let tokenizer = Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| anyhow!("the byte-level tokenizer: {e}"))?;
        let cfg = byte_level_tokenizer_config();
        Ok(Self::new(
            tokenizer,
            Some(&cfg),
            None,
            Some(CHATML_TEMPLATE.to_owned()),
            config_eos,
        ))
    }

    fn new(
        tokenizer: Tokenizer,
        cfg: Option<&serde_json::Value>,
        gen: Option<&serde_json::Value>,
        template: Option<String>,
        config_eos: &[u32],
    ) -> Self {
        let bos_token = token_text(cfg.and_then(|c| c.get("bos_token")));
        let eos_token = token_text(cfg.and_then(|c| c.get("eos_token")));
        let mut eos_ids = ids_of(gen.and_then(|g| g.get("eos_token_id")));
        eos_ids.extend_from_slice(config_eos);
        if let Some(id) = eos_token.as_deref().and_then(|t| tokenizer.token_to_id(t)) {
            eos_ids.push(id);
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        TextModel {
            tokenizer,
            has_own_template: template.is_some(),
            template: template.unwrap_or_else(|| PLAIN_TEMPLATE.to_owned()),
            bos_token,
            eos_token,
            eos_ids,
        }
    }

    /// The same text model with `ids` as its end-of-sequence ids (none: generation stops only
    /// at `max_tokens`, as a benchmark wants).
    pub fn with_eos_ids(mut self, ids: Vec<u32>) -> Self {
        self.eos_ids = ids;
        self
    }

    /// End-of-sequence token ids.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether the checkpoint brought its own chat template.
    pub fn has_chat_template(&self) -> bool {
        self.has_own_template
    }

    /// Tokens in the vocabulary (with added tokens).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Token ids of `text` (with the tokenizer's own special-token rule, as transformers'
    /// default call).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow!("tokenizing: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// One token's text as log-probabilities name it: special tokens spelt out, a byte of an
    /// unfinished character as U+FFFD (vLLM's form).
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.tokenizer
            .decode(&[id], false)
            .map_err(|e| anyhow!("detokenizing: {e}"))
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow!("detokenizing: {e}"))
    }

    /// The prompt of a chat, through the chat template with `add_generation_prompt`.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String> {
        let mut env = minijinja::Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_template("chat", &self.template)
            .map_err(|e| anyhow!("the chat template does not parse: {e}"))?;
        let tmpl = env.get_template("chat").map_err(|e| anyhow!("{e}"))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos_token.clone().unwrap_or_default(),
            eos_token => self.eos_token.clone().unwrap_or_default(),
        })
        .map_err(|e| anyhow!("rendering the chat template: {e}"))
    }
}

/// GPT-2's byte-to-character map of byte-level BPE.
fn byte_chars() -> Vec<char> {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut extra = 0;
    (0u32..256)
        .map(|b| {
            if printable(b) {
                char::from_u32(b).unwrap_or('?')
            } else {
                extra += 1;
                char::from_u32(255 + extra).unwrap_or('?')
            }
        })
        .collect()
}

/// Special tokens of [`byte_level_tokenizer_json`], after the 256 byte tokens.
pub const BYTE_LEVEL_SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

/// A byte-level BPE `tokenizer.json` (GPT-2's byte alphabet, no merges: one token per byte,
/// ids 0..256 = bytes) with [`BYTE_LEVEL_SPECIALS`] at ids 256.., for models made from a
/// config alone (random weights) and for tests: 259 tokens.
pub fn byte_level_tokenizer_json() -> serde_json::Value {
    let vocab: serde_json::Map<String, serde_json::Value> = byte_chars()
        .into_iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = BYTE_LEVEL_SPECIALS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            serde_json::json!({"id": 256 + i, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
            "vocab": vocab, "merges": []}
    })
}

/// A ChatML template (Qwen's form without tools or thinking), for byte-level test models.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message.role }}\n\
    {{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// The `tokenizer_config.json` of the byte-level tokenizer.
pub fn byte_level_tokenizer_config() -> serde_json::Value {
    serde_json::json!({"chat_template": CHATML_TEMPLATE, "eos_token": "<|im_end|>", "bos_token": null})
}

/// Writes [`byte_level_tokenizer_json`] and a `tokenizer_config.json` with
/// [`CHATML_TEMPLATE`] and `<|im_end|>` as EOS into `dir`.
pub fn write_byte_level_tokenizer(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("tokenizer.json"),
        byte_level_tokenizer_json().to_string(),
    )?;
    std::fs::write(
        dir.join("tokenizer_config.json"),
        byte_level_tokenizer_config().to_string(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_round_trip_and_chatml() {
        let dir = std::env::temp_dir().join(format!("fi-serve-tok-{}", std::process::id()));
        write_byte_level_tokenizer(&dir).unwrap();
        let t = TextModel::load(&dir, &[]).unwrap();
        assert_eq!(t.vocab_size(), 259);
        let ids = t.encode("héllo wörld").unwrap();
        assert_eq!(ids.len(), "héllo wörld".len());
        assert_eq!(t.decode(&ids).unwrap(), "héllo wörld");
        assert_eq!(t.eos_ids(), &[258]);
        let msgs = [ChatMessage {
            role: "user".into(),
            content: "hi".into(),
        }];
        let p = t.render_chat(&msgs).unwrap();
        assert_eq!(p, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        let ids = t.encode(&p).unwrap();
        assert_eq!(ids[0], 257);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Pushes `ids` one at a time: the stream's text is a decode of all of them at every
    /// length (an unfinished character, ending the decode in U+FFFD, and a skipped
    /// `special` token waiting for the next), `through` a prefix of the decode of one fewer;
    /// at the end, with the last character unfinished, the whole decode.
    fn streams_as_it_decodes(t: &TextModel, ids: &[u32], special: u32) {
        let mut s = TextStream::default();
        for n in 1..=ids.len() {
            let before = s.as_str().len();
            let from = s.push(t, &ids[..n]).unwrap();
            assert_eq!(from, before);
            let whole = t.decode(&ids[..n]).unwrap();
            let complete = whole.trim_end_matches('\u{FFFD}');
            assert!(
                complete.starts_with(s.as_str()),
                "{n}: {:?} {whole:?}",
                s.as_str()
            );
            if !whole.ends_with('\u{FFFD}') && ids[n - 1] != special {
                assert_eq!(s.as_str(), whole, "{n}");
            }
            if n > 1 {
                let fewer = t.decode(&ids[..n - 1]).unwrap();
                assert!(fewer.starts_with(s.through(n - 1)), "{n}");
            }
        }
        s.finish(t, ids).unwrap();
        assert_eq!(s.as_str(), t.decode(ids).unwrap());
        assert!(s.as_str().ends_with('\u{FFFD}'));
        assert!(s.push(t, &ids[..1]).is_err());
    }

    /// Byte-level BPE (Qwen's, GPT-2's): two- and four-byte characters, a special token
    /// inside, the end cut inside a character.
    #[test]
    fn a_byte_level_text_stream_is_the_decode_of_its_tokens() {
        let dir = std::env::temp_dir().join(format!("fi-serve-stream-{}", std::process::id()));
        write_byte_level_tokenizer(&dir).unwrap();
        let t = TextModel::load(&dir, &[]).unwrap();
        let mut ids = t.encode("a é 😀 z").unwrap();
        ids.insert(3, 257);
        ids.extend("😀".as_bytes()[..2].iter().map(|&b| b as u32));
        streams_as_it_decodes(&t, &ids, 257);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// SentencePiece's decoding as Llama's and Mistral's `tokenizer.json` write it (`▁` for a
    /// space, byte fallback, the first space stripped): each window's first space is
    /// stripped, and its context's too, so the stream keeps the spaces between words; a
    /// three-byte character in byte tokens, a special token inside, the end cut inside a
    /// character.
    #[test]
    fn a_sentencepiece_text_stream_is_the_decode_of_its_tokens() {
        let dir = std::env::temp_dir().join(format!("fi-serve-stream-sp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let vocab = [
            "<unk>",
            "\u{2581}Hello",
            "\u{2581}world",
            "!",
            "<0xE2>",
            "<0x82>",
            "<0xAC>",
            "\u{2581}\u{e9}t\u{e9}",
            "</s>",
        ];
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "normalizer": null,
            "pre_tokenizer": null, "post_processor": null,
            "added_tokens": [{"id": 8, "content": "</s>", "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}],
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
        });
        std::fs::write(dir.join("tokenizer.json"), json.to_string()).unwrap();
        let t = TextModel::load(&dir, &[]).unwrap();
        let ids = [1, 2, 3, 4, 5, 6, 2, 8, 7, 1, 4, 5];
        assert_eq!(
            t.decode(&ids[..10]).unwrap(),
            "Hello world!\u{20ac} world \u{e9}t\u{e9} Hello"
        );
        streams_as_it_decodes(&t, &ids, 8);
        std::fs::remove_dir_all(&dir).ok();
    }
}
