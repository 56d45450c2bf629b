//! Builds the kernels behind flashinfer-rs's C ABI.
//!
//! The steps, in order, each a function below:
//!   1. `read_pin`: the pinned upstream version and cubin artifact from vendor/MANIFEST.toml;
//!      exported to Rust (`rustc-env`) and to dependants (`DEP_FLASHINFER_*`).
//!   2. docs.rs stops here; `FLASHINFER_RS_KERNELS_LIB` builds against a prebuilt library
//!      (`use_prebuilt`: cfgs that select src/generated/prebuilt.rs's bindings); no arch
//!      feature: `build_not_built`, the C ABI answering "kernels not built", compiled by the
//!      host C compiler; no nvcc needed.
//!   3. `require_vendor`: the fetched FlashInfer tree (vendor/fetch.py); never downloads.
//!   4. `find_cuda`: nvcc >= 12.9 from NVCC, FLASHINFER_RS_CUDA_HOME, CUDA_HOME, CUDA_PATH,
//!      the toolchain that vendor/fetch.py installs, or PATH.
//!   5. `plan_jobs` + `run_jobs`: every translation unit of the table in build/units.rs,
//!      heaviest first, compiled in parallel (cargo's NUM_JOBS workers, each but the first
//!      holding a token of cargo's jobserver while it compiles) through the content-addressed
//!      object cache of build/cache.rs, so a fresh clone on a machine that built the same
//!      inputs before links in seconds.
//!   6. `archive_and_link`: static archives, static cudart, and the link lines.
//!
//! It generates no Rust: what the crate derives from its C ABI (the `MoeTensor` enum, the
//! prebuilt-library bindings) is committed under src/generated/ by `cargo xtask generate`.

use std::collections::VecDeque;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[path = "build/cache.rs"]
mod cache;
#[path = "build/cutlass_moe.rs"]
mod cutlass_moe;
#[path = "build/eviction.rs"]
mod eviction;
#[path = "build/progress.rs"]
mod progress;
#[path = "build/units.rs"]
mod units;

use cache::{Keys, ObjectCache, SharedInputs};
use units::{all_targets, gencode, targets, Arch, Device, Origin, ABSENT_CUTLASS_MOE, UNITS};

/// Oldest CUDA whose nvcc knows the Blackwell family target (sm_100f) and compiles its fp4
/// conversions.
const MIN_CUDA: (u32, u32) = (12, 9);

fn main() {
    let mut ctx = Ctx::from_env();
    let pin = read_pin(&ctx);
    ctx.vendor = ctx.vendor_dir(&pin);
    declare_rerun_triggers(&ctx);
    emit_metadata(&ctx, &pin);

    if env::var_os("DOCS_RS").is_some() {
        // docs.rs: no compiler, no link. The crate only needs to document.
        return;
    }
    if let Some(library) = env::var_os("FLASHINFER_RS_KERNELS_LIB") {
        use_prebuilt(Path::new(&library));
        return;
    }
    if ctx.archs.is_empty() {
        build_not_built(&ctx, &pin);
        return;
    }
    let (vendor, patches) = require_vendor(&ctx, &pin);
    let cuda = find_cuda(&ctx);
    let mut jobs = plan_jobs(&ctx, &pin, &patches, &vendor, &cuda);
    if ctx.cutlass_moe {
        let defines = require_cutlass_moe(&ctx, &pin);
        let more = cutlass_moe::jobs(
            &ctx.cutlass_moe_dir(),
            &ctx.csrc(),
            &ctx.out_dir,
            &cuda.nvcc,
            &defines,
            ctx.cutlass_moe_fp8,
        )
        .unwrap_or_else(|e| fail(&e));
        // Heaviest first across both lists: the CUTLASS MoE's generated GEMMs and runner
        // start right after routing_custom.
        jobs.splice(1..1, more);
    }
    let objects = run_jobs(&ctx, jobs);
    archive_and_link(&ctx, &cuda, objects);
}

/// Everything the steps share, read once from cargo's environment.
struct Ctx {
    /// This crate's directory: csrc/ and vendor/ live here (in the repository they are
    /// symlinks to the top-level folders; cargo packages their contents).
    root: PathBuf,
    out_dir: PathBuf,
    archs: Vec<Arch>,
    /// The CUTLASS fused MoE for Hopper (feature `sm90-moe`, which enables `sm90`).
    cutlass_moe: bool,
    /// ... with its fp8 per-tensor GEMMs (feature `sm90-moe-fp8`, which enables `sm90-moe`).
    cutlass_moe_fp8: bool,
    jobs: usize,
    cache: PathBuf,
    /// The fetched FlashInfer tree ([`Ctx::vendor_dir`], once the pin is read).
    vendor: PathBuf,
}

