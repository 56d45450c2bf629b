//! Upstream's separate DeepSeek-V3 router (`fused_topk_deepseek`, "NoAuxTc"), which FlashInfer
//! supports on Hopper. It is not the router the fused MoE runs; we expose it as a
//! cross-check of [`Router`](super::Router)'s DeepSeekV3 path and as a baseline for benchmarks.

use std::sync::Arc;

use cudarc::driver::{CudaStream, CudaViewMut};
use flashinfer_sys as sys;

use super::method::{check_bias, RoutingConfig, RoutingMethod};
use super::route::{Logits, LogitsDtype, RouteInput};
use crate::capture::LayerViews;
use crate::error::{covers, ensure, Error, Result, MAX_TOKENS};
use crate::launch::Launch;
use crate::replay::{check_replay, ReplayView};

/// The size rules of [`NoAuxTcRouter`]: built from a DeepSeekV3 config of a shape upstream's
/// NoAuxTc kernel has, then [`check_batch`](Self::check_batch) per call, on sizes (and the
/// logits' and bias' element types) alone. [`NoAuxTcRouter::new`] builds one and
/// [`NoAuxTcRouter::route`] checks every call with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoAuxTcPlan {
    cfg: RoutingConfig,
    n_group: u32,
    topk_group: u32,
    scale: f32,
}

/// The sizes of one [`NoAuxTcRouter::route`] call: what [`NoAuxTcPlan::check_batch`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoAuxTcBatchSizes {
    /// Rows to route.
    pub num_tokens: usize,
    /// The logits' element type and elements.
    pub logits: (LogitsDtype, usize),
    /// The bias' element type and elements (DeepSeekV3 needs one).
    pub bias: Option<(LogitsDtype, usize)>,
    /// Elements of the int32 ids output.
    pub ids: usize,
    /// Elements of the fp32 weights output.
    pub weights_f32: usize,
    /// `(rows, cols)` of the replay buffer, if given.
    pub replay: Option<(usize, usize)>,
}

impl NoAuxTcPlan {
    /// Validates `cfg` for NoAuxTc: [`RoutingConfig::validate`], then a DeepSeekV3 config of
    /// a shape its kernel has.
    pub fn new(cfg: RoutingConfig) -> Result<NoAuxTcPlan> {
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
        // One group of more than 128 experts: each of its warps leaves 8 - top_k of its 8
        // result slots in shared memory unwritten, and the final merge reads all 8 (upstream's
        // fix, e27b72752, was never merged; 0.7.4 still reads them).
        ensure(!(n == 1 && e > 128 && k < 8), "top_k", || {
            format!(
                "NoAuxTc over one group of {e} (> 128) experts needs top_k = 8 (with {k} it reads \
                 uninitialised shared memory)"
            )
        })?;
        Ok(NoAuxTcPlan {
            cfg,
            n_group: n,
            topk_group: if n == 1 { 1 } else { topk_group },
            scale: routed_scaling_factor,
        })
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        &self.cfg
    }

    /// Every per-call rule of [`NoAuxTcRouter::route`]: fp32 logits, an fp32 bias, the token
    /// count, the logits', bias' and outputs' sizes, the replay buffer.
    pub fn check_batch(&self, b: &NoAuxTcBatchSizes) -> Result<()> {
        let (t, e, k) = (
            b.num_tokens,
            self.cfg.num_experts as usize,
            self.cfg.top_k as usize,
        );
        let (LogitsDtype::F32, logits) = b.logits else {
            return Err(Error::invalid(
                "logits",
                "NoAuxTc writes its weights in the logits' dtype; this call takes fp32 logits",
            ));
        };
        let bias = match b.bias {
            Some((LogitsDtype::F32, len)) => len,
            Some((LogitsDtype::Bf16, _)) => {
                return Err(Error::invalid("bias", "NoAuxTc here takes an fp32 bias"))
            }
            None => return Err(Error::invalid("bias", "DeepSeekV3 routing needs a bias")),
        };
        ensure(t <= MAX_TOKENS, "num_tokens", || {
            format!("{t} exceeds the kernels' int32 token count")
        })?;
        ensure(covers(logits, t, e), "logits", || {
            format!("holds {logits}, needs {}", t as u128 * e as u128)
        })?;
        check_bias(&self.cfg, Some(bias))?;
        for (arg, len) in [("ids", b.ids), ("weights_f32", b.weights_f32)] {
            ensure(covers(len, t, k), arg, || {
                format!("holds {len}, needs {}", t as u128 * k as u128)
            })?;
        }
        match b.replay {
            Some((rows, cols)) => check_replay(rows, cols, t, k),
            None => Ok(()),
        }
    }
}

