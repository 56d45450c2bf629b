//! What the kernel library is made of: the GPU generations the features build for, their
//! machine-code targets, and every translation unit (upstream's and ours) as one table.

/// A GPU generation the `sm90` / `sm100` features build for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Arch {
    /// Hopper (sm_90).
    Hopper,
    /// Blackwell data-centre parts: B200/GB200 (sm_100) and B300/GB300 (sm_103).
    Blackwell,
}

impl Arch {
    /// Machine code of the routing kernels and our shim. Blackwell takes the sm_100 family
    /// target, one pass that runs on sm_100 and sm_103 (the kernels use no architecture-
    /// specific instruction).
    pub fn routing_targets(self) -> &'static [&'static str] {
        match self {
            Arch::Hopper => &["sm_90a"],
            Arch::Blackwell => &["sm_100f"],
        }
    }
    /// Machine code of the fused MoE's own device code (quantisation, finalize, ...). Its fp4
    /// conversions (`cvt.*.e2m1x2`) are family-specific instructions (PTX ISA 8.8, CUDA 12.9:
    /// ptxas takes them for sm_100f), and its guards test `__CUDA_ARCH__ >= 1000` only, so the
    /// sm_100 family target compiles the same code as sm_100a and sm_103a would, in one pass
    /// that runs on both chips instead of two. Upstream's JIT compiles it so when
    /// `FLASHINFER_CUDA_ARCH_LIST` says `10.0f` (its default is `10.0a`). The GEMMs themselves
    /// are the pinned cubins (sm100f and sm103a), loaded per chip at run time.
    pub fn fused_targets(self) -> &'static [&'static str] {
        match self {
            Arch::Hopper => &[],
            Arch::Blackwell => &["sm_100f"],
        }
    }
    pub fn define(self) -> &'static str {
        match self {
            Arch::Hopper => "-DFLASHINFER_RS_SM90",
            Arch::Blackwell => "-DFLASHINFER_RS_SM100",
        }
    }
}

/// `-gencode` of a machine-code target such as `sm_100f`.
pub fn gencode(target: &str) -> String {
    let arch = target.replacen("sm_", "compute_", 1);
    format!("-gencode=arch={arch},code={target}")
}

/// Which device code a translation unit holds, and so which targets it is compiled for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// Host code only, though the source may be a `.cu` file: such a unit is compiled as
    /// C++ (`nvcc -x c++`), no device pass at all. Two upstream launchers hold no kernel but
    /// include the 9 MB cubin table (batched-GEMM runner) or CUTLASS headers; their two
    /// Blackwell device passes parsed all of it for an empty cubin.
    None,
    /// Routing kernels (or code built beside them): every enabled arch's routing target.
    Routing,
    /// The fused MoE's own kernels: Blackwell's fused targets only.
    Fused,
}

/// Where a translation unit's source lives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The fetched FlashInfer tree (`flashinfer/` below the vendor dir).
    Upstream,
    /// Our C ABI (`csrc/`).
    Ours,
}

/// One translation unit of the kernel library.
pub struct Unit {
    /// Object name (and cache key prefix).
    pub name: &'static str,
    pub origin: Origin,
    /// Path below its origin.
    pub path: &'static str,
    pub device: Device,
    /// Built only when Blackwell is enabled (the fused MoE).
    pub blackwell_only: bool,
    /// The host compiler's optimisation level (`-O3` unless a unit says otherwise).
    pub host_opt: &'static str,
}

const fn unit(
    name: &'static str,
    origin: Origin,
    path: &'static str,
    device: Device,
    blackwell_only: bool,
) -> Unit {
    Unit {
        name,
        origin,
        path,
        device,
        blackwell_only,
        host_opt: "-O3",
    }
}

impl Unit {
    /// The same unit compiled with another host optimisation level.
    const fn with_host_opt(self, host_opt: &'static str) -> Unit {
        Unit { host_opt, ..self }
    }
}

/// The unit that stands in for the CUTLASS fused MoE in a build without it.
pub const ABSENT_CUTLASS_MOE: &str = "fi_cutlass_moe_absent";