impl Ctx {
    fn from_env() -> Ctx {
        let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
        let mut archs = Vec::new();
        if env::var_os("CARGO_FEATURE_SM90").is_some() {
            archs.push(Arch::Hopper);
        }
        if env::var_os("CARGO_FEATURE_SM100").is_some() {
            archs.push(Arch::Blackwell);
        }
        let cutlass_moe = env::var_os("CARGO_FEATURE_SM90_MOE").is_some();
        let cutlass_moe_fp8 = env::var_os("CARGO_FEATURE_SM90_MOE_FP8").is_some();
        let jobs = env::var("NUM_JOBS")
            .ok()
            .and_then(|j| j.parse().ok())
            .unwrap_or(2);
        let cache = env::var_os("FLASHINFER_RS_CACHE")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/flashinfer-rs")))
            .unwrap_or_else(|| PathBuf::from("/tmp/flashinfer-rs-cache"));
        Ctx {
            root,
            out_dir: PathBuf::from(env::var("OUT_DIR").unwrap()),
            archs,
            cutlass_moe,
            cutlass_moe_fp8,
            jobs: jobs.max(1),
            cache,
            vendor: PathBuf::new(),
        }
    }

    fn csrc(&self) -> PathBuf {
        self.root.join("csrc")
    }

    /// Where vendor/fetch.py puts the fetched sources (the same default as there).
    fn vendor_dir(&self, pin: &Pin) -> PathBuf {
        env::var_os("FLASHINFER_RS_VENDOR_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                self.cache
                    .join("sources")
                    .join(format!("flashinfer-{}", pin.version))
            })
    }

    /// The CUTLASS fused MoE's own tree, beside the main one (vendor/fetch.py's
    /// `cutlass_moe_dir`).
    fn cutlass_moe_dir(&self) -> PathBuf {
        let mut name = self.vendor.file_name().unwrap_or_default().to_os_string();
        name.push("-cutlass-moe");
        self.vendor.with_file_name(name)
    }
}

