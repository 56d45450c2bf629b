//! The rules of one forward call on a checked layer: tokens, routing input, replay,
//! activations, output.

use flashinfer_sys as sys;
use sys::fi_dtype::{self, Type as Dtype};
use sys::MoeTensor as M;

use super::{round_up, Fp4Act, FusedPlan, Op, Planner, RoutingSrc, TensorSize, TensorSpec};
use crate::error::{covers, ensure, Result, MAX_TOKENS};
use crate::replay::check_replay;
use crate::routing::check_bias;

const F32: Dtype = fi_dtype::FI_DTYPE_F32;
const BF16: Dtype = fi_dtype::FI_DTYPE_BF16;
const E4M3: Dtype = fi_dtype::FI_DTYPE_E4M3;
const U8: Dtype = fi_dtype::FI_DTYPE_U8;
const I32: Dtype = fi_dtype::FI_DTYPE_I32;

/// The sizes of one [`FusedMoe::forward`](crate::fused::FusedMoe::forward) call: what
/// [`FusedPlan::check_batch`] checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedBatchSizes {
    /// Tokens in the call.
    pub num_tokens: usize,
    /// Where its routing comes from.
    pub src: RoutingSrc,
    /// `(rows, cols)` of the replay buffer, if given.
    pub replay: Option<(usize, usize)>,
    /// Its tensors other than logits, bias, packed ids and replay (output included).
    pub inputs: Vec<TensorSize>,
}

/// Checks a batch against its layer; returns the batch's tensors (the layer's are in
/// `layer.specs`).
pub(super) fn plan_batch(layer: &FusedPlan, b: &FusedBatchSizes) -> Result<Vec<TensorSpec>> {
    let d = &layer.desc;
    let t = b.num_tokens;
    ensure(t <= MAX_TOKENS, "num_tokens", || {
        format!("{t} exceeds the kernels' int32 token count")
    })?;
    let mut p = Planner::new(d.op, &b.inputs)?;
    routing_tensors(layer, b, &mut p)?;
    p.need(M::Output, BF16, &[t, d.hidden_size])?;
    match d.op {
        Op::Bf16 => {
            p.need(M::HiddenStates, BF16, &[t, d.hidden_size])?;
            lora_delta(layer, t, &mut p)?;
        }
        Op::Fp8PerTensor => fp8_per_tensor_inputs(layer, t, &mut p)?,
        Op::Fp8BlockDeepSeek | Op::Fp8BlockMx => fp8_block_inputs(layer, t, &mut p)?,
        Op::Fp4 { act, .. } => fp4_inputs(layer, t, act, &mut p)?,
    }
    p.finish()
}

/// Logits and bias, or packed ids; and the replay buffer.
fn routing_tensors(layer: &FusedPlan, b: &FusedBatchSizes, p: &mut Planner<'_>) -> Result<()> {
    let d = &layer.desc;
    let (e, k, _) = d.experts();
    let t = b.num_tokens;
    match b.src {
        RoutingSrc::Logits { dtype, len, bias } => {
            ensure(dtype == F32 || dtype == BF16, "logits", || {
                "must be f32 or bf16".into()
            })?;
            ensure(covers(len, t, e), "logits", || {
                format!(
                    "holds {len} elements, {t} tokens x {e} experts need {}",
                    t as u128 * e as u128
                )
            })?;
            p.push(M::RoutingLogits, dtype, &[t, e])?;
            check_bias(&d.routing, bias.map(|(_, n)| n))?;
            if let Some((bias_dtype, _)) = bias {
                p.push(M::RoutingBias, bias_dtype, &[e])?;
            }
        }
        RoutingSrc::Packed { len } => {
            ensure(
                matches!(d.op, Op::Bf16 | Op::Fp8BlockDeepSeek | Op::Fp8BlockMx),
                "routing",
                || {
                    format!(
                        "{} takes routing from logits only in flashinfer-rs",
                        d.op.name()
                    )
                },
            )?;
            ensure(b.replay.is_none(), "replay", || {
                "precomputed routing is already the caller's: there is nothing to replay".into()
            })?;
            ensure(covers(len, t, k), "packed_ids", || {
                format!(
                    "holds {len} elements, {t} tokens x top_k {k} need {}",
                    t as u128 * k as u128
                )
            })?;
            p.push(M::ExpertIndices, I32, &[t, k])?;
        }
    }
    if let Some((rows, cols)) = b.replay {
        check_replay(rows, cols, t, k)?;
        ensure(
            i64::try_from(rows).is_ok_and(|r| r.checked_mul(k as i64).is_some()),
            "replay",
            || format!("{rows} rows overflow a tensor size"),
        )?;
        p.push(M::RoutingReplayOut, fi_dtype::FI_DTYPE_I16, &[rows, k])?;
    }
    Ok(())
}