/// Every translation unit, heaviest first: the list is consumed from the front, and the
/// longest job bounds the wall time on few cores.
pub const UNITS: &[Unit] = {
    use Device::{Fused, None as Host, Routing};
    use Origin::{Ours, Upstream};
    &[
        unit(
            "routing_custom",
            Upstream,
            concat!(
                "csrc/fused_moe/trtllm_backend/",
                "trtllm_fused_moe_routing_custom.cu"
            ),
            Routing,
            false,
        ),
        // Its cost is the 9 MB kernel table (flashinferMetaInfo.h) that it initialises, which
        // the host compiler takes 343 s to optimise at -O3 and 83 s at -O1 (one core, g++ 12);
        // the cubins it selects from are prebuilt, and its own code picks a config per call.
        unit(
            "batched_gemm_runner",
            Upstream,
            "csrc/trtllm_batched_gemm_runner.cu",
            Host,
            true,
        )
        .with_host_opt("-O1"),
        unit(
            "routing_deepseek",
            Upstream,
            concat!(
                "csrc/fused_moe/trtllm_backend/",
                "trtllm_fused_moe_routing_deepseek.cu"
            ),
            Routing,
            false,
        ),
        unit(
            "noaux_tc",
            Upstream,
            "csrc/fused_moe/noAuxTcKernels.cu",
            Routing,
            false,
        ),
        unit(
            "quantization",
            Upstream,
            "csrc/nv_internal/cpp/kernels/quantization.cu",
            Fused,
            true,
        ),
        unit(
            "moe_launcher",
            Upstream,
            "csrc/trtllm_fused_moe_kernel_launcher.cu",
            Host,
            true,
        ),
        unit(
            "moe_runner",
            Upstream,
            "csrc/trtllm_fused_moe_runner.cu",
            Fused,
            true,
        ),
        unit(
            "moe_dev_kernel",
            Upstream,
            concat!(
                "csrc/fused_moe/trtllm_backend/",
                "trtllm_fused_moe_dev_kernel.cu"
            ),
            Fused,
            true,
        ),
        unit(
            "routing_llama4",
            Upstream,
            concat!(
                "csrc/fused_moe/trtllm_backend/",
                "trtllm_fused_moe_routing_llama4.cu"
            ),
            Routing,
            false,
        ),
        unit(
            "routing_common",
            Upstream,
            concat!(
                "csrc/fused_moe/trtllm_backend/",
                "trtllm_fused_moe_routing_common.cu"
            ),
            Routing,
            false,
        ),
        unit("fi_routing", Ours, "routing.cu", Routing, false),
        unit("fi_noaux_tc", Ours, "noaux_tc.cu", Routing, false),
        unit("fi_topk_router", Ours, "topk_router.cu", Routing, false),
        unit("fi_fused_moe", Ours, "fused_moe.cu", Routing, false),
        unit("fi_moe_env", Ours, "moe_env.cu", Routing, false),
        unit("fi_moe_marshal", Ours, "moe_marshal.cu", Routing, false),
        // bf16 weights to fp8 128x128 blocks at load (any GPU: a plain CUDA kernel).
        unit("fi_weights_fp8", Ours, "weights_fp8.cu", Routing, false),
        // The driver functions Blackwell's batched-GEMM runner calls, loaded at run time.
        unit("fi_cuda_driver", Ours, "cuda_driver.c", Host, true),
        unit("fi_status", Ours, "status.cpp", Host, false),
        // The CUTLASS MoE's C ABI answering "not built"; replaced by build/cutlass_moe.rs's
        // units with the `sm90-moe` feature.
        unit(
            ABSENT_CUTLASS_MOE,
            Ours,
            "cutlass_moe_absent.cpp",
            Host,
            false,
        ),
        unit("fi_info", Ours, "info.cpp", Host, false),
        unit("fi_abi_layout", Ours, "abi_layout.c", Host, false),
        unit("fi_scratch", Ours, "scratch.c", Host, false),
        unit(
            "tllm_env_utils",
            Upstream,
            "csrc/nv_internal/cpp/common/envUtils.cpp",
            Host,
            false,
        ),
        unit(
            "tllm_logger",
            Upstream,
            "csrc/nv_internal/cpp/common/logger.cpp",
            Host,
            false,
        ),
        unit(
            "tllm_string_utils",
            Upstream,
            "csrc/nv_internal/cpp/common/stringUtils.cpp",
            Host,
            false,
        ),
        unit(
            "tllm_exception",
            Upstream,
            "csrc/nv_internal/cpp/common/tllmException.cpp",
            Host,
            false,
        ),
    ]
};

/// Every machine-code target of a build for `archs`, routing first (`sm_90a,sm_100f`), each
/// once.
pub fn all_targets(archs: &[Arch]) -> Vec<&'static str> {
    let mut all = targets(archs, Device::Routing);
    for t in targets(archs, Device::Fused) {
        if !all.contains(&t) {
            all.push(t);
        }
    }
    all
}

/// The machine-code targets of `device` code for the enabled archs.
pub fn targets(archs: &[Arch], device: Device) -> Vec<&'static str> {
    archs
        .iter()
        .flat_map(|a| match device {
            Device::None => &[][..],
            Device::Routing => a.routing_targets(),
            Device::Fused => a.fused_targets(),
        })
        .copied()
        .collect()
}
