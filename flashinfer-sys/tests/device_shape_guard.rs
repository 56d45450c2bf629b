//! The device-shape guard every routing and fused call runs (csrc/info.cpp): the first device
//! admitted fixes (SM version, SM count) for the process, because upstream sizes routing
//! launches from process-wide statics of the first device; a device that differs is refused.
//! No machine here has two GPU models, so the guard is driven with described devices. Its own
//! process (the guard is process-wide) that never routes.
#![cfg(flashinfer_kernels)]

use core::ffi::CStr;

use flashinfer_sys::{fi_check_device_shape, fi_device_info, fi_last_error_message, fi_status};

fn check(device: i32, sm: (i32, i32), sm_count: i32) -> Result<(), String> {
    let info = fi_device_info {
        device,
        sm_major: sm.0,
        sm_minor: sm.1,
        sm_count,
        ..Default::default()
    };
    match unsafe { fi_check_device_shape(&info) } {
        fi_status::FI_STATUS_OK => Ok(()),
        fi_status::FI_STATUS_UNSUPPORTED_ARCH => {
            Err(unsafe { CStr::from_ptr(fi_last_error_message()) }
                .to_string_lossy()
                .into_owned())
        }
        other => panic!("unexpected status {other:?}"),
    }
}

// One test: the first admitted shape is process-wide, and these steps depend on their order.
#[test]
fn a_device_unlike_the_first_one_admitted_is_refused() {
    assert_eq!(
        check(0, (9, 0), 132),
        Ok(()),
        "the first device fixes the shape"
    );
    assert_eq!(
        check(1, (9, 0), 132),
        Ok(()),
        "a second GPU of the same model"
    );
    let fewer_sms = check(2, (9, 0), 114).unwrap_err();
    assert!(
        fewer_sms.contains("device 2 (sm_90 with 114 SMs)")
            && fewer_sms.contains("the first device this process routed on (sm_90 with 132 SMs)"),
        "{fewer_sms}"
    );
    let other_arch = check(3, (10, 0), 148).unwrap_err();
    assert!(
        other_arch.contains("device 3 (sm_100 with 148 SMs)") && other_arch.contains("132 SMs"),
        "{other_arch}"
    );
    assert!(check(4, (9, 1), 132).is_err(), "minor version differs");
    assert_eq!(
        check(0, (9, 0), 132),
        Ok(()),
        "the first shape is still admitted"
    );
    let null = unsafe { fi_check_device_shape(core::ptr::null()) };
    assert_eq!(null, fi_status::FI_STATUS_INVALID_ARGUMENT);
}