fn declare_rerun_triggers(ctx: &Ctx) {
    println!("cargo::rustc-check-cfg=cfg(flashinfer_kernels)");
    println!("cargo::rustc-check-cfg=cfg(flashinfer_prebuilt)");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={}", ctx.csrc().display());
    println!(
        "cargo:rerun-if-changed={}",
        ctx.root.join("vendor/MANIFEST.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        ctx.root.join("vendor/patches").display()
    );
    // The stamps change whenever vendor/fetch.py writes a new tree.
    println!(
        "cargo:rerun-if-changed={}",
        ctx.vendor.join(STAMP).display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        ctx.cutlass_moe_dir().join(STAMP).display()
    );
    for var in [
        "NVCC",
        "FLASHINFER_RS_CUDA_HOME",
        "CUDA_HOME",
        "CUDA_PATH",
        "FLASHINFER_RS_CACHE",
        "FLASHINFER_RS_VENDOR_DIR",
        "FLASHINFER_RS_NO_OBJECT_CACHE",
        "FLASHINFER_RS_NVCC_FLAGS",
        "FLASHINFER_RS_ALLOW_UNPATCHED",
        "FLASHINFER_RS_KERNELS_LIB",
        "DOCS_RS",
        cache::NVCC_ENV_FLAGS[0],
        cache::NVCC_ENV_FLAGS[1],
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
}

const STAMP: &str = ".flashinfer-rs-stamp.json";
const PATCH_STAMP: &str = ".flashinfer-rs-patches.json";

/// The pinned upstream, read from vendor/MANIFEST.toml.
struct Pin {
    version: String,
    bmm_artifact: String,
    patches: Vec<Patch>,
    /// The CUTLASS fused MoE tree's own patches.
    cutlass_moe_patches: Vec<Patch>,
}

/// One of our patches to the fetched sources.
struct Patch {
    file: String,
    sha256: String,
    /// Defined for the build once the patch is applied.
    define: Option<String>,
}

fn read_pin(ctx: &Ctx) -> Pin {
    use toml::de::{DeTable, DeValue};
    let path = ctx.root.join("vendor/MANIFEST.toml");
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| fail(&format!("cannot read {}: {e}", path.display())));
    let invalid = |what: &str| -> ! { fail(&format!("{} is not valid: {what}", path.display())) };
    // toml's own document tree, no serde: with a serde derive and toml 0.8, this build
    // script's dependencies took 83 CPU-s to compile instead of 25, in every target dir that
    // builds this crate (CI has four).
    let root = DeValue::Table(
        DeTable::parse(&text)
            .unwrap_or_else(|e| invalid(&e.to_string()))
            .into_inner(),
    );
    let string = |v: &DeValue, key: &str, at: &str| -> String {
        match v.get(key).and_then(|s| s.get_ref().as_str()) {
            Some(s) => s.to_string(),
            None => invalid(&format!("`{at}{key}` must be a string")),
        }
    };
    let table = |key: &str| -> &DeValue {
        match root.get(key) {
            Some(t) if t.get_ref().is_table() => t.get_ref(),
            _ => invalid(&format!("no [{key}] table")),
        }
    };
    // `[[patch]]` arrays of tables; absent means none.
    let patches = |t: &DeValue, at: &str| -> Vec<Patch> {
        let Some(list) = t.get("patch") else {
            return Vec::new();
        };
        let Some(list) = list.get_ref().as_array() else {
            invalid(&format!("`{at}patch` must be an array of tables"))
        };
        let at = format!("{at}patch.");
        list.iter()
            .map(|p| Patch {
                file: string(p.get_ref(), "file", &at),
                sha256: string(p.get_ref(), "sha256", &at),
                define: p
                    .get_ref()
                    .get("define")
                    .map(|_| string(p.get_ref(), "define", &at)),
            })
            .collect()
    };
    let flashinfer = table("flashinfer");
    let version = string(flashinfer, "version", "flashinfer.");
    let bmm_artifact = string(flashinfer, "bmm_artifact", "flashinfer.");
    let patch = patches(&root, "");
    let cutlass_moe_patch = patches(table("cutlass_moe"), "cutlass_moe.");
    // The crate version carries the pin as build metadata; the two must agree.
    let crate_version = env::var("CARGO_PKG_VERSION").unwrap();
    let expected = format!("+flashinfer.{version}");
    if !crate_version.ends_with(&expected) {
        fail(&format!(
            "crate version {crate_version} does not carry the pinned FlashInfer {version} \
             (expected build metadata `{expected}`)"
        ));
    }
    Pin {
        version,
        bmm_artifact,
        patches: patch,
        cutlass_moe_patches: cutlass_moe_patch,
    }
}

fn emit_metadata(ctx: &Ctx, pin: &Pin) {
    let archs = all_targets(&ctx.archs);
    // For this crate's Rust code (constants in lib.rs).
    println!(
        "cargo:rustc-env=FLASHINFER_RS_UPSTREAM_VERSION={}",
        pin.version
    );
    println!(
        "cargo:rustc-env=FLASHINFER_RS_BMM_ARTIFACT={}",
        pin.bmm_artifact
    );
    println!("cargo:rustc-env=FLASHINFER_RS_ARCHS={}", archs.join(","));
    // For dependants, as DEP_FLASHINFER_<KEY> (the `links = "flashinfer"` contract).
    println!("cargo:include={}", ctx.csrc().display());
    println!("cargo:version={}", pin.version);
    println!("cargo:bmm_artifact={}", pin.bmm_artifact);
    println!("cargo:archs={}", archs.join(","));
}

/// A build against a prebuilt kernel library (`scripts/kernels-lib.sh` makes one): no nvcc,
/// no fetched sources, nothing linked. The bindings become calls through a table
/// (src/generated/prebuilt.rs, selected by the cfg set here) that src/prebuilt.rs loads at
/// first use, after checking the library's record (crate, FlashInfer and ABI versions, the
/// architectures this build's features ask for) and its sha256.
fn use_prebuilt(library: &Path) {
    if !library.is_absolute() {
        fail(&format!(
            "FLASHINFER_RS_KERNELS_LIB must be an absolute path, got {}",
            library.display()
        ));
    }
    println!(
        "cargo:rustc-env=FLASHINFER_RS_KERNELS_LIB_DEFAULT={}",
        library.display()
    );
    println!("cargo:rustc-cfg=flashinfer_kernels");
    println!("cargo:rustc-cfg=flashinfer_prebuilt");
}

/// The C ABI with every kernel entry point answering FI_STATUS_KERNELS_NOT_BUILT.
fn build_not_built(ctx: &Ctx, pin: &Pin) {
    let mut build = cc_with_pin(pin);
    build
        .file(ctx.csrc().join("not_built.c"))
        .file(ctx.csrc().join("abi_layout.c"))
        .file(ctx.csrc().join("scratch.c"))
        .include(ctx.csrc())
        .compile("flashinfer_rs_not_built");
}

fn cc_with_pin(pin: &Pin) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .define(
            "FLASHINFER_RS_UPSTREAM_VERSION",
            format!("\"{}\"", pin.version).as_str(),
        )
        .define(
            "FLASHINFER_RS_BMM_ARTIFACT",
            format!("\"{}\"", pin.bmm_artifact).as_str(),
        )
        .define(
            "FLASHINFER_RS_CRATE_VERSION",
            format!("\"{}\"", env::var("CARGO_PKG_VERSION").unwrap()).as_str(),
        );
    build
}

