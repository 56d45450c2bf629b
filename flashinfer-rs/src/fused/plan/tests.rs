//! One test per rule of `plan`: a valid call per op, then each rule broken once, named by the
//! argument it must blame.
use super::*;
use crate::fused::types::{Activation, WeightLayout};
use crate::fused::MoeOptions;
use crate::fused::Tactic;
use crate::routing::{RoutingConfig, RoutingMethod};
use sys::fi_dtype;
use sys::MoeTensor as M;

const T: usize = 5;
const H: usize = 256;
const I: usize = 128;
const E: u32 = 8;
const K: u32 = 2;

fn g(tensor: MoeTensor, dtype: Dtype, len: usize) -> TensorSize {
    TensorSize { tensor, dtype, len }
}

fn logits() -> RoutingSrc {
    RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_BF16,
        len: T * E as usize,
        bias: None,
    }
}

fn desc(op: Op, layout: WeightLayout, given: Vec<TensorSize>) -> Desc {
    Desc {
        op,
        shape: Shape {
            num_tokens: T,
            hidden_size: H,
            intermediate_size: I,
        },
        routing: RoutingConfig::new(RoutingMethod::Renormalize, E, K),
        src: logits(),
        opts: MoeOptions::new(layout),
        replay: Some((T + 3, K as usize)),
        given,
    }
}

fn output() -> TensorSize {
    g(M::Output, fi_dtype::FI_DTYPE_BF16, T * H)
}

/// A valid call of every op and variant.
pub(crate) fn every_op() -> Vec<Desc> {
    vec![
        bf16_call(),
        fp8_per_tensor_call(),
        deepseek_call(),
        mxfp8_call(),
        nvfp4_call(),
        mxfp4_bf16_call(),
    ]
}

pub(crate) fn bf16_call() -> Desc {
    let el = E as usize;
    let bf = fi_dtype::FI_DTYPE_BF16;
    desc(
        Op::Bf16,
        WeightLayout::BlockMajorK,
        vec![
            g(M::HiddenStates, bf, T * H),
            g(M::Gemm1Weights, bf, el * 2 * I * H),
            g(M::Gemm2Weights, bf, el * H * I),
            output(),
        ],
    )
}

pub(crate) fn fp8_per_tensor_call() -> Desc {
    let el = E as usize;
    let (e4, f) = (fi_dtype::FI_DTYPE_E4M3, fi_dtype::FI_DTYPE_F32);
    desc(
        Op::Fp8PerTensor,
        WeightLayout::MajorK,
        vec![
            g(M::HiddenStates, e4, T * H),
            g(M::Gemm1Weights, e4, el * 2 * I * H),
            g(M::Gemm2Weights, e4, el * H * I),
            g(M::Output1ScalesScalar, f, el),
            g(M::Output1ScalesGateScalar, f, el),
            g(M::Output2ScalesScalar, f, el),
            output(),
        ],
    )
}

pub(crate) fn deepseek_call() -> Desc {
    let el = E as usize;
    let (e4, f) = (fi_dtype::FI_DTYPE_E4M3, fi_dtype::FI_DTYPE_F32);
    let mut d = desc(
        Op::Fp8BlockDeepSeek,
        WeightLayout::MajorK,
        vec![
            g(M::HiddenStates, e4, T * H),
            g(M::Gemm1Weights, e4, el * 2 * I * H),
            g(M::Gemm2Weights, e4, el * H * I),
            g(M::HiddenStatesScale, f, H / 128 * T),
            g(M::Gemm1WeightsScale, f, el * 2 * I / 128 * H / 128),
            g(M::Gemm2WeightsScale, f, el * H / 128 * I / 128),
            output(),
        ],
    );
    d.routing = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 4,
            topk_group: 2,
            routed_scaling_factor: 2.5,
        },
        E,
        K,
    );
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_F32,
        len: T * E as usize,
        bias: Some((fi_dtype::FI_DTYPE_BF16, E as usize)),
    };
    d
}

