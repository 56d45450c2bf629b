//! The Rust -> C -> upstream marshalling of every op, without a GPU: each planned call goes to
//! upstream's own entry point (`fi_moe_dry_run_without_device`), which unpacks every argument
//! and runs its host-side checks until its first device query. Reaching that query (its
//! "requires SM 10.x" check) shows the argument count, order, types and dtypes are what
//! upstream 0.6.13 expects.
use super::*;
use crate::ffi::check;
use crate::fused::plan::tests::every_op;
use crate::fused::plan::{plan, Desc};

fn layer_of(d: &Desc) -> FusedLayerSizes {
    d.split().0
}

#[test]
fn every_op_marshals_into_upstream_up_to_its_device_check() {
    if !crate::build_info().sm100 {
        eprintln!("skipped: the fused MoE is in the sm100 build only");
        return;
    }
    for desc in every_op() {
        let specs = plan(&desc).unwrap();
        let mut a = scalar_args(&layer_of(&desc), 0, false);
        // Distinct fake device addresses: upstream only stores them before its device check.
        for (n, s) in specs.iter().enumerate() {
            fill(
                &mut a,
                &specs,
                s.tensor,
                0x1000_0000 + 0x1000 * n as CUdeviceptr,
            )
            .unwrap();
        }
        // SAFETY: `a` is a complete fi_moe_args; no memory behind its pointers is touched.
        let got = check(unsafe { sys::fi_moe_dry_run_without_device(&a) });
        match got {
            Err(Error::Upstream(ref m)) if m.contains("requires SM 10.x") => {}
            Err(Error::InvalidArgument { ref rule, .. }) if rule.contains("no CUDA device") => {
                eprintln!("skipped: a CUDA device is present");
                return;
            }
            other => panic!("{:?}: {other:?}", desc.op),
        }
    }
}