/// The fetched tree and the patches of the manifest applied to it.
///
/// Every patch must be applied, at its pinned hash. `FLASHINFER_RS_ALLOW_UNPATCHED=1` admits
/// a tree that lacks some (fetched with `vendor/fetch.py sources --skip-patch ...`), so that a
/// regression proof can build the kernels as upstream released them; such a build says so.
fn require_vendor<'p>(ctx: &Ctx, pin: &'p Pin) -> (PathBuf, Vec<&'p Patch>) {
    let dir = ctx.vendor.clone();
    let fetch = format!(
        "Run this once (it downloads the pinned wheels, checks their sha256 and applies our \
         patches):\n\n    python3 {}/vendor/fetch.py sources\n",
        ctx.root.display()
    );
    if !dir.join(STAMP).exists() {
        fail(&format!(
            "the FlashInfer sources are not fetched ({} has no {STAMP}).\n{fetch}",
            dir.display()
        ));
    }
    let stamp = fs::read_to_string(dir.join(PATCH_STAMP)).unwrap_or_default();
    let (applied, missing): (Vec<&Patch>, Vec<&Patch>) = pin
        .patches
        .iter()
        .partition(|p| stamp.contains(&format!("\"{}\": \"{}\"", p.file, p.sha256)));
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|p| p.file.as_str()).collect();
        if env::var_os("FLASHINFER_RS_ALLOW_UNPATCHED").is_some() {
            println!(
                "cargo:warning=flashinfer-sys: building WITHOUT patches {} \
                 (FLASHINFER_RS_ALLOW_UNPATCHED): the kernels are 0.6.13's, not this crate's",
                names.join(", ")
            );
        } else {
            fail(&format!(
                "the fetched tree in {} lacks patch {} (or has an older one).\n{fetch}",
                dir.display(),
                names.join(", ")
            ));
        }
    }
    (dir, applied)
}

/// The CUTLASS fused MoE's fetched tree, with every one of its patches at its pinned hash
/// (no `FLASHINFER_RS_ALLOW_UNPATCHED` here: its patch is what keeps the build small); returns
/// the defines its patches ask for.
fn require_cutlass_moe(ctx: &Ctx, pin: &Pin) -> Vec<String> {
    let dir = ctx.cutlass_moe_dir();
    let stamp = fs::read_to_string(dir.join(STAMP)).unwrap_or_else(|_| {
        fail(&format!(
            "the CUTLASS MoE sources (feature `sm90-moe`) are not fetched ({} has no {STAMP}).\n\
             Run this once:\n\n    python3 {}/vendor/fetch.py sources\n",
            dir.display(),
            ctx.root.display()
        ))
    });
    for p in &pin.cutlass_moe_patches {
        if !stamp.contains(&format!("\"{}\": \"{}\"", p.file, p.sha256)) {
            fail(&format!(
                "the CUTLASS MoE tree in {} lacks patch {} (or has an older one).\n\
                 Run this once:\n\n    python3 {}/vendor/fetch.py sources\n",
                dir.display(),
                p.file,
                ctx.root.display()
            ));
        }
    }
    pin.cutlass_moe_patches
        .iter()
        .filter_map(|p| p.define.as_ref())
        .map(|d| format!("-D{d}"))
        .collect()
}

struct Cuda {
    nvcc: PathBuf,
    home: PathBuf,
    version_text: String,
}