/// Upstream's NoAuxTc router, validated once for a DeepSeekV3 config (like [`Router`](super::Router)).
#[derive(Debug, Clone, Copy)]
pub struct NoAuxTcRouter {
    plan: NoAuxTcPlan,
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
        let plan = NoAuxTcPlan::new(cfg)?;
        tracing::debug!(target: "flashinfer_rs", config = ?cfg, "routing: NoAuxTcRouter built");
        Ok(NoAuxTcRouter { plan })
    }

    /// The validated config.
    pub fn config(&self) -> &RoutingConfig {
        self.plan.config()
    }

    /// Its size rules ([`NoAuxTcPlan::check_batch`] checks a call before it has buffers).
    pub fn plan(&self) -> &NoAuxTcPlan {
        &self.plan
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
            let n = input.num_tokens * self.plan.cfg.top_k as usize;
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
        let p = &self.plan;
        let (t, e, k) = (
            input.num_tokens,
            p.cfg.num_experts as usize,
            p.cfg.top_k as usize,
        );
        p.check_batch(&NoAuxTcBatchSizes {
            num_tokens: t,
            logits: (input.logits.logits_dtype(), input.logits.len()),
            bias: input.bias.as_ref().map(|b| (b.logits_dtype(), b.len())),
            ids: out.ids.len(),
            weights_f32: out.weights_f32.len(),
            replay: routing_replay_out.as_deref().map(|r| (r.rows(), r.cols())),
        })?;
        let (Logits::F32(logits), Some(Logits::F32(bias))) = (&input.logits, &input.bias) else {
            return Err(Error::Internal(
                "NoAuxTc: fp32 logits and bias, checked by its plan".into(),
            ));
        };
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
            n_group: p.n_group as i32,
            topk_group: p.topk_group as i32,
            routed_scaling_factor: p.scale,
            scores_dtype: sys::fi_dtype::FI_DTYPE_F32,
            bias_dtype: sys::fi_dtype::FI_DTYPE_F32,
            use_pdl: p.cfg.use_pdl as i32,
        };
        // SAFETY: the launch's guarantees (no replay buffer is null), and every buffer sized
        // for this call (`check_batch`).
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

    fn batch(t: usize) -> NoAuxTcBatchSizes {
        NoAuxTcBatchSizes {
            num_tokens: t,
            logits: (LogitsDtype::F32, t * 256),
            bias: Some((LogitsDtype::F32, 256)),
            ids: t * 8,
            weights_f32: t * 8,
            replay: Some((t + 1, 8)),
        }
    }

    fn refused_call(b: NoAuxTcBatchSizes) -> (&'static str, String) {
        match NoAuxTcPlan::new(ds(256, 8, 4, 8)).unwrap().check_batch(&b) {
            Err(Error::InvalidArgument { arg, rule }) => (arg, rule),
            other => panic!("{b:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_call_passes_with_or_without_replay_and_zero_tokens_too() {
        let plan = NoAuxTcPlan::new(ds(256, 8, 4, 8)).unwrap();
        for b in [
            batch(5),
            batch(0),
            NoAuxTcBatchSizes {
                replay: None,
                ..batch(3)
            },
        ] {
            plan.check_batch(&b)
                .unwrap_or_else(|e| panic!("{b:?}: {e}"));
        }
    }

    #[test]
    fn the_dtypes_come_first_then_each_size_is_named() {
        let bf16_logits = NoAuxTcBatchSizes {
            logits: (LogitsDtype::Bf16, 5 * 256),
            bias: None,
            ..batch(5)
        };
        let (arg, rule) = refused_call(bf16_logits);
        assert_eq!(arg, "logits");
        assert!(rule.contains("fp32 logits"), "{rule}");
        let (arg, rule) = refused_call(NoAuxTcBatchSizes {
            bias: Some((LogitsDtype::Bf16, 256)),
            ..batch(5)
        });
        assert_eq!(
            (arg, rule.as_str()),
            ("bias", "NoAuxTc here takes an fp32 bias")
        );
        let (arg, rule) = refused_call(NoAuxTcBatchSizes {
            bias: None,
            ..batch(5)
        });
        assert_eq!(
            (arg, rule.as_str()),
            ("bias", "DeepSeekV3 routing needs a bias")
        );
        let (arg, _) = refused_call(NoAuxTcBatchSizes {
            bias: Some((LogitsDtype::F32, 255)),
            ..batch(5)
        });
        assert_eq!(arg, "bias");
        let (arg, rule) = refused_call(NoAuxTcBatchSizes {
            logits: (LogitsDtype::F32, 5 * 256 - 1),
            ..batch(5)
        });
        assert_eq!((arg, rule.as_str()), ("logits", "holds 1279, needs 1280"));
        let (arg, rule) = refused_call(NoAuxTcBatchSizes {
            ids: 39,
            ..batch(5)
        });
        assert_eq!((arg, rule.as_str()), ("ids", "holds 39, needs 40"));
        let (arg, _) = refused_call(NoAuxTcBatchSizes {
            weights_f32: 0,
            ..batch(5)
        });
        assert_eq!(arg, "weights_f32");
        let (arg, rule) = refused_call(NoAuxTcBatchSizes {
            replay: Some((4, 8)),
            ..batch(5)
        });
        assert!(arg == "replay" && rule.contains("4 rows"), "{rule}");
        let (arg, _) = refused_call(NoAuxTcBatchSizes {
            replay: Some((5, 4)),
            ..batch(5)
        });
        assert_eq!(arg, "replay");
    }

    #[test]
    fn token_counts_past_int32_and_overflowing_products_are_refused() {
        let (arg, _) = refused_call(NoAuxTcBatchSizes {
            num_tokens: MAX_TOKENS + 1,
            ..batch(5)
        });
        assert_eq!(arg, "num_tokens");
        let (arg, _) = refused_call(NoAuxTcBatchSizes {
            num_tokens: MAX_TOKENS,
            ..batch(5)
        });
        assert_eq!(arg, "logits");
        let huge = NoAuxTcBatchSizes {
            num_tokens: MAX_TOKENS,
            logits: (LogitsDtype::F32, usize::MAX),
            ..batch(5)
        };
        assert_eq!(refused_call(huge).0, "ids");
    }
}