pub(crate) fn nvfp4_call() -> Desc {
    let el = E as usize;
    let (e4, f, u8_) = (
        fi_dtype::FI_DTYPE_E4M3,
        fi_dtype::FI_DTYPE_F32,
        fi_dtype::FI_DTYPE_U8,
    );
    desc(
        Op::Fp4 {
            act: Fp4Act::Nvfp4,
            weights: Fp4W::Nvfp4,
        },
        WeightLayout::MajorK,
        vec![
            g(M::HiddenStates, u8_, T * H / 2),
            g(M::HiddenStatesScale, e4, 128 * H / 16),
            g(M::Gemm1Weights, u8_, el * 2 * I * H / 2),
            g(M::Gemm1WeightsScale, e4, el * 2 * I * H / 16),
            g(M::Gemm2Weights, u8_, el * H * I / 2),
            g(M::Gemm2WeightsScale, e4, el * H * I / 16),
            g(M::Output1ScalesScalar, f, el),
            g(M::Output1ScalesGateScalar, f, el),
            g(M::Output2ScalesScalar, f, el),
            g(M::ExpertIndices, fi_dtype::FI_DTYPE_I32, T * K as usize),
            g(M::ExpertWeights, fi_dtype::FI_DTYPE_BF16, T * K as usize),
            output(),
        ],
    )
}

pub(crate) fn mxfp8_call() -> Desc {
    let el = E as usize;
    let (e4, u8_) = (fi_dtype::FI_DTYPE_E4M3, fi_dtype::FI_DTYPE_U8);
    desc(
        Op::Fp8BlockMx,
        WeightLayout::MajorK,
        vec![
            g(M::HiddenStates, e4, T * H),
            g(M::Gemm1Weights, e4, el * 2 * I * H),
            g(M::Gemm2Weights, e4, el * H * I),
            g(M::HiddenStatesScale, u8_, 128 * H / 32),
            g(M::Gemm1WeightsScale, u8_, el * 2 * I * H / 32),
            g(M::Gemm2WeightsScale, u8_, el * H * I / 32),
            output(),
        ],
    )
}

pub(crate) fn mxfp4_bf16_call() -> Desc {
    let el = E as usize;
    let (e4, u8_) = (fi_dtype::FI_DTYPE_E4M3, fi_dtype::FI_DTYPE_U8);
    desc(
        Op::Fp4 {
            act: Fp4Act::Bf16,
            weights: Fp4W::Mxfp4,
        },
        WeightLayout::MajorK,
        vec![
            g(M::HiddenStates, fi_dtype::FI_DTYPE_BF16, T * H),
            g(M::Gemm1Weights, u8_, el * 2 * I * H / 2),
            g(M::Gemm1WeightsScale, e4, el * 2 * I * H / 32),
            g(M::Gemm2Weights, u8_, el * H * I / 2),
            g(M::Gemm2WeightsScale, e4, el * H * I / 32),
            g(M::ExpertIndices, fi_dtype::FI_DTYPE_I32, T * K as usize),
            g(M::ExpertWeights, fi_dtype::FI_DTYPE_BF16, T * K as usize),
            output(),
        ],
    )
}

/// The argument `d` is refused for, with the rule's text.
fn refused(d: &Desc) -> (&'static str, String) {
    match plan(d) {
        Err(Error::InvalidArgument { arg, rule }) => (arg, rule),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn assert_refused(d: &Desc, arg: &str, needle: &str) {
    let (a, rule) = refused(d);
    assert_eq!(a, arg, "{rule}");
    assert!(rule.contains(needle), "`{rule}` lacks `{needle}`");
}

/// The given tensor errors name `label`.
fn by_label<'d>(d: &'d mut Desc, label: &str) -> &'d mut TensorSize {
    let op = d.op;
    d.given
        .iter_mut()
        .find(|x| op.label(x.tensor) == label)
        .unwrap()
}

fn set_len(d: &mut Desc, label: &str, len: usize) {
    by_label(d, label).len = len;
}