fn find_cuda(ctx: &Ctx) -> Cuda {
    let fetched = ctx.cache.join("cuda-13.0/nvidia/cu13/bin/nvcc");
    // Explicit choices first: a too-old explicit nvcc is an error, not skipped.
    let explicit: Vec<(String, PathBuf)> = [
        ("NVCC", env::var_os("NVCC").map(PathBuf::from)),
        (
            "FLASHINFER_RS_CUDA_HOME",
            env::var_os("FLASHINFER_RS_CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")),
        ),
        (
            "CUDA_HOME",
            env::var_os("CUDA_HOME").map(|h| PathBuf::from(h).join("bin/nvcc")),
        ),
        (
            "CUDA_PATH",
            env::var_os("CUDA_PATH").map(|h| PathBuf::from(h).join("bin/nvcc")),
        ),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
    .collect();
    // The first explicit choice decides.
    if let Some((source, nvcc)) = explicit.into_iter().next() {
        return probe_nvcc(&nvcc)
            .unwrap_or_else(|e| fail(&format!("{source} points at {}: {e}", nvcc.display())));
    }
    let mut tried = Vec::new();
    for nvcc in [fetched, PathBuf::from("nvcc")] {
        match probe_nvcc(&nvcc) {
            Ok(cuda) => return cuda,
            Err(e) => tried.push(format!("  {}: {e}", nvcc.display())),
        }
    }
    fail(&format!(
        "no nvcc >= {}.{} found (needed by the `sm90`/`sm100` features).\n{}\n\
         Install CUDA 13.0's compiler from the package registry (about 160 MB, no root):\n\n    \
         python3 {}/vendor/fetch.py toolchain\n\n\
         or point NVCC / CUDA_HOME at a CUDA >= {}.{} toolkit.",
        MIN_CUDA.0,
        MIN_CUDA.1,
        tried.join("\n"),
        ctx.root.display(),
        MIN_CUDA.0,
        MIN_CUDA.1
    ))
}

fn probe_nvcc(nvcc: &Path) -> Result<Cuda, String> {
    let out = Command::new(nvcc)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let release = text
        .split("release ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .ok_or_else(|| "no `release X.Y` in `nvcc --version`".to_string())?;
    let mut parts = release
        .trim()
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if version < MIN_CUDA {
        return Err(format!(
            "CUDA {}.{} is older than {}.{}",
            version.0, version.1, MIN_CUDA.0, MIN_CUDA.1
        ));
    }
    // Resolve a bare `nvcc` through PATH to its real location, to find CUDA_HOME.
    let resolved = if nvcc.components().count() == 1 {
        env::var_os("PATH")
            .iter()
            .flat_map(env::split_paths)
            .map(|dir| dir.join(nvcc))
            .find(|p| p.is_file())
            .ok_or("not on PATH")?
    } else {
        nvcc.to_path_buf()
    };
    let resolved = fs::canonicalize(&resolved).unwrap_or(resolved);
    let home = resolved
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or("nvcc has no CUDA home")?;
    Ok(Cuda {
        nvcc: resolved,
        home,
        version_text: text,
    })
}

/// One compiler invocation: `program args... -c source -o <object>`.
struct Job {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    source: PathBuf,
    /// The fetched tree it is built from, whose stamp keys its object.
    tree: Tree,
}

/// The fetched trees (vendor/fetch.py): each one's stamp keys only the objects built from it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tree {
    /// FlashInfer's routing and TRTLLM sources, tvm-ffi.
    Main,
    /// The CUTLASS fused MoE's (build/cutlass_moe.rs).
    CutlassMoe,
}

