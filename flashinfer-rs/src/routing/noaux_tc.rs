//! Upstream's separate DeepSeek-V3 router (`fused_topk_deepseek`, "NoAuxTc"), which FlashInfer
//! supports on Hopper. It is not the router the fused MoE runs; we expose it as a
//! cross-check of [`Router`](super::Router)'s DeepSeekV3 path and as a baseline for benchmarks.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut};
use flashinfer_sys as sys;

use super::method::{check_bias, RoutingConfig, RoutingMethod};
use super::route::{Logits, RouteInput};
use crate::capture::LayerViews;
use crate::error::{covers, ensure, Error, Result, MAX_TOKENS};
use crate::launch::Launch;
use crate::replay::{check_replay, ReplayView};

/// The configurations upstream's NoAuxTc kernel has (others it refuses at run time).
fn validate(cfg: &RoutingConfig) -> Result<(u32, u32, f32)> {
    cfg.validate()?;
    let RoutingMethod::DeepSeekV3 {
        n_group,
        topk_group,
        routed_scaling_factor,
    } = cfg.method
    else {
        return Err(Error::invalid("method", "NoAuxTc routes DeepSeekV3 only"));
    };
    let e = cfg.num_experts;
    let n = n_group.max(1);
    let single = n == 1 && e <= 384;
    let multi = n > 1 && e <= 256 && e / n <= 32 && (e / n) * topk_group <= 128;
    ensure(single || multi, "num_experts", || {
        format!("NoAuxTc supports one group of <= 384 experts or <= 256 experts in groups of <= 32 (kept groups <= 128 experts); got {e} experts in {n} groups")
    })?;
    // The kernel keeps its result in arrays of 8 (MaxNumTopExperts) and writes `top_k` of
    // them: a larger top_k writes past them.
    let k = cfg.top_k;
    ensure(k <= 8, "top_k", || {
        format!("NoAuxTc chooses at most 8 experts; got {k}")
    })?;
    // One group of more than 128 experts: each of its warps leaves 8 - top_k of its 8 result
    // slots in shared memory unwritten, and the final merge reads all 8 (upstream's fix,
    // e27b72752, was never merged; 0.7.4 still reads them).
    ensure(!(n == 1 && e > 128 && k < 8), "top_k", || {
        format!(
            "NoAuxTc over one group of {e} (> 128) experts needs top_k = 8 (with {k} it reads \
             uninitialised shared memory)"
        )
    })?;
    Ok((
        n,
        if n == 1 { 1 } else { topk_group },
        routed_scaling_factor,
    ))
}

/// Upstream's NoAuxTc router, validated once for a DeepSeekV3 config (like [`Router`](super::Router)).
#[derive(Debug, Clone, Copy)]
pub struct NoAuxTcRouter {
    cfg: RoutingConfig,
    n_group: u32,
    topk_group: u32,
    scale: f32,
}

/// Where a NoAuxTc call writes, each `[>= num_tokens, top_k]`: the fields of
/// [`TopKOutputs`](super::TopKOutputs) this kernel writes, both required.
#[derive(Debug)]
pub struct NoAuxTcOutputs<'a> {
    /// The chosen experts (int32 global ids, best first).
    pub ids: CudaViewMut<'a, i32>,
    /// Their weights in fp32.
    pub weights_f32: CudaViewMut<'a, f32>,
}