#[test]
fn valid_calls_of_every_op_plan_their_tensors() {
    for d in [
        bf16_call(),
        fp8_per_tensor_call(),
        deepseek_call(),
        nvfp4_call(),
    ] {
        let specs = plan(&d).unwrap_or_else(|e| panic!("{:?}: {e}", d.op));
        let shape = |n: M| {
            specs
                .iter()
                .find(|s| s.tensor == n)
                .map(|s| s.shape().to_vec())
        };
        assert_eq!(shape(M::RoutingLogits), Some(vec![T as i64, E as i64]));
        assert_eq!(
            shape(M::RoutingReplayOut),
            Some(vec![(T + 3) as i64, K as i64])
        );
        assert_eq!(shape(M::Output), Some(vec![T as i64, H as i64]));
    }
    let s = plan(&bf16_call()).unwrap();
    let w1 = s.iter().find(|s| s.tensor == M::Gemm1Weights).unwrap();
    assert_eq!(
        w1.shape(),
        vec![E as i64, (H / 64) as i64, (2 * I) as i64, 64]
    );
    let s = plan(&deepseek_call()).unwrap();
    let hs = s.iter().find(|s| s.tensor == M::HiddenStatesScale).unwrap();
    assert_eq!(hs.shape(), vec![(H / 128) as i64, T as i64]);
    assert!(s.iter().any(|s| s.tensor == M::RoutingBias));
}

#[test]
fn routing_rules_of_the_method_apply() {
    let mut d = bf16_call();
    d.routing.top_k = 40;
    assert_refused(&d, "top_k", "must not exceed num_experts");
}

#[test]
fn fused_routing_needs_experts_in_fours_and_more_than_top_k() {
    let mut d = bf16_call();
    d.routing = RoutingConfig::new(RoutingMethod::Renormalize, 6, 2);
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_BF16,
        len: T * 6,
        bias: None,
    };
    assert_refused(&d, "num_experts", "multiple of 4");
    let mut d = bf16_call();
    d.routing = RoutingConfig::new(RoutingMethod::Renormalize, 8, 8);
    assert_refused(&d, "top_k", "< num_experts");
}

#[test]
fn grouped_deepseek_top_k_is_capped_at_eight_up_to_384_experts() {
    let mut d = deepseek_call();
    d.routing = RoutingConfig::new(
        RoutingMethod::DeepSeekV3 {
            n_group: 8,
            topk_group: 4,
            routed_scaling_factor: 1.0,
        },
        256,
        10,
    );
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_F32,
        len: T * 256,
        bias: Some((fi_dtype::FI_DTYPE_F32, 256)),
    };
    assert_refused(&d, "top_k", "top_k <= 8");
}

#[test]
fn expert_parallel_range_must_lie_inside_the_experts() {
    let mut d = bf16_call();
    d.routing = d.routing.with_local_experts(6, 4);
    assert_refused(&d, "local_num_experts", "must lie inside");
    let mut d = bf16_call();
    d.routing = d.routing.with_local_experts(0, 0);
    assert_refused(&d, "local_num_experts", "> 0");
}

#[test]
fn weights_are_sized_for_the_local_experts_only() {
    let mut d = bf16_call();
    d.routing = d.routing.with_local_experts(4, 4);
    // Sized for 8 experts: more than enough for 4, accepted; the spec says 4.
    let s = plan(&d).unwrap();
    assert_eq!(
        s.iter()
            .find(|s| s.tensor == M::Gemm2Weights)
            .unwrap()
            .shape()[0],
        4
    );
}

#[test]
fn each_undersized_tensor_is_named() {
    for (d, name) in [
        (bf16_call(), "hidden_states"),
        (bf16_call(), "gemm1_weights"),
        (bf16_call(), "gemm2_weights"),
        (bf16_call(), "output"),
        (fp8_per_tensor_call(), "output1_scales_scalar"),
        (deepseek_call(), "hidden_states_scale"),
        (deepseek_call(), "gemm1_weights_scale"),
        (deepseek_call(), "gemm2_weights_scale"),
        (nvfp4_call(), "gemm1_weights_scale"),
        (nvfp4_call(), "topk_ids"),
    ] {
        let mut d = d;
        let len = by_label(&mut d, name).len;
        set_len(&mut d, name, len - 1);
        assert_refused(&d, name, "needs");
    }
}

