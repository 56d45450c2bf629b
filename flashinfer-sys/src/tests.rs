//! The Rust mirror of the C ABI must lay out every struct exactly as the C compiler does.

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
        ($c:ident, noaux_tc_params) => {
            ($c.noaux_tc_params_size, $c.noaux_tc_params_align)
        };
        ($c:ident, topk_params) => {
            ($c.topk_params_size, $c.topk_params_align)
        };
        ($c:ident, topk_buffers) => {
            ($c.topk_buffers_size, $c.topk_buffers_align)
        };
        ($c:ident, cutlass_moe_params) => {
            ($c.cutlass_moe_params_size, $c.cutlass_moe_params_align)
        };
        ($c:ident, cutlass_moe_buffers) => {
            ($c.cutlass_moe_buffers_size, $c.cutlass_moe_buffers_align)
        };
        ($c:ident, cutlass_moe_tactic) => {
            ($c.cutlass_moe_tactic_size, $c.cutlass_moe_tactic_align)
        };
        ($c:ident, cutlass_moe_kernels) => {
            ($c.cutlass_moe_kernels_size, $c.cutlass_moe_kernels_align)
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
        fi_noaux_tc_params => noaux_tc_params,
        fi_topk_params => topk_params,
        fi_topk_buffers => topk_buffers,
        fi_cutlass_moe_params => cutlass_moe_params,
        fi_cutlass_moe_buffers => cutlass_moe_buffers,
        fi_cutlass_moe_tactic => cutlass_moe_tactic,
        fi_cutlass_moe_kernels => cutlass_moe_kernels,
    ];
    for (name, rust, c_side) in rows {
        assert_eq!(rust, c_side, "{name}: Rust (size, align) vs C");
    }
}

