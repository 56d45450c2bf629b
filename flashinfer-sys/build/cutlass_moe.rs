//! The CUTLASS fused MoE for Hopper (feature `sm90-moe`): its translation units, the flags
//! upstream's `gen_cutlass_fused_moe_sm90_module` compiles them with, and the one unit that
//! includes the generated grouped GEMMs.
//!
//! Its sources are a tree of their own (`<sources tree>-cutlass-moe`, vendor/fetch.py), whose
//! stamp keys only these objects: enabling the feature never rebuilds the routing or TRTLLM
//! kernels. Pruned to what the crate exposes (bf16 activations x bf16 weights, and with
//! feature `sm90-moe-fp8` e4m3 x e4m3 with bf16 output and bf16 x e4m3 with 128x128 block
//! scales; SwiGLU):
//! - patch 0009 with `FLASHINFER_RS_MOE_TILES` (in place of upstream's `FAST_BUILD`, which keeps
//!   128x128 only): three CTA tiles, cluster 1x1x1, each in one operand order, without the
//!   FINALIZE epilogue (not deterministic): 128x16 with swapped operands (decode) and 128x256
//!   (prefill), within 2.5% of the fastest of the 128x16, 128x128 and 128x256 tiles in both
//!   orders and both epilogues on an H200, and 128x64 with swapped operands (an expert's tokens
//!   padded to 64, not 128: a prefill tactic by index); the other generated shapes compile to
//!   a "disabled by FAST_BUILD" error;
//! - patch 0007 with `FLASHINFER_RS_MOE_TMA_WS_ONLY`: the dispatch keeps only the TMA
//!   warp-specialised (SM90) GEMMs, so no SM80 CUTLASS 2 GEMM is compiled or linked;
//! - of the 97 generated sm90 grouped-GEMM files, the 9 with bf16 x bf16 instantiations, in
//!   one unit so that the CUTLASS headers are parsed once (125 s instead of 9 x 34-85 s); with
//!   fp8, the 18 with e4m3 x e4m3 -> bf16 instantiations (which also hold the half-output ones)
//!   in a second unit, the fp8 runner beside the bf16 one (csrc/cutlass_moe_runner.cu) and its
//!   one grouped-GEMM class in a unit of our own (upstream's has four);
//! - not upstream's DeepSeek fp8 block-scale GEMM unit (fp8_blockscale_gemm.cu, 477 s: every
//!   dense, grouped and strided kernel and DeepGEMM's NVRTC JIT): patch 0012 with
//!   `FLASHINFER_RS_BLOCKSCALE_KERNELS_ONLY` lets csrc/cutlass_moe_gemm_fp8_block.cu build the
//!   one grouped GEMM the block-scale runner calls; the bf16 and per-tensor runners are
//!   constructed without it (csrc/cutlass_moe_runner.cu);
//! - no LoRA: upstream's lora.cpp needs cuBLAS, and the runner's LoRA path is never taken
//!   (csrc/cutlass_moe.cu passes `use_lora = false` and defines the one LoRA entry point the
//!   runner references as a refusal).

use std::fs;
use std::path::{Path, PathBuf};

use super::Job;

/// The machine-code target: the TMA warp-specialised GEMMs use sm_90a's wgmma and TMA.
pub const TARGET: &str = "sm_90a";

/// Where a unit's source lives.
#[derive(Clone, Copy)]
enum Origin {
    /// Below the tree's `flashinfer/`.
    Tree,
    /// Our C ABI (`csrc/`).
    Ours,
}

