//! The CUTLASS fused MoE for Hopper (feature `sm90-moe`): its translation units, the flags
//! upstream's `gen_cutlass_fused_moe_sm90_module` compiles them with, and the one unit that
//! includes the generated grouped GEMMs.
//!
//! Its sources are a tree of their own (`<sources tree>-cutlass-moe`, vendor/fetch.py), whose
//! stamp keys only these objects: enabling the feature never rebuilds the routing or TRTLLM
//! kernels. Pruned to what the crate exposes (bf16 activations x bf16 weights, SwiGLU):
//! - patch 0009 with `FLASHINFER_RS_MOE_TILES` (in place of upstream's `FAST_BUILD`, which keeps
//!   128x128 only): two CTA tiles, cluster 1x1x1, each in one operand order, without the
//!   FINALIZE epilogue (not deterministic): 128x16 with swapped operands (decode) and 128x256
//!   (prefill), within 2.5% of the fastest of the 128x16, 128x128 and 128x256 tiles in both
//!   orders and both epilogues on an H200; the other generated shapes compile to a "disabled
//!   by FAST_BUILD" error;
//! - patch 0007 with `FLASHINFER_RS_MOE_TMA_WS_ONLY`: the dispatch keeps only the TMA
//!   warp-specialised (SM90) GEMMs, so no SM80 CUTLASS 2 GEMM is compiled or linked;
//! - of the 97 generated sm90 grouped-GEMM files, the 9 with bf16 x bf16 instantiations, in
//!   one unit so that the CUTLASS headers are parsed once (125 s instead of 9 x 34-85 s);
//! - no DeepSeek fp8 block-scale GEMM (fp8_blockscale_gemm.cu): it serves fp8 weights only, and
//!   csrc/cutlass_moe_runner.cu constructs the runner without it;
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

/// What a generated file must instantiate to be compiled: the bf16 x bf16 grouped GEMMs.
const BF16_GEMMS: &str = "__nv_bfloat16, __nv_bfloat16, __nv_bfloat16";

/// Where the generated grouped GEMMs are, below the tree.
const GENERATED_SM90: &str = "generated/gemm_grouped/90";

/// The jobs of the CUTLASS fused MoE: `tree` is its fetched tree, `csrc` our C ABI's sources,
/// `out_dir` where the generated GEMMs' unit is written, `defines` what its patches enable.
pub fn jobs(
    tree: &Path,
    csrc: &Path,
    out_dir: &Path,
    nvcc: &Path,
    defines: &[String],
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

    let generated = write_generated_unit(tree, out_dir)?;
    let mut jobs: Vec<Job> = UNITS
        .iter()
        .map(|&(name, origin, path)| {
            let source = match origin {
                Origin::Tree => fi.join(path),
                Origin::Ours => csrc.join(path),
            };
            let mut args = args.clone();
            if path.ends_with(".cpp") {
                // Upstream's .cpp units use CUDA declarations: compiled as CUDA, as upstream does.
                args.extend(["-x".to_string(), "cu".to_string()]);
            }
            Job {
                name: name.to_string(),
                program: nvcc.to_path_buf(),
                args,
                source,
                tree: super::Tree::CutlassMoe,
            }
        })
        .collect();
    // The generated GEMMs are the heaviest unit: first.
    jobs.insert(
        0,
        Job {
            name: "cutlass_moe_gemms_bf16".to_string(),
            program: nvcc.to_path_buf(),
            args,
            source: generated,
            tree: super::Tree::CutlassMoe,
        },
    );
    Ok(jobs)
}

/// Writes `OUT_DIR/cutlass_moe_gemms_bf16.cu`, one `#include` per generated file with bf16 x
/// bf16 instantiations (by path below the tree, so the object's cache key does not depend on
/// where the tree is), and returns its path.
fn write_generated_unit(tree: &Path, out_dir: &Path) -> Result<PathBuf, String> {
    let dir = tree.join(GENERATED_SM90);
    let mut files: Vec<String> = fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e} (run vendor/fetch.py sources)", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .filter(|p| fs::read_to_string(p).is_ok_and(|t| t.contains(BF16_GEMMS)))
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if files.is_empty() {
        return Err(format!(
            "{} holds no bf16 x bf16 grouped GEMM (run vendor/fetch.py sources)",
            dir.display()
        ));
    }
    files.sort();
    let mut text = String::from(
        "// Written by flashinfer-sys's build script: upstream's generated bf16 x bf16 grouped\n\
         // GEMMs for sm_90, in one translation unit.\n",
    );
    for f in &files {
        text.push_str(&format!("#include \"{GENERATED_SM90}/{f}\"\n"));
    }
    let path = out_dir.join("cutlass_moe_gemms_bf16.cu");
    fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