#[test]
fn moe_tensor_enum_finds_the_fields_the_c_list_names() {
    // SAFETY: as above.
    let mut c: fi_abi_layout = unsafe { core::mem::zeroed() };
    assert_eq!(
        unsafe { fi_get_abi_layout(&mut c) },
        fi_status::FI_STATUS_OK
    );
    assert_eq!(c.moe_tensor_count, MoeTensor::ALL.len());
    // SAFETY: plain data, as above.
    let args: fi_moe_args = unsafe { core::mem::zeroed() };
    let base = &args as *const fi_moe_args as usize;
    for (t, &c_offset) in MoeTensor::ALL.iter().zip(&c.moe_tensor_offsets) {
        let offset = t.field(&args) as *const fi_tensor as usize - base;
        assert_eq!(offset, c_offset, "{}: Rust vs C offset", t.name());
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
    let targets = unsafe { core::ffi::CStr::from_ptr(info.targets) }
        .to_str()
        .unwrap();
    if PREBUILT {
        // The library may hold more than this build's features ask for, never less.
        for t in BUILT_ARCHS.split(',').filter(|t| !t.is_empty()) {
            assert!(
                targets.split(',').any(|x| x == t),
                "{t} missing from {targets}"
            );
        }
    } else {
        assert_eq!(targets, BUILT_ARCHS, "build info lists what build.rs built");
    }
    assert_eq!(info.has_sm90 != 0, targets.contains("sm_90a"));
    assert_eq!(info.has_sm100 != 0, targets.contains("sm_100f"));
    let crate_version = unsafe { core::ffi::CStr::from_ptr(info.crate_version) };
    assert_eq!(crate_version.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
}

/// The gate admits exactly the chips this build has machine code for: Hopper sm_90 with
/// `sm90`; Blackwell B200/GB200 (10.0) and B300/GB300 (10.3) with `sm100`, for routing and the
/// fused MoE alike (routing and the fused MoE's own kernels are built for the sm_100 family
/// target, and the pinned GEMM cubins are sm100f and sm103a). Nothing else: no sm_80, no
/// sm_89, no other 10.x, no consumer Blackwell (12.x). Only the gate can be tested here; no
/// Blackwell chip has run these kernels.
#[cfg(flashinfer_kernels)]
#[test]
fn the_arch_gate_admits_exactly_what_is_built() {
    let mut info: fi_build_info = unsafe { core::mem::zeroed() };
    assert_eq!(
        unsafe { fi_get_build_info(&mut info) },
        fi_status::FI_STATUS_OK
    );
    // What the library holds (this build's own kernels, or a prebuilt library's).
    let built = unsafe { core::ffi::CStr::from_ptr(info.targets) }
        .to_str()
        .unwrap();
    let hopper = built.contains("sm_90a");
    let blackwell = built.contains("sm_100f");
    // One target per generation: the family target covers both Blackwell chips.
    assert!(
        !built.contains("sm_100a") && !built.contains("sm_103a"),
        "{built}"
    );
    for (major, minor, routing, fused) in [
        (8, 0, false, false),
        (8, 9, false, false),
        (9, 0, hopper, false),
        (10, 0, blackwell, blackwell),
        (10, 1, false, false),
        (10, 3, blackwell, blackwell),
        (11, 0, false, false),
        (12, 0, false, false),
        (12, 1, false, false),
    ] {
        let mut d = fi_device_info {
            sm_major: major,
            sm_minor: minor,
            ..Default::default()
        };
        assert_eq!(unsafe { fi_arch_gate(&mut d) }, fi_status::FI_STATUS_OK);
        assert_eq!(
            (d.routing_supported != 0, d.fused_supported != 0),
            (routing, fused),
            "sm_{major}{minor}"
        );
    }
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
    let null = core::ptr::null_mut();
    let status =
        unsafe { fi_quantize_fp8_blocks(null, 1, 128, 128, null, null.cast(), null.cast(), null) };
    assert_eq!(status, fi_status::FI_STATUS_KERNELS_NOT_BUILT);
    let status =
        unsafe { fi_quantize_fp8_per_expert(null, 1, 8, null, null.cast(), null.cast(), null) };
    assert_eq!(status, fi_status::FI_STATUS_KERNELS_NOT_BUILT);
}

/// `fi_quantize_fp8_blocks` and `fi_quantize_fp8_per_expert` check their arguments before
/// they enqueue anything, so their refusals are testable without a GPU (the pointers below are
/// never dereferenced): each answers FI_STATUS_INVALID_ARGUMENT with a message naming the rule.
#[cfg(flashinfer_kernels)]
#[test]
fn weight_quantisers_refuse_bad_arguments_before_any_launch() {
    // Aligned, never dereferenced: every call below is refused first.
    let p = 4096usize as *mut core::ffi::c_void;
    let odd = 4097usize as *mut core::ffi::c_void;
    let null = core::ptr::null_mut();
    let call = |w: *mut core::ffi::c_void, experts: i64, rows: i64, cols: i64| {
        let status =
            unsafe { fi_quantize_fp8_blocks(w, experts, rows, cols, p, p.cast(), p.cast(), null) };
        let msg = unsafe { core::ffi::CStr::from_ptr(fi_last_error_message()) };
        (status, msg.to_string_lossy().into_owned())
    };
    for (w, experts, rows, cols, rule) in [
        (null, 1, 128, 128, "must not be NULL"),
        (odd, 1, 128, 128, "16-byte aligned"),
        (p, 0, 128, 128, "must be positive"),
        (p, 1, -128, 128, "must be positive"),
        (p, 1, 192, 128, "multiples of 128"),
        (p, 1, 128, 100, "multiples of 128"),
        (p, 1 << 20, 128 << 10, 128 << 10, "at most 2^31 - 1"),
        (p, 1, 128 << 24, 128 << 24, "at most 2^31 - 1"),
    ] {
        let (status, msg) = call(w, experts, rows, cols);
        assert_eq!(
            status,
            fi_status::FI_STATUS_INVALID_ARGUMENT,
            "{rule}: {msg}"
        );
        assert!(msg.contains(rule), "{rule}: {msg}");
    }
    for (w, experts, per_expert, rule) in [
        (null, 1, 8, "must not be NULL"),
        (odd, 1, 8, "16-byte aligned"),
        (p, 0, 8, "must be positive"),
        (p, 1, 0, "must be positive"),
        (p, 1, 12, "multiple of 8"),
        (p, 65536, 8, "at most 65535"),
        (p, 65535, i64::MAX / 8 * 8, "fit in int64"),
    ] {
        let status = unsafe {
            fi_quantize_fp8_per_expert(w, experts, per_expert, p, p.cast(), p.cast(), null)
        };
        let msg = unsafe { core::ffi::CStr::from_ptr(fi_last_error_message()) };
        let msg = msg.to_string_lossy();
        assert_eq!(
            status,
            fi_status::FI_STATUS_INVALID_ARGUMENT,
            "{rule}: {msg}"
        );
        assert!(msg.contains(rule), "{rule}: {msg}");
    }
}

/// The fused MoE's scratch allocator pads every upstream tensor (csrc/scratch.h): the shipped
/// Blackwell GEMMs read one int32 past the route map (upstream 8b6af1aaa) and TMA may need
/// 128 KiB mapped from an operand's base (upstream 2fb785c19).
#[test]
fn scratch_padding_rule() {
    let bytes = |n: usize| unsafe { fi_scratch_bytes(n) };
    assert_eq!(bytes(0), 0, "an empty tensor takes no memory");
    for n in [
        1usize,
        4,
        255,
        256,
        4096,
        128 * 1024 - 16,
        128 * 1024,
        1 << 20,
        (1 << 20) + 3,
    ] {
        let b = bytes(n);
        assert!(b >= 128 * 1024, "{n} -> {b}: at least 128 KiB");
        assert!(b >= n + 16, "{n} -> {b}: at least 16 bytes past the end");
        assert_eq!(b % 256, 0, "{n} -> {b}: 256-byte granules");
        assert!(b < n.max(128 * 1024) + 512, "{n} -> {b}: no more than that");
    }
    assert_eq!(
        bytes(usize::MAX),
        usize::MAX,
        "overflow is an impossible size, not a wrap"
    );
    assert_eq!(bytes(usize::MAX - 100), usize::MAX);
}

/// The sizes upstream's launchers ask for at the shapes where its kernels over-read, through
/// upstream's own sizing (getMaxPermutedPaddedCount, behind fi_routing_buffer_sizes_for): the
/// route map gets its extra int32 and the bf16 launcher's GEMM intermediates 128 KiB at small
/// decode batches.
#[cfg(flashinfer_kernels)]
#[test]
fn scratch_covers_the_route_map_over_read_and_small_bf16_intermediates() {
    let bytes = |n: usize| unsafe { fi_scratch_bytes(n) };
    // (tokens, top_k, experts, tile): decode and prefill shapes of common MoE models.
    for (t, k, e, tile) in [
        (1, 8, 256, 8),
        (2, 8, 128, 8),
        (8, 4, 128, 16),
        (64, 8, 256, 32),
        (1024, 8, 256, 64),
        (4096, 8, 128, 128),
    ] {
        let mut s: fi_routing_buffer_sizes = unsafe { core::mem::zeroed() };
        let status = unsafe { fi_routing_buffer_sizes_for(t, k, e, tile, &mut s) };
        assert_eq!(status, fi_status::FI_STATUS_OK);
        let padded = s.max_padded as usize;
        // permuted_idx_to_token_idx: int32 [max_padded]; the kernels read index max_padded.
        assert!(
            bytes(padded * 4) >= (padded + 1) * 4,
            "route map of T={t} K={k} E={e}"
        );
        // Bf16MoeLauncher: gemm1_output [max_padded, I] and gemm2_output [max_padded, H] bf16.
        for dim in [768usize, 2048, 7168] {
            assert!(
                bytes(padded * dim * 2) >= 128 * 1024,
                "bf16 intermediate [{padded}, {dim}] of T={t}"
            );
        }
    }
}

/// `fi_cutlass_moe_create` checks its params before it touches a device, so its refusals are
/// testable without one: the fp8 block-scale rules (128-multiple sizes up to the GEMM's K, no
/// fixed tactics) and a bad weights enum each answer
/// FI_STATUS_INVALID_ARGUMENT with a message naming the rule; the valid params get past them
/// (to the device check here, to a layer on a Hopper GPU). A library without the CUTLASS MoE
/// answers FI_STATUS_KERNELS_NOT_BUILT to every call.
#[cfg(flashinfer_kernels)]
#[test]
fn cutlass_moe_create_refuses_bad_block_scale_params_before_any_device_call() {
    use fi_cutlass_moe_weights::*;
    let mut info: fi_build_info = unsafe { core::mem::zeroed() };
    assert_eq!(
        unsafe { fi_get_build_info(&mut info) },
        fi_status::FI_STATUS_OK
    );
    let valid = fi_cutlass_moe_params {
        num_experts: 8,
        top_k: 2,
        hidden_size: 256,
        intermediate_size: 128,
        ep_size: 1,
        ep_rank: 0,
        max_tokens: 16,
        tactic_gemm1: -1,
        tactic_gemm2: -1,
        decode_max_tokens: 0,
        weights: FI_CUTLASS_MOE_WEIGHTS_FP8_BLOCK as i32,
    };
    let create = |p: &fi_cutlass_moe_params| {
        let mut layer = core::ptr::null_mut();
        let status = unsafe { fi_cutlass_moe_create(p, &mut layer) };
        unsafe { fi_cutlass_moe_destroy(layer) };
        let msg = unsafe { core::ffi::CStr::from_ptr(fi_last_error_message()) };
        (status, msg.to_string_lossy().into_owned())
    };
    let bad = [
        (
            fi_cutlass_moe_params {
                hidden_size: 192,
                ..valid
            },
            "multiples of 128",
        ),
        (
            fi_cutlass_moe_params {
                intermediate_size: 20480 + 128,
                ..valid
            },
            "at most 20480",
        ),
        (
            fi_cutlass_moe_params {
                tactic_gemm1: 0,
                tactic_gemm2: 2,
                ..valid
            },
            "a tile of the block-scale GEMM",
        ),
        (
            fi_cutlass_moe_params {
                weights: 7,
                ..valid
            },
            "weights must be",
        ),
    ];
    if info.has_cutlass_moe == 0 {
        for (p, _) in &bad {
            assert_eq!(create(p).0, fi_status::FI_STATUS_KERNELS_NOT_BUILT);
        }
        return;
    }
    for (p, rule) in &bad {
        let (status, msg) = create(p);
        assert_eq!(
            status,
            fi_status::FI_STATUS_INVALID_ARGUMENT,
            "{rule}: {msg}"
        );
        assert!(msg.contains(rule), "{rule}: {msg}");
    }
    // bf16 weights keep the 64-multiple rule and their tactics.
    let bf16 = fi_cutlass_moe_params {
        hidden_size: 192,
        decode_max_tokens: 4,
        weights: FI_CUTLASS_MOE_WEIGHTS_BF16 as i32,
        ..valid
    };
    let block_decode = fi_cutlass_moe_params {
        decode_max_tokens: 4,
        ..valid
    };
    for p in [valid, bf16, block_decode] {
        let (status, msg) = create(&p);
        assert_ne!(status, fi_status::FI_STATUS_INVALID_ARGUMENT, "{msg}");
    }
}