/// Every translation unit, heaviest first (the list is consumed from the front, and the
/// longest job bounds the wall time on few cores).
fn plan_jobs(ctx: &Ctx, pin: &Pin, patches: &[&Patch], vendor: &Path, cuda: &Cuda) -> Vec<Job> {
    let fi = vendor.join("flashinfer");
    let csrc = ctx.csrc();

    let includes = [
        fi.join("include"),
        fi.join("csrc"),
        fi.join("csrc/nv_internal"),
        fi.join("csrc/nv_internal/include"),
        vendor.join("cutlass/include"),
        vendor.join("tvm-ffi/include"),
        vendor.join("bmm-include"),
        csrc.clone(),
    ];
    let mut common: Vec<String> = vec![
        "-std=c++17".into(),
        "-DNDEBUG".into(),
        "--expt-relaxed-constexpr".into(),
        "-use_fast_math".into(),
        "-static-global-template-stub=false".into(),
        "-Xfatbin=-compress-all".into(),
        "-Xcompiler=-fPIC".into(),
        // Our stand-ins for headers the registry toolchain lacks; the toolkit's own win.
        format!("-Xcompiler=-idirafter,{}", csrc.join("compat").display()),
        "-diag-suppress=20012,20013,20015,177,550,186".into(),
        format!("-DFLASHINFER_RS_UPSTREAM_VERSION=\"{}\"", pin.version),
        format!("-DFLASHINFER_RS_BMM_ARTIFACT=\"{}\"", pin.bmm_artifact),
        format!("-DTLLM_GEN_GEMM_CUBIN_PATH=\"{}\"", pin.bmm_artifact),
    ];
    for d in [
        "TLLM_GEN_EXPORT_INTERFACE",
        "TLLM_GEN_EXPORT_FLASHINFER",
        "TLLM_ENABLE_CUDA",
        "ENABLE_BF16",
        "ENABLE_FP8",
        "ENABLE_FP4",
        "CUTLASS_ENABLE_GDC_FOR_SM100=1",
        "FLASHINFER_ENABLE_FP8_E8M0",
        "FLASHINFER_ENABLE_FP4_E2M1",
        "TVM_FFI_BACKTRACE_ON_SEGFAULT=0",
    ] {
        common.push(format!("-D{d}"));
    }
    for a in &ctx.archs {
        common.push(a.define().into());
    }

    if let Ok(extra) = env::var("FLASHINFER_RS_NVCC_FLAGS") {
        common.extend(extra.split_whitespace().map(String::from));
    }
    common.extend(includes.iter().map(|i| format!("-I{}", i.display())));

    let has_blackwell = ctx.archs.contains(&Arch::Blackwell);
    let mut jobs: Vec<Job> = UNITS
        .iter()
        .filter(|u| has_blackwell || !u.blackwell_only)
        .filter(|u| !(ctx.cutlass_moe && u.name == ABSENT_CUTLASS_MOE))
        .map(|u| {
            let gencodes: Vec<String> = targets(&ctx.archs, u.device)
                .into_iter()
                .map(gencode)
                .collect();
            let mut args = common.clone();
            // nvcc's -O is the host compiler's level (device code is always optimised). Second,
            // where the shared -O3 always stood: the arguments, and so the cache keys of the
            // units that keep -O3, are what they were before units chose their level.
            args.insert(1, u.host_opt.to_string());
            if u.device == Device::None && u.path.ends_with(".cu") {
                // A kernel-free CUDA source: host compilation only (see `Device::None`).
                args.extend(["-x".to_string(), "c++".to_string()]);
            }
            if !gencodes.is_empty() {
                args.push(format!("--threads={}", gencodes.len()));
            }
            args.extend(gencodes);
            Job {
                name: u.name.to_string(),
                program: cuda.nvcc.clone(),
                args,
                source: match u.origin {
                    Origin::Upstream => fi.join(u.path),
                    Origin::Ours => csrc.join(u.path),
                },
                tree: Tree::Main,
            }
        })
        .collect();
    // What our patches enable, and the target list build info reports, are for our shim
    // only: upstream objects keep their cache keys.
    let mut patch_defines: Vec<String> = patches
        .iter()
        .filter_map(|p| p.define.as_ref())
        .map(|d| format!("-D{d}"))
        .collect();
    patch_defines.push(format!(
        "-DFLASHINFER_RS_TARGETS=\"{}\"",
        all_targets(&ctx.archs).join(",")
    ));
    patch_defines.push(format!(
        "-DFLASHINFER_RS_CRATE_VERSION=\"{}\"",
        env::var("CARGO_PKG_VERSION").unwrap()
    ));
    let numbers: Vec<&str> = patches.iter().map(|p| &p.file[..4]).collect();
    patch_defines.push(format!("-DFLASHINFER_RS_PATCHES=\"{}\"", numbers.join(",")));
    for job in jobs.iter_mut().filter(|j| j.source.starts_with(&csrc)) {
        job.args.extend(patch_defines.iter().cloned());
    }
    jobs.extend(tvm_ffi_jobs(vendor));
    jobs
}