impl NoAuxTcRouter {
    /// Validates `cfg` for NoAuxTc: a DeepSeekV3 config of a shape its kernel has.
    pub fn new(cfg: RoutingConfig) -> Result<NoAuxTcRouter> {
        let (n_group, topk_group, scale) = validate(&cfg)?;
        tracing::debug!(target: "flashinfer_rs", config = ?cfg, "routing: NoAuxTcRouter built");
        Ok(NoAuxTcRouter {
            cfg,
            n_group,
            topk_group,
            scale,
        })
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// [`route`](Self::route) into one layer's capture-store views
    /// ([`CaptureStore::layer_views`](crate::capture::CaptureStore::layer_views)), the captured
    /// form every router and layer has: the ids into its replay view and, when the store
    /// captures weights, the fp32 weights copied into its weights view after the call (on
    /// `stream`, device to device).
    pub fn route_captured(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        out: &mut NoAuxTcOutputs<'_>,
        views: LayerViews<'_>,
    ) -> Result<()> {
        let LayerViews { mut ids, weights } = views;
        self.route(stream, input, out, Some(&mut ids))?;
        if let Some(mut weights) = weights {
            let n = input.num_tokens * self.cfg.top_k as usize;
            // Both hold >= n: `route` checked the outputs, the store's view is its max_tokens
            // rows, which `route` checked against the replay view of the same store.
            stream.memcpy_dtod(&out.weights_f32.slice(..n), &mut weights.slice_mut(..n))?;
        }
        Ok(())
    }

    /// Routes `input.num_tokens` rows (fp32 logits, fp32 bias) on `stream`, writing the
    /// weights and ids into `out` and, when given, the ids into `routing_replay_out` (the
    /// rules of [`Router::route`](super::Router::route): rows past `num_tokens` untouched).
    /// No allocation, no synchronisation.
    pub fn route(
        &self,
        stream: &Arc<CudaStream>,
        input: &RouteInput<'_>,
        out: &mut NoAuxTcOutputs<'_>,
        routing_replay_out: Option<&mut ReplayView<'_>>,
    ) -> Result<()> {
        let (t, e, k) = (
            input.num_tokens,
            self.cfg.num_experts as usize,
            self.cfg.top_k as usize,
        );
        let Logits::F32(logits) = &input.logits else {
            return Err(Error::invalid(
                "logits",
                "NoAuxTc writes its weights in the logits' dtype; this call takes fp32 logits",
            ));
        };
        let bias = match &input.bias {
            Some(Logits::F32(b)) => b,
            Some(Logits::Bf16(_)) => {
                return Err(Error::invalid("bias", "NoAuxTc here takes an fp32 bias"))
            }
            None => return Err(Error::invalid("bias", "DeepSeekV3 routing needs a bias")),
        };
        ensure(t <= MAX_TOKENS, "num_tokens", || {
            format!("{t} exceeds the kernels' int32 token count")
        })?;
        ensure(covers(logits.len(), t, e), "logits", || {
            format!("holds {}, needs {}", logits.len(), t as u128 * e as u128)
        })?;
        check_bias(&self.cfg, Some(bias.len()))?;
        for (arg, len) in [
            ("ids", out.ids.len()),
            ("weights_f32", out.weights_f32.len()),
        ] {
            ensure(covers(len, t, k), arg, || {
                format!("holds {len}, needs {}", t as u128 * k as u128)
            })?;
        }
        if let Some(r) = routing_replay_out.as_deref() {
            check_replay(r.rows(), r.cols(), t, k)?;
        }
        let mut l = Launch::new(stream);
        let scores = l.input("logits", logits);
        let bias = l.input("bias", bias);
        let weights = l.output("weights_f32", &mut out.weights_f32);
        let ids = l.output("ids", &mut out.ids);
        let replay = l.output_opt("replay", routing_replay_out);
        let params = sys::fi_noaux_tc_params {
            num_tokens: t as i32,
            num_experts: e as i32,
            top_k: k as i32,
            n_group: self.n_group as i32,
            topk_group: self.topk_group as i32,
            routed_scaling_factor: self.scale,
            scores_dtype: sys::fi_dtype::FI_DTYPE_F32,
            bias_dtype: sys::fi_dtype::FI_DTYPE_F32,
            use_pdl: self.cfg.use_pdl as i32,
        };
        // SAFETY: the launch's guarantees (no replay buffer is null), and every buffer sized
        // for this call (checked above).
        l.call(|p| unsafe {
            sys::fi_noaux_tc_run(
                &params,
                p.ro(scores),
                p.ro(bias),
                p.rw(weights),
                p.rw(ids),
                p.rw(replay),
                p.stream(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(e: u32, n_group: u32, topk_group: u32, k: u32) -> RoutingConfig {
        let method = RoutingMethod::DeepSeekV3 {
            n_group,
            topk_group,
            routed_scaling_factor: 2.5,
        };
        RoutingConfig::new(method, e, k)
    }

    fn refused_arg(cfg: RoutingConfig) -> &'static str {
        match NoAuxTcRouter::new(cfg) {
            Err(Error::InvalidArgument { arg, .. }) => arg,
            other => panic!("{cfg:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn only_the_shapes_its_kernel_routes_right_are_admitted() {
        // DeepSeek-V3, Kimi-K2 (one group of 384), GLM-4.5 (160), small grouped shapes.
        for cfg in [
            ds(256, 8, 4, 8),
            ds(384, 1, 1, 8),
            ds(160, 1, 1, 8),
            ds(128, 1, 1, 4),
            ds(64, 4, 2, 8),
            ds(256, 8, 4, 4),
        ] {
            NoAuxTcRouter::new(cfg).unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
        }
        // More than 8 experts per token: the kernel's result arrays hold 8.
        assert_eq!(refused_arg(ds(256, 1, 1, 16)), "top_k");
        assert_eq!(refused_arg(ds(128, 1, 1, 9)), "top_k");
        // One group of > 128 experts with top_k < 8: unwritten shared memory is read.
        assert_eq!(refused_arg(ds(256, 1, 1, 4)), "top_k");
        assert_eq!(refused_arg(ds(384, 1, 1, 7)), "top_k");
        // Shapes without a kernel, and other methods.
        assert_eq!(refused_arg(ds(512, 1, 1, 8)), "num_experts");
        let minimax = RoutingMethod::MiniMax2 {
            routed_scaling_factor: 1.0,
        };
        assert_eq!(refused_arg(RoutingConfig::new(minimax, 256, 8)), "method");
        // What RoutingConfig::validate refuses comes first.
        assert_eq!(refused_arg(ds(256, 8, 4, 0)), "top_k");
    }
}
