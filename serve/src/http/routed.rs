//! Routed experts in the response: vLLM's and SGLang's forms.

use base64::Engine as _;
use flashinfer_rs::capture::RoutedExperts;
use serde_json::{json, Map, Value};

use super::request::RoutedFormat;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Adds the routed experts of `e` to a response choice `choice`:
/// - vLLM: `routed_experts` = base64 `.npy` `[tokens, layers, top_k]` (uint8 for <= 256
///   experts, uint16 above, int16 with -1 where a row is unknown), and with weights
///   `routed_weights` = base64 `.npy` float32, same shape;
/// - SGLang: `sglext: {routed_experts: base64 of flat little-endian int32,
///   routed_experts_start_len, [routed_weights: base64 flat float32]}`.
pub fn put(
    choice: &mut Map<String, Value>,
    e: &RoutedExperts,
    format: RoutedFormat,
    start_len: usize,
    weights: bool,
) {
    match format {
        RoutedFormat::Vllm => {
            choice.insert("routed_experts".into(), json!(e.to_vllm_base64()));
            if weights {
                if let Some(w) = e.to_weights_npy() {
                    choice.insert("routed_weights".into(), json!(b64(&w)));
                }
            }
        }
        RoutedFormat::Sglang => {
            let ids: Vec<u8> = e
                .ids()
                .iter()
                .flat_map(|&i| (i as i32).to_le_bytes())
                .collect();
            let mut ext = Map::new();
            ext.insert("routed_experts".into(), json!(b64(&ids)));
            ext.insert("routed_experts_start_len".into(), json!(start_len));
            if weights {
                if let Some((w, _)) = e.to_flat_weights_base64() {
                    ext.insert("routed_weights".into(), json!(w));
                }
            }
            choice.insert("sglext".into(), Value::Object(ext));
        }
    }
}
