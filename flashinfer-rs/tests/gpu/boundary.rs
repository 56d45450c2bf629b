//! The sealed FFI boundary: C++ exceptions thrown inside upstream code arrive as a status and
//! upstream's message, through the raw C ABI (which only checks what memory safety needs, so
//! upstream's own checks are reached).
use std::ffi::CStr;

use flashinfer_rs::cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use flashinfer_sys as fs;

use crate::common::{gpu, Gpu};

fn last_error() -> String {
    unsafe { CStr::from_ptr(fs::fi_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

struct RawRouting {
    slices: Vec<CudaSlice<i32>>,
    weights: CudaSlice<u16>,
}

impl RawRouting {
    fn new(g: &Gpu, tokens: usize, k: usize, e: usize) -> RawRouting {
        let n = (tokens * k).max(e * 2).max(4096);
        RawRouting {
            slices: (0..8)
                .map(|_| g.stream.alloc_zeros::<i32>(n).unwrap())
                .collect(),
            weights: g.stream.alloc_zeros::<u16>(n).unwrap(),
        }
    }
    fn buffers(&mut self, g: &Gpu) -> fs::fi_routing_buffers {
        let p: Vec<*mut i32> = self
            .slices
            .iter_mut()
            .map(|s| s.device_ptr_mut(&g.stream).0 as *mut i32)
            .collect();
        fs::fi_routing_buffers {
            topk_weights: self.weights.device_ptr_mut(&g.stream).0 as *mut _,
            topk_packed: p[0] as *mut _,
            expert_counts: p[1],
            permuted_idx_size: p[2],
            expanded_idx_to_permuted_idx: p[3],
            permuted_idx_to_token_idx: p[4],
            cta_idx_xy_to_batch_idx: p[5],
            cta_idx_xy_to_mn_limit: p[6],
            num_non_exiting_ctas: p[7],
        }
    }
}

#[test]
fn an_exception_inside_upstream_routing_arrives_as_a_typed_status_with_its_message() {
    let Some(g) =
        gpu("an_exception_inside_upstream_routing_arrives_as_a_typed_status_with_its_message")
    else {
        return;
    };
    g.ctx.bind_to_thread().unwrap();
    // 16 expert groups: our Rust layer refuses this, the raw C ABI passes it on, and upstream's
    // FLASHINFER_CHECK in routingDeepSeek::run throws.
    let (t, e, k) = (8usize, 256usize, 8usize);
    let logits = g.stream.alloc_zeros::<f32>(t * e).unwrap();
    let bias = g.stream.alloc_zeros::<f32>(e).unwrap();
    let mut raw = RawRouting::new(&g, t, k, e);
    let buffers = raw.buffers(&g);
    let params = fs::fi_routing_params {
        method: fs::fi_routing_method::FI_ROUTING_DEEPSEEK_V3 as i32,
        num_tokens: t as i32,
        num_experts: e as i32,
        top_k: k as i32,
        n_group: 16,
        topk_group: 4,
        local_expert_offset: 0,
        local_num_experts: e as i32,
        tile_tokens_dim: 8,
        routed_scaling_factor: 1.0,
        norm_topk_prob: 0,
        use_pdl: 1,
        logits_dtype: fs::fi_dtype::FI_DTYPE_F32,
        bias_dtype: fs::fi_dtype::FI_DTYPE_F32,
    };
    let status = unsafe {
        fs::fi_routing_run(
            &params,
            logits.device_ptr(&g.stream).0 as *const _,
            bias.device_ptr(&g.stream).0 as *const _,
            &buffers,
            std::ptr::null_mut(),
            g.stream.cu_stream() as *mut _,
        )
    };
    let message = last_error();
    eprintln!("upstream routing check: {status:?}: {message}");
    assert_eq!(status, fs::fi_status::FI_STATUS_UPSTREAM_ERROR);
    // Upstream's own text (its printf-style placeholders are not substituted in 0.6.13).
    assert!(
        message.contains("#expert groups") && message.contains("16 8"),
        "{message}"
    );
    // The thread and the library keep working after the exception.
    g.stream.synchronize().unwrap();
}

#[test]
fn an_exception_inside_upstream_noaux_tc_arrives_as_a_typed_status_with_its_message() {
    let Some(g) =
        gpu("an_exception_inside_upstream_noaux_tc_arrives_as_a_typed_status_with_its_message")
    else {
        return;
    };
    g.ctx.bind_to_thread().unwrap();
    // 512 experts in 8 groups of 64: NoAuxTc has no kernel for it and its TLLM_CHECK throws.
    let (t, e, k) = (4usize, 512usize, 8usize);
    let scores = g.stream.alloc_zeros::<f32>(t * e).unwrap();
    let bias = g.stream.alloc_zeros::<f32>(e).unwrap();
    let mut values = g.stream.alloc_zeros::<f32>(t * k).unwrap();
    let mut indices = g.stream.alloc_zeros::<i32>(t * k).unwrap();
    let params = fs::fi_noaux_tc_params {
        num_tokens: t as i32,
        num_experts: e as i32,
        top_k: k as i32,
        n_group: 8,
        topk_group: 4,
        routed_scaling_factor: 1.0,
        scores_dtype: fs::fi_dtype::FI_DTYPE_F32,
        bias_dtype: fs::fi_dtype::FI_DTYPE_F32,
        use_pdl: 1,
    };
    let status = unsafe {
        fs::fi_noaux_tc_run(
            &params,
            scores.device_ptr(&g.stream).0 as *const _,
            bias.device_ptr(&g.stream).0 as *const _,
            values.device_ptr_mut(&g.stream).0 as *mut _,
            indices.device_ptr_mut(&g.stream).0 as *mut i32,
            std::ptr::null_mut(),
            g.stream.cu_stream() as *mut _,
        )
    };
    let message = last_error();
    eprintln!("upstream NoAuxTc check: {status:?}: {message}");
    assert_eq!(status, fs::fi_status::FI_STATUS_UPSTREAM_ERROR);
    assert!(message.contains("unsupported configuration"), "{message}");
    assert!(
        !message.contains('\n'),
        "the backtrace is dropped from the message: {message}"
    );
    g.stream.synchronize().unwrap();
}