/// Upstream's units and ours, heaviest first.
const UNITS: &[(&str, Origin, &str)] = &[
    // The runner's explicit instantiation (csrc/cutlass_moe_runner.cu) parses upstream's
    // 5,000-line cutlass_fused_moe_kernels.cuh.
    ("cutlass_moe_runner", Origin::Ours, "cutlass_moe_runner.cu"),
    (
        "cutlass_moe_gemm_bf16",
        Origin::Tree,
        concat!(
            "csrc/nv_internal/tensorrt_llm/kernels/cutlass_kernels/",
            "moe_gemm/moe_gemm_kernels_bf16_bf16.cu"
        ),
    ),
    (
        "cutlass_moe_gemm_input",
        Origin::Tree,
        concat!(
            "csrc/nv_internal/tensorrt_llm/kernels/cutlass_kernels/",
            "moe_gemm/moe_gemm_tma_warp_specialized_input.cu"
        ),
    ),
    (
        "cutlass_moe_heuristic",
        Origin::Tree,
        concat!(
            "csrc/nv_internal/tensorrt_llm/kernels/cutlass_kernels/",
            "cutlass_heuristic.cpp"
        ),
    ),
    (
        "cutlass_moe_memory_utils",
        Origin::Tree,
        "csrc/nv_internal/cpp/common/memoryUtils.cu",
    ),
    ("fi_cutlass_moe", Origin::Ours, "cutlass_moe.cu"),
    // The decode path: two kernels of our own, no CUTLASS.
    ("fi_moe_decode", Origin::Ours, "moe_decode.cu"),
];

/// The fp8 units (feature `sm90-moe-fp8`: per-tensor and block scale), beside [`UNITS`].
const FP8_UNITS: &[(&str, Origin, &str)] = &[
    (
        "cutlass_moe_gemm_fp8",
        Origin::Ours,
        "cutlass_moe_gemm_fp8.cu",
    ),
    // The block-scale grouped GEMM: one kernel of upstream's header (patch 0012).
    (
        "cutlass_moe_gemm_fp8_block",
        Origin::Ours,
        "cutlass_moe_gemm_fp8_block.cu",
    ),
    ("fi_moe_fp8", Origin::Ours, "moe_fp8.cu"),
    // The block-scale runner's code references its AWQ pre-quantisation scaling (never taken:
    // no call passes AWQ scales); 2 s.
    (
        "cutlass_moe_prequant_scale",
        Origin::Tree,
        "csrc/nv_internal/tensorrt_llm/kernels/preQuantScaleKernel.cu",
    ),
];

/// The units compiled with `FLASHINFER_RS_MOE_FP8` when the fp8 units are built: the runner's
/// (which then instantiates the fp8 runner too: upstream's kernels header links in one unit
/// only) and the C ABI's (which then offers it). Without the feature their objects, and so
/// their cache keys, are those of a bf16 build.
const FP8_AWARE: &[&str] = &["cutlass_moe_runner", "fi_cutlass_moe"];

/// One unit of generated grouped GEMMs: its name, and what a generated file must instantiate
/// to be in it.
struct GeneratedUnit {
    name: &'static str,
    /// The operand and output types, in words (the unit's comment, errors).
    types: &'static str,
    instantiates: &'static str,
}

const BF16_GEMMS: GeneratedUnit = GeneratedUnit {
    name: "cutlass_moe_gemms_bf16",
    types: "bf16 x bf16",
    instantiates: "__nv_bfloat16, __nv_bfloat16, __nv_bfloat16",
};

const FP8_GEMMS: GeneratedUnit = GeneratedUnit {
    name: "cutlass_moe_gemms_fp8",
    types: "e4m3 x e4m3 -> bf16",
    instantiates: "__nv_fp8_e4m3, __nv_fp8_e4m3, __nv_bfloat16",
};

/// Where the generated grouped GEMMs are, below the tree.
const GENERATED_SM90: &str = "generated/gemm_grouped/90";

