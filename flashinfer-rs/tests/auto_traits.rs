//! `Send`/`Sync` of every public type, pinned: what a server may move to or share with other
//! threads. A change here is an API change; docs/hardening.md gives the reasons per type.
use std::marker::PhantomData;

use flashinfer_rs::capture::{
    Assembler, CaptureStore, RoutedExperts, SlotStore, StepBuffer, StepLayout, StepRows,
};
use flashinfer_rs::cutlass::{CutlassMoe, CutlassWeights};
use flashinfer_rs::fused::{
    Bf16, Bf16Inputs, Bf16Weights, CubinStore, Fp4BlockScale, Fp4BlockScaleInputs, FusedMoe,
    MoeBatch, MoeConfig, MoeOptions, RawTensor, Tactic, Unfinalized,
};
use flashinfer_rs::plan::{
    CutlassBatchSizes, CutlassPlan, FusedBatchSizes, FusedLayerSizes, FusedPlan, NoAuxTcBatchSizes,
    NoAuxTcPlan, RouteBatchSizes, RoutePlan, TopKBatchSizes, TopKPlan,
};
use flashinfer_rs::routing::{Logits, RouteInput, Router, RoutingBuffers, RoutingConfig};
use flashinfer_rs::{Error, ReplayView};

// Inherent methods win over trait methods when their bounds hold: a probe that answers
// whether a concrete type is Send / Sync.
struct Probe<T: ?Sized>(PhantomData<T>);
trait Fallback {
    fn send(&self) -> bool {
        false
    }
    fn sync(&self) -> bool {
        false
    }
}
impl<T: ?Sized> Fallback for Probe<T> {}
impl<T: ?Sized + Send> Probe<T> {
    #[allow(dead_code)]
    fn send(&self) -> bool {
        true
    }
}
struct SyncProbe<T: ?Sized>(PhantomData<T>);
impl<T: ?Sized> Fallback for SyncProbe<T> {}
impl<T: ?Sized + Sync> SyncProbe<T> {
    #[allow(dead_code)]
    fn sync(&self) -> bool {
        true
    }
}

macro_rules! traits {
    ($($t:ty),* $(,)?) => {
        vec![$((stringify!($t), Probe::<$t>(PhantomData).send(), SyncProbe::<$t>(PhantomData).sync())),*]
    };
}

#[test]
fn send_and_sync_are_what_the_types_allow() {
    let got = traits![
        RoutingConfig,
        Router,
        RoutingBuffers,
        RouteInput<'static>,
        Logits<'static>,
        ReplayView<'static>,
        CaptureStore,
        StepLayout,
        StepRows,
        Assembler,
        SlotStore,
        RoutedExperts,
        MoeOptions,
        MoeConfig,
        CutlassMoe,
        CutlassMoe<
            std::sync::Arc<flashinfer_rs::cudarc::driver::CudaSlice<flashinfer_rs::half::bf16>>,
        >,
        CutlassWeights,
        StepBuffer,
        FusedMoe<'static, Bf16>,
        FusedMoe<'static, Fp4BlockScale>,
        Bf16Weights<'static>,
        Bf16Inputs<'static>,
        Fp4BlockScaleInputs<'static>,
        MoeBatch<'static, Fp4BlockScale>,
        Tactic,
        CubinStore,
        RawTensor,
        Unfinalized,
        Error,
        RoutePlan,
        RouteBatchSizes,
        TopKPlan,
        TopKBatchSizes,
        NoAuxTcPlan,
        NoAuxTcBatchSizes,
        CutlassPlan,
        CutlassBatchSizes,
        FusedPlan,
        FusedLayerSizes,
        FusedBatchSizes,
    ];
    for (name, send, sync) in got {
        // Unfinalized owns upstream tensors through a raw handle whose release runs
        // cudaFreeAsync on the call's stream: kept on the thread that made the call.
        let want = name != "Unfinalized";
        assert_eq!((send, sync), (want, want), "{name}: (Send, Sync)");
    }
}