/// tvm-ffi's C++ sources, built into a static library: the upstream launchers and the
/// routing code call its C API (errors, tensors, environment stream/allocator).
fn tvm_ffi_jobs(vendor: &Path) -> Vec<Job> {
    let root = vendor.join("tvm-ffi");
    let cxx = env::var_os("CXX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("c++"));
    let args: Vec<String> = vec![
        "-std=c++17".into(),
        "-O2".into(),
        "-fPIC".into(),
        "-w".into(),
        // No libbacktrace (not shipped) and, above all, no SIGSEGV handler in a server process.
        "-DTVM_FFI_USE_LIBBACKTRACE=0".into(),
        "-DTVM_FFI_BACKTRACE_ON_SEGFAULT=0".into(),
        format!("-I{}", root.join("include").display()),
    ];
    TVM_FFI_SOURCES
        .iter()
        .map(|stem| Job {
            name: format!("tvm_ffi_{}", stem.rsplit('/').next().unwrap_or(stem)),
            program: cxx.clone(),
            args: args.clone(),
            source: root.join("src/ffi").join(format!("{stem}.cc")),
            tree: Tree::Main,
        })
        .collect()
}

/// The tvm-ffi sources whose objects the kernel library links: the closure of what upstream's
/// launchers and routing code reference (errors, functions, objects, dtypes, the environment
/// stream). Its other 19 sources (containers, reflection, serialisation, modules, ...) were
/// compiled and never linked: no symbol of theirs was referenced, so the static link never
/// pulled them in (and their static initialisers never ran). A new reference to one fails the
/// link, naming the symbol; add its source here.
const TVM_FFI_SOURCES: &[&str] = &[
    "backtrace",
    "dtype",
    "error",
    "function",
    "object",
    "extra/env_context",
];

fn collect_files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap_or_else(|e| fail(&format!("{}: {e}", dir.display()))) {
        let p = entry.unwrap().path();
        if p.is_dir() {
            collect_files(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
}

/// Runs the jobs on `ctx.jobs` threads, each object from the object cache when it holds one
/// (see build/cache.rs), else compiled and stored.
fn run_jobs(ctx: &Ctx, jobs: Vec<Job>) -> Vec<(String, PathBuf)> {
    let obj_dir = ctx.out_dir.join("obj");
    fs::create_dir_all(&obj_dir).unwrap();
    let cache = ObjectCache::open(&ctx.cache);
    let shared = SharedInputs::read(
        &ctx.vendor.join(STAMP),
        &ctx.cutlass_moe_dir().join(STAMP),
        &ctx.csrc(),
    );
    let mut keys = Keys::new(
        shared,
        ctx.csrc(),
        &ctx.vendor,
        &ctx.cutlass_moe_dir(),
        &ctx.root,
    );
    let queue: Mutex<VecDeque<(Job, String)>> = Mutex::new(
        jobs.into_iter()
            .map(|job| {
                let key = keys.key(&job);
                (job, key)
            })
            .collect(),
    );
    let total = queue.lock().unwrap().len();
    let started_all = std::time::Instant::now();
    let build_started = std::time::SystemTime::now();
    let progress = progress::Progress::open(&ctx.cache, total);
    let announced = AtomicBool::new(false);
    // Seconds each compiled unit took (the slowest are reported: what a cold build waits on);
    // one entry per compiled unit, so also the count of what the cache did not hold.
    let times: Mutex<Vec<(f64, String)>> = Mutex::new(Vec::new());
    // Cargo's jobserver, when cargo runs this script: every worker but the first holds one of
    // its tokens while its compiler runs (the first runs on the token cargo gave this
    // script), so `cargo -jN` bounds the compilers here together with the crates cargo builds
    // beside them.
    // SAFETY: called once, before any thread of this process starts; the descriptors it
    // names (CARGO_MAKEFLAGS) are cargo's, inherited for this purpose.
    let jobserver = unsafe { jobserver::Client::from_env() };
    // Each worker takes the next job until none is left; results come back through join.
    let outcomes: Vec<Result<(String, PathBuf), String>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..ctx.jobs)
            .map(|worker| {
                let (queue, cache, progress, announced, times, obj_dir, jobserver) = (
                    &queue, &cache, &progress, &announced, &times, &obj_dir, &jobserver,
                );
                s.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        // The lock is released before the job runs: in a `while let` the
                        // guard would live through the loop body and make the workers take
                        // turns (a cold build on 2 cores then ran one compiler at a time).
                        let next = queue.lock().unwrap().pop_front();
                        let Some((job, key)) = next else { break };
                        let object = obj_dir.join(format!("{}.o", job.name));
                        let outcome = match cache.fetch(&job.name, &key, &object) {
                            Some(fetched) => {
                                progress.end(&job.name, None);
                                fetched
                            }
                            None => {
                                if !announced.swap(true, Ordering::Relaxed) {
                                    progress.cold(&all_targets(&ctx.archs).join(","));
                                }
                                // Released when the compiler is done (dropped below). A
                                // jobserver that fails is not worth failing the build for.
                                let token = match jobserver {
                                    Some(client) if worker > 0 => client.acquire().ok(),
                                    _ => None,
                                };
                                progress.begin(&job.name);
                                let started = std::time::Instant::now();
                                let outcome = compile(&job, &object)
                                    .map(|()| cache.store(&job.name, &key, &object));
                                let secs = started.elapsed().as_secs_f64();
                                drop(token);
                                progress.end(&job.name, Some(secs));
                                times.lock().unwrap().push((secs, job.name.clone()));
                                outcome
                            }
                        };
                        done.push(
                            outcome
                                .map(|()| (job.name.clone(), object))
                                .map_err(|e| format!("{}: {e}", job.name)),
                        );
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("a build worker panicked"))
            .collect()
    });
    let (mut objects, mut errors) = (Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            Ok(object) => objects.push(object),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        fail(&format!("compilation failed:\n{}", errors.join("\n")));
    }
    let mut times = times.into_inner().unwrap();
    let compiled = times.len();
    times.sort_by(|a, b| b.0.total_cmp(&a.0));
    let slowest: Vec<String> = times
        .iter()
        .take(6)
        .map(|(secs, name)| format!("{name} {secs:.0}s"))
        .collect();
    println!(
        "cargo:warning=flashinfer-sys: kernels for {} ready: {total} objects, {compiled} compiled, {} from the object cache, {:.0}s{}",
        all_targets(&ctx.archs).join(","),
        total - compiled,
        started_all.elapsed().as_secs_f64(),
        if slowest.is_empty() {
            String::new()
        } else {
            format!(" (slowest: {})", slowest.join(", "))
        }
    );
    cache.evict(build_started);
    objects.sort();
    objects
}

fn compile(job: &Job, object: &Path) -> Result<(), String> {
    let out = Command::new(&job.program)
        .args(&job.args)
        .arg("-c")
        .arg(&job.source)
        .arg("-o")
        .arg(object)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", job.program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.contains("warning")).collect();
        Err(format!(
            "{} {} exited with {}:\n{}",
            job.program.display(),
            job.source.display(),
            out.status,
            errors.join("\n")
        ))
    }
}