#[test]
fn logits_and_bias_are_checked_like_routing() {
    let mut d = bf16_call();
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_BF16,
        len: T * E as usize - 1,
        bias: None,
    };
    assert_refused(&d, "logits", "need");
    let mut d = bf16_call();
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_I32,
        len: T * E as usize,
        bias: None,
    };
    assert_refused(&d, "logits", "f32 or bf16");
    let mut d = deepseek_call();
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_F32,
        len: T * E as usize,
        bias: None,
    };
    assert_refused(&d, "bias", "needs a bias");
    let mut d = deepseek_call();
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_F32,
        len: T * E as usize,
        bias: Some((fi_dtype::FI_DTYPE_F32, 7)),
    };
    assert_refused(&d, "bias", "num_experts");
    let mut d = bf16_call();
    d.src = RoutingSrc::Logits {
        dtype: fi_dtype::FI_DTYPE_BF16,
        len: T * E as usize,
        bias: Some((fi_dtype::FI_DTYPE_F32, E as usize)),
    };
    assert_refused(&d, "bias", "takes no bias");
}

#[test]
fn replay_needs_top_k_columns_and_a_row_per_token() {
    let mut d = bf16_call();
    d.replay = Some((T, K as usize + 1));
    assert_refused(&d, "replay", "columns");
    let mut d = bf16_call();
    d.replay = Some((T - 1, K as usize));
    assert_refused(&d, "replay", "rows");
}

#[test]
fn precomputed_routing_has_no_replay_and_only_some_ops_take_it() {
    let mut d = bf16_call();
    d.src = RoutingSrc::Packed {
        len: T * K as usize,
    };
    assert_refused(&d, "replay", "nothing to replay");
    d.replay = None;
    let s = plan(&d).unwrap();
    assert!(s.iter().any(|s| s.tensor == M::ExpertIndices));
    d.src = RoutingSrc::Packed {
        len: T * K as usize - 1,
    };
    assert_refused(&d, "packed_ids", "need");
    let mut d = fp8_per_tensor_call();
    d.replay = None;
    d.src = RoutingSrc::Packed {
        len: T * K as usize,
    };
    assert_refused(&d, "routing", "logits only");
}

#[test]
fn weight_layout_and_shuffling_per_op() {
    let mut d = bf16_call();
    d.opts.weight_layout = WeightLayout::MajorK;
    assert_refused(&d, "weight_layout", "BlockMajorK");
    let mut d = fp8_per_tensor_call();
    d.opts.use_shuffled_weight = false;
    assert_refused(&d, "use_shuffled_weight", "shuffled");
    let mut d = nvfp4_call();
    d.opts.weight_layout = WeightLayout::BlockMajorK;
    assert_refused(&d, "weight_layout", "MajorK");
    let mut d = deepseek_call();
    d.opts.weight_layout = WeightLayout::MajorMn;
    assert_refused(&d, "weight_layout", "MajorK or BlockMajorK");
}

#[test]
fn deepseek_fp8_is_swiglu_only_and_has_no_mx_extras() {
    let mut d = deepseek_call();
    d.opts.activation = Activation::Relu2;
    assert_refused(&d, "activation", "SwiGLU");
    let mut d = deepseek_call();
    d.given
        .push(g(M::Gemm1Alpha, fi_dtype::FI_DTYPE_F32, E as usize));
    assert_refused(&d, "gemm1_alpha", "MxFp8 only");
}

#[test]
fn sizes_must_suit_the_kernels() {
    let mut d = bf16_call();
    d.shape.intermediate_size = 96;
    assert_refused(&d, "intermediate_size", "multiple of 128");
    let mut d = deepseek_call();
    d.shape.hidden_size = 192;
    assert_refused(&d, "hidden_size", "multiple of 128");
    let mut d = bf16_call();
    d.shape.hidden_size = 0;
    assert_refused(&d, "shape", "> 0");
}