/// The bf16 and MxFp8 layers' optional LoRA delta on GEMM1's output, `[T, top_k, 2I]`.
fn lora_delta(layer: &FusedPlan, t: usize, p: &mut Planner<'_>) -> Result<()> {
    let d = &layer.desc;
    let (_, k, _) = d.experts();
    p.maybe(M::Gemm1Bias, BF16, &[t, k, 2 * d.intermediate_size])
}

fn fp8_per_tensor_inputs(layer: &FusedPlan, t: usize, p: &mut Planner<'_>) -> Result<()> {
    let h = layer.desc.hidden_size;
    let dtype = p.given(M::HiddenStates).map_or(E4M3, |g| g.dtype);
    ensure(
        [E4M3, BF16, fi_dtype::FI_DTYPE_F16].contains(&dtype),
        "hidden_states",
        || "must be e4m3, f16 or bf16".into(),
    )?;
    p.need(M::HiddenStates, dtype, &[t, h])
}

fn fp8_block_inputs(layer: &FusedPlan, t: usize, p: &mut Planner<'_>) -> Result<()> {
    let d = &layer.desc;
    let h = d.hidden_size;
    p.need(M::HiddenStates, E4M3, &[t, h])?;
    if d.op == Op::Fp8BlockDeepSeek {
        ensure(p.given(M::Gemm1Bias).is_none(), "gemm1_lora_delta", || {
            "the LoRA delta is MxFp8 only".into()
        })?;
        return p.need(M::HiddenStatesScale, F32, &[h / 128, t]);
    }
    p.need(
        M::HiddenStatesScale,
        U8,
        &[round_up(t, 128) * round_up(h / 32, 4)],
    )?;
    lora_delta(layer, t, p)
}

fn fp4_inputs(layer: &FusedPlan, t: usize, act: Fp4Act, p: &mut Planner<'_>) -> Result<()> {
    let d = &layer.desc;
    let h = d.hidden_size;
    let (_, k, _) = d.experts();
    match act {
        Fp4Act::Bf16 => p.need(M::HiddenStates, BF16, &[t, h])?,
        Fp4Act::E4m3 => p.need(M::HiddenStates, E4M3, &[t, h])?,
        // Upstream reads activation scales as e4m3 bytes and infers the block size from their
        // declared count, exactly T * H / block; its tests pass them 128x4-interleaved, which
        // the kernels may read up to the padded size: the buffer must hold that much.
        Fp4Act::MxE4m3 | Fp4Act::Nvfp4 => {
            let block = if act == Fp4Act::Nvfp4 { 16 } else { 32 };
            if act == Fp4Act::Nvfp4 {
                p.need(M::HiddenStates, U8, &[t, h / 2])?;
            } else {
                p.need(M::HiddenStates, E4M3, &[t, h])?;
            }
            let padded = round_up(t, 128) * round_up(h / block, 4);
            p.need_padded(M::HiddenStatesScale, E4M3, &[t * h / block], padded)?;
        }
    }
    p.maybe(M::PerTokenScales, F32, &[t])?;
    p.need(M::ExpertIndices, I32, &[t, k])?;
    p.need(M::ExpertWeights, BF16, &[t, k])
}
