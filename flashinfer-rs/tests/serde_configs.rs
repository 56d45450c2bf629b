//! The configs a server reads from its config files, and the exports it writes (feature
//! `serde`): JSON round trips, and the shape the JSON has.
#![cfg(feature = "serde")]

use flashinfer_rs::capture::{
    AssemblerConfig, CaptureConfig, ExportDtype, RoutedExperts, SlotStoreConfig, StepLayout,
};
use flashinfer_rs::cutlass::CutlassMoeConfig;
use flashinfer_rs::routing::{RoutingConfig, RoutingMethod};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) -> String {
    let json = serde_json::to_string(v).unwrap();
    let back: T = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, v, "{json}");
    json
}

#[test]
fn configs_round_trip_through_json() {
    let deepseek = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 2.5,
        },
        256,
        8,
    );
    let json = round_trip(&deepseek);
    assert!(
        json.contains(r#""DeepSeekV3":{"n_group":8,"topk_group":4"#),
        "{json}"
    );
    round_trip(&RoutingConfig::new(RoutingMethod::Renormalize, 128, 8).with_pdl(false));
    round_trip(&CutlassMoeConfig {
        routing: deepseek,
        hidden_size: 7168,
        intermediate_size: 2048,
        max_tokens: 4096,
    });
    round_trip(
        &CaptureConfig::new(48, 8192, 8)
            .with_readback_buffers(3)
            .with_layer_map(vec![None, Some(0)])
            .with_weights(true),
    );
    round_trip(&AssemblerConfig::new(48, 8, 128, 32_768));
    round_trip(&SlotStoreConfig::new(1 << 20, 48, 8, 128, 1 << 30));
    round_trip(&StepLayout::padded(5, 8).unwrap());
    round_trip(&ExportDtype::U8);
}

/// A config read from a file is checked where it is used: a bad one deserializes, then the
/// constructor refuses it with a typed error.
#[test]
fn a_bad_config_from_a_file_is_refused_by_its_check() {
    let cfg: CaptureConfig = serde_json::from_str(
        r#"{"moe_layers":48,"max_tokens":8192,"top_k":8,"readback_buffers":0,"layer_map":null,"capture_weights":false}"#,
    )
    .unwrap();
    assert!(cfg.check().is_err());
}

#[test]
fn exports_serialize_with_their_shape() {
    let experts = RoutedExperts::new(2, 1, 2, vec![3, 4, 5, -1], 8).unwrap();
    let json = serde_json::to_value(&experts).unwrap();
    assert_eq!(json["ids"], serde_json::json!([3, 4, 5, -1]));
    assert_eq!(json["tokens"], 2);
}
