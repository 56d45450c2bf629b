//! The Rust mirror of the C ABI must lay out every struct exactly as the C compiler does.
extern crate std;

use super::*;
use core::mem::{align_of, size_of};

#[test]
fn struct_layouts_match_the_c_compiler() {
    // SAFETY: fi_abi_layout is plain integers; all-zero is a valid value.
    let mut c: fi_abi_layout = unsafe { core::mem::zeroed() };
    assert_eq!(
        unsafe { fi_get_abi_layout(&mut c) },
        fi_status::FI_STATUS_OK
    );
    // One row per struct: (name, Rust size/align, C size/align).
    macro_rules! rows {
        ($($ty:ident => $field:ident),* $(,)?) => {
            [$((
                stringify!($ty),
                (size_of::<$ty>(), align_of::<$ty>()),
                paste_layout!(c, $field),
            )),*]
        };
    }
    macro_rules! paste_layout {
        ($c:ident, routing_params) => {
            ($c.routing_params_size, $c.routing_params_align)
        };
        ($c:ident, routing_buffers) => {
            ($c.routing_buffers_size, $c.routing_buffers_align)
        };
        ($c:ident, routing_buffer_sizes) => {
            ($c.routing_buffer_sizes_size, $c.routing_buffer_sizes_align)
        };
        ($c:ident, build_info) => {
            ($c.build_info_size, $c.build_info_align)
        };
        ($c:ident, device_info) => {
            ($c.device_info_size, $c.device_info_align)
        };
        ($c:ident, moe_config_query) => {
            ($c.moe_config_query_size, $c.moe_config_query_align)
        };
        ($c:ident, tensor) => {
            ($c.tensor_size, $c.tensor_align)
        };
        ($c:ident, moe_args) => {
            ($c.moe_args_size, $c.moe_args_align)
        };
    }
    let rows = rows![
        fi_routing_params => routing_params,
        fi_routing_buffers => routing_buffers,
        fi_routing_buffer_sizes => routing_buffer_sizes,
        fi_build_info => build_info,
        fi_device_info => device_info,
        fi_moe_config_query => moe_config_query,
        fi_tensor => tensor,
        fi_moe_args => moe_args,
    ];
    for (name, rust, c_side) in rows {
        assert_eq!(rust, c_side, "{name}: Rust (size, align) vs C");
    }
}

#[test]
fn build_info_reports_the_pin_and_archs() {
    let mut info: fi_build_info = unsafe { core::mem::zeroed() };
    assert_eq!(
        unsafe { fi_get_build_info(&mut info) },
        fi_status::FI_STATUS_OK
    );
    assert_eq!(info.abi_version, FI_ABI_VERSION as i32);
    let version = unsafe { core::ffi::CStr::from_ptr(info.flashinfer_version) };
    assert_eq!(version.to_str().unwrap(), FLASHINFER_VERSION);
    let artifact = unsafe { core::ffi::CStr::from_ptr(info.bmm_artifact) };
    assert_eq!(artifact.to_str().unwrap(), BMM_ARTIFACT);
    assert_eq!(info.kernels_built != 0, KERNELS_BUILT);
    assert_eq!(info.has_sm90 != 0, BUILT_ARCHS.contains("sm_90a"));
    assert_eq!(info.has_sm100 != 0, BUILT_ARCHS.contains("sm_100a"));
}

#[test]
fn crate_version_carries_the_pin() {
    assert!(env!("CARGO_PKG_VERSION").ends_with(&std::format!("+flashinfer.{FLASHINFER_VERSION}")));
}

#[cfg(not(flashinfer_kernels))]
#[test]
fn entry_points_report_kernels_not_built() {
    let status = unsafe {
        fi_routing_run(
            core::ptr::null(),
            core::ptr::null(),
            core::ptr::null(),
            core::ptr::null(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
        )
    };
    assert_eq!(status, fi_status::FI_STATUS_KERNELS_NOT_BUILT);
    let msg = unsafe { core::ffi::CStr::from_ptr(fi_last_error_message()) };
    assert!(msg.to_str().unwrap().contains("without kernels"));
}