#[test]
fn swiglu_parameters_need_swiglu() {
    let mut d = bf16_call();
    d.opts.activation = Activation::Relu2;
    d.given
        .push(g(M::Gemm1Beta, fi_dtype::FI_DTYPE_F32, E as usize));
    assert_refused(&d, "activation", "SwiGLU");
}

#[test]
fn fp4_activation_and_weight_kinds_must_pair() {
    let mut d = nvfp4_call();
    d.op = Op::Fp4 {
        act: Fp4Act::Nvfp4,
        weights: Fp4W::Mxfp4,
    };
    assert_refused(&d, "hidden_states", "nvfp4 weights");
    let mut d = nvfp4_call();
    d.op = Op::Fp4 {
        act: Fp4Act::Bf16,
        weights: Fp4W::Nvfp4,
    };
    assert_refused(&d, "hidden_states", "mxfp4 weights");
}

#[test]
fn nvfp4_activation_scales_declare_the_exact_count_and_cover_the_interleaved_size() {
    let s = plan(&nvfp4_call()).unwrap();
    let spec = s.iter().find(|s| s.tensor == M::HiddenStatesScale).unwrap();
    assert_eq!(spec.shape(), vec![(T * H / 16) as i64]);
    let mut d = nvfp4_call();
    set_len(&mut d, "hidden_states_scale", T * H / 16);
    assert_refused(&d, "hidden_states_scale", "128x4");
}

#[test]
fn fp4_output_scales_are_required_with_nvfp4_activations() {
    let mut d = nvfp4_call();
    d.given.retain(|x| x.tensor != M::Output2ScalesScalar);
    assert_refused(&d, "output2_scales_scalar", "needs it");
}

#[test]
fn a_tensor_of_another_dtype_than_the_op_declares_is_refused() {
    let mut d = deepseek_call();
    by_label(&mut d, "hidden_states_scale").dtype = fi_dtype::FI_DTYPE_U8;
    assert_refused(&d, "hidden_states_scale", "is u8");
    let mut d = bf16_call();
    by_label(&mut d, "gemm1_weights").dtype = fi_dtype::FI_DTYPE_F16;
    assert_refused(&d, "gemm1_weights", "takes bf16");
}

#[test]
fn layer_and_batch_are_planned_apart_and_together_alike() {
    for d in every_op() {
        let (layer, batch) = d.split();
        let layer = FusedPlan::new(layer).unwrap();
        let batch = layer.batch_tensors(&batch).unwrap();
        assert!(layer.specs.iter().all(|s| d.op.in_layer(s.tensor)));
        assert!(batch.iter().all(|s| !d.op.in_layer(s.tensor)));
        assert_eq!(plan(&d).unwrap().len(), layer.specs.len() + batch.len());
    }
}

#[test]
fn a_tensor_the_op_does_not_take_is_refused() {
    let mut d = bf16_call();
    d.given
        .push(g(M::PerTokenScales, fi_dtype::FI_DTYPE_F32, T));
    assert_refused(&d, "per_token_scales", "not taken");
}

#[test]
fn tactic_tile_must_be_one_the_op_builds() {
    let mut d = bf16_call();
    d.opts.tactic = Some(Tactic {
        tile_n: 256,
        config: 0,
    });
    assert_refused(&d, "tactic", "not one of");
    let mut d = bf16_call();
    d.opts.tactic = Some(Tactic {
        tile_n: 64,
        config: -2,
    });
    assert_refused(&d, "tactic", ">= 0");
    let mut d = nvfp4_call();
    d.opts.tactic = Some(Tactic {
        tile_n: 256,
        config: 3,
    });
    plan(&d).unwrap();
}

#[test]
fn zero_tokens_plan_fine() {
    let mut d = bf16_call();
    d.shape.num_tokens = 0;
    plan(&d).unwrap();
}
