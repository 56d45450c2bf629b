//! The Rust mirror of the C ABI must lay out every struct exactly as the C compiler does.
extern crate std;

use super::*;
use core::mem::{align_of, size_of};

#[test]
fn struct_layouts_match_the_c_compiler() {
    let mut c = fi_abi_layout {
        routing_params_size: 0,
        routing_params_align: 0,
        routing_buffers_size: 0,
        routing_buffers_align: 0,
        routing_buffer_sizes_size: 0,
        routing_buffer_sizes_align: 0,
        build_info_size: 0,
        build_info_align: 0,
        device_info_size: 0,
        device_info_align: 0,
        moe_config_query_size: 0,
        moe_config_query_align: 0,
    };
    assert_eq!(
        unsafe { fi_get_abi_layout(&mut c) },
        fi_status::FI_STATUS_OK
    );
    let rust = [
        (
            "fi_routing_params",
            size_of::<fi_routing_params>(),
            align_of::<fi_routing_params>(),
        ),
        (
            "fi_routing_buffers",
            size_of::<fi_routing_buffers>(),
            align_of::<fi_routing_buffers>(),
        ),
        (
            "fi_routing_buffer_sizes",
            size_of::<fi_routing_buffer_sizes>(),
            align_of::<fi_routing_buffer_sizes>(),
        ),
        (
            "fi_build_info",
            size_of::<fi_build_info>(),
            align_of::<fi_build_info>(),
        ),
        (
            "fi_device_info",
            size_of::<fi_device_info>(),
            align_of::<fi_device_info>(),
        ),
    ];
    let c_side = [
        (c.routing_params_size, c.routing_params_align),
        (c.routing_buffers_size, c.routing_buffers_align),
        (c.routing_buffer_sizes_size, c.routing_buffer_sizes_align),
        (c.build_info_size, c.build_info_align),
        (c.device_info_size, c.device_info_align),
        (c.moe_config_query_size, c.moe_config_query_align),
    ];
    for ((name, size, align), (c_size, c_align)) in rust.iter().zip(c_side) {
        assert_eq!(
            (*size, *align),
            (c_size, c_align),
            "{name}: Rust (size, align) vs C"
        );
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