/// The jobs of the CUTLASS fused MoE: `tree` is its fetched tree, `csrc` our C ABI's sources,
/// `out_dir` where the generated GEMMs' units are written, `defines` what its patches enable,
/// `fp8` whether the fp8 per-tensor units are built too.
pub fn jobs(
    tree: &Path,
    csrc: &Path,
    out_dir: &Path,
    nvcc: &Path,
    defines: &[String],
    fp8: bool,
) -> Result<Vec<Job>, String> {
    let fi = tree.join("flashinfer");
    let nv = fi.join("csrc/nv_internal");
    let includes = [
        nv.clone(),
        nv.join("include"),
        nv.join("tensorrt_llm/cutlass_extensions/include"),
        nv.join("tensorrt_llm/kernels/cutlass_kernels/include"),
        nv.join("tensorrt_llm/kernels/cutlass_kernels"),
        fi.join("csrc/fused_moe/cutlass_backend"),
        tree.join("cutlass/include"),
        tree.join("cutlass/tools/util/include"),
        fi.join("include"),
        fi.join("csrc"),
        // The generated files include each other by paths below the tree.
        tree.to_path_buf(),
        csrc.to_path_buf(),
    ];
    let mut args: Vec<String> = vec![
        "-std=c++17".into(),
        "-O3".into(),
        "-DNDEBUG".into(),
        "--expt-relaxed-constexpr".into(),
        "-static-global-template-stub=false".into(),
        "-Xfatbin=-compress-all".into(),
        "-Xcompiler=-fPIC".into(),
        format!("-Xcompiler=-idirafter,{}", csrc.join("compat").display()),
        "-diag-suppress=20012,20013,20015,177,550,186".into(),
    ];
    // As gen_cutlass_fused_moe_sm90_module defines them, but for FAST_BUILD: patch 0009's
    // define (from `defines`) selects the tiles instead (see the module doc).
    for d in [
        "COMPILE_HOPPER_TMA_GEMMS",
        "COMPILE_HOPPER_TMA_GROUPED_GEMMS",
        "ENABLE_BF16",
        "ENABLE_FP8",
        "ENABLE_FP4",
        "ENABLE_FP8_BLOCK_SCALE",
        "USING_OSS_CUTLASS_MOE_GEMM",
        "CUTLASS_ENABLE_GDC_FOR_SM90=1",
    ] {
        args.push(format!("-D{d}"));
    }
    args.extend(defines.iter().cloned());
    args.extend(includes.iter().map(|i| format!("-I{}", i.display())));
    args.push(super::units::gencode(TARGET));

    let job = |name: &str, source: PathBuf, args: Vec<String>| Job {
        name: name.to_string(),
        program: nvcc.to_path_buf(),
        args,
        source,
        tree: super::Tree::CutlassMoe,
    };
    let generated: &[GeneratedUnit] = if fp8 {
        &[FP8_GEMMS, BF16_GEMMS]
    } else {
        &[BF16_GEMMS]
    };
    // The generated GEMMs are the heaviest units: first.
    let mut jobs = Vec::new();
    for unit in generated {
        let source = write_generated_unit(tree, out_dir, unit)?;
        jobs.push(job(unit.name, source, args.clone()));
    }
    let ours: &[_] = if fp8 { FP8_UNITS } else { &[] };
    for &(name, origin, path) in UNITS.iter().chain(ours) {
        let source = match origin {
            Origin::Tree => fi.join(path),
            Origin::Ours => csrc.join(path),
        };
        let mut args = args.clone();
        if path.ends_with(".cpp") {
            // Upstream's .cpp units use CUDA declarations: compiled as CUDA, as upstream does.
            args.extend(["-x".to_string(), "cu".to_string()]);
        }
        if fp8 && FP8_AWARE.contains(&name) {
            args.push("-DFLASHINFER_RS_MOE_FP8".to_string());
        }
        jobs.push(job(name, source, args));
    }
    Ok(jobs)
}

/// Writes `OUT_DIR/<unit>.cu`, one `#include` per generated file with the unit's
/// instantiations (by path below the tree, so the object's cache key does not depend on where
/// the tree is), and returns its path.
fn write_generated_unit(
    tree: &Path,
    out_dir: &Path,
    unit: &GeneratedUnit,
) -> Result<PathBuf, String> {
    let dir = tree.join(GENERATED_SM90);
    let mut files: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e} (run vendor/fetch.py sources)", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .filter(|p| fs::read_to_string(p).is_ok_and(|t| t.contains(unit.instantiates)))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if files.is_empty() {
        return Err(format!(
            "{} holds no {} grouped GEMM (run vendor/fetch.py sources)",
            dir.display(),
            unit.types
        ));
    }
    files.sort();
    let mut text = format!(
        "// Written by flashinfer-sys's build script: upstream's generated {} grouped\n\
         // GEMMs for sm_90, in one translation unit.\n",
        unit.types
    );
    for f in &files {
        text.push_str(&format!("#include \"{GENERATED_SM90}/{f}\"\n"));
    }
    let path = out_dir.join(format!("{}.cu", unit.name));
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