fn archive_and_link(ctx: &Ctx, cuda: &Cuda, objects: Vec<(String, PathBuf)>) {
    let (tvm, ours): (Vec<_>, Vec<_>) = objects
        .into_iter()
        .partition(|(n, _)| n.starts_with("tvm_ffi_"));
    archive(ctx, "flashinfer_rs_kernels", &ours);
    archive(ctx, "flashinfer_rs_tvm_ffi", &tvm);
    // Static cudart: binaries need only the driver at run time.
    let cudart_dir = ["lib64", "lib", "targets/x86_64-linux/lib"]
        .iter()
        .map(|lib| cuda.home.join(lib))
        .find(|dir| dir.join("libcudart_static.a").exists());
    let search: Vec<PathBuf> = std::iter::once(ctx.out_dir.clone())
        .chain(cudart_dir)
        .collect();
    let libs = [
        "static=flashinfer_rs_kernels",
        "static=flashinfer_rs_tvm_ffi",
        "static=cudart_static",
        "dylib=stdc++",
        "dylib=dl",
        "dylib=pthread",
        "dylib=rt",
    ];
    // The same link line, for scripts/kernels-lib.sh (which links these into a shared library).
    let mut line = String::new();
    for dir in &search {
        println!("cargo:rustc-link-search=native={}", dir.display());
        line.push_str(&format!("search {}\n", dir.display()));
    }
    for lib in libs {
        println!("cargo:rustc-link-lib={lib}");
        line.push_str(&format!("lib {lib}\n"));
    }
    line.push_str(&format!("targets {}\n", all_targets(&ctx.archs).join(",")));
    fs::write(ctx.out_dir.join("kernels-link.txt"), line)
        .unwrap_or_else(|e| fail(&format!("cannot write kernels-link.txt: {e}")));
    println!("cargo:rustc-cfg=flashinfer_kernels");
    // For the architecture test (tests/archs.rs): the archive and the disassembler.
    println!(
        "cargo:rustc-env=FLASHINFER_RS_KERNEL_ARCHIVE={}",
        ctx.out_dir.join("libflashinfer_rs_kernels.a").display()
    );
    let cuobjdump = cuda.home.join("bin/cuobjdump");
    let cuobjdump = if cuobjdump.exists() {
        cuobjdump
    } else {
        PathBuf::from("cuobjdump")
    };
    println!(
        "cargo:rustc-env=FLASHINFER_RS_CUOBJDUMP={}",
        cuobjdump.display()
    );
    let release = cuda
        .version_text
        .lines()
        .last()
        .unwrap_or("")
        .trim()
        .to_string();
    println!("cargo:rustc-env=FLASHINFER_RS_NVCC={release}");
}

fn archive(ctx: &Ctx, name: &str, objects: &[(String, PathBuf)]) {
    let lib = ctx.out_dir.join(format!("lib{name}.a"));
    let _ = fs::remove_file(&lib);
    let ar = env::var_os("AR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("ar"));
    let status = Command::new(&ar)
        .arg("crs")
        .arg(&lib)
        .args(objects.iter().map(|(_, p)| p))
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {}: {e}", ar.display())));
    if !status.success() {
        fail(&format!(
            "{} failed to build {}",
            ar.display(),
            lib.display()
        ));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("\nerror: flashinfer-sys: {msg}\n");
    std::process::exit(1);
}
