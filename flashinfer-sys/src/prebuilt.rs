//! The prebuilt kernel library: a shared library of the kernels and the C ABI
//! (`scripts/kernels-lib.sh` builds it), loaded at run time instead of compiling the kernels,
//! so a downstream build needs neither nvcc nor the FlashInfer sources.
//!
//! A build with `FLASHINFER_RS_KERNELS_LIB=/abs/path/libflashinfer-rs-kernels-....so` calls
//! every C ABI function through a table loaded from that file at first use (the variable,
//! when set at run time, names another file). Before anything is resolved the library is
//! checked, and refused with a message that names both sides:
//! - its sha256 against the `<library>.sha256` written beside it (a truncated, corrupted or
//!   replaced file);
//! - its record (`fi_get_build_info`): C ABI version, flashinfer-sys crate version and
//!   FlashInfer version must equal this build's, and its machine-code targets must include
//!   every one this build's features ask for (`sm90`: `sm_90a`; `sm100`: `sm_100f`), and it
//!   must hold the CUTLASS fused MoE if this build has `sm90-moe`.
//!
//! A refused library makes every status-returning call answer
//! [`fi_status::FI_STATUS_KERNELS_LIBRARY_ERROR`](crate::fi_status) with that message
//! (flashinfer-rs turns it into `Error::KernelLibrary`). The checks are plain functions,
//! tested in every build.

use std::ffi::CStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{fi_build_info, fi_status, FI_ABI_VERSION};

/// What a kernel library must be for this build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirements {
    /// [`FI_ABI_VERSION`] of these bindings.
    pub abi_version: i32,
    /// This flashinfer-sys version (`0.1.0+flashinfer.0.6.13`).
    pub crate_version: String,
    /// The pinned FlashInfer version.
    pub flashinfer_version: String,
    /// Machine-code targets the enabled features need.
    pub targets: Vec<String>,
    /// Whether the CUTLASS fused MoE is needed (feature `sm90-moe`).
    pub cutlass_moe: bool,
}

impl Requirements {
    /// This build's requirements.
    pub fn of_this_build() -> Requirements {
        Requirements {
            abi_version: FI_ABI_VERSION as i32,
            crate_version: env!("CARGO_PKG_VERSION").to_string(),
            flashinfer_version: crate::FLASHINFER_VERSION.to_string(),
            targets: crate::BUILT_ARCHS
                .split(',')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
            cutlass_moe: cfg!(feature = "sm90-moe"),
        }
    }
}

/// The library a prebuilt build loads: `FLASHINFER_RS_KERNELS_LIB` at run time, else the one
/// named at build time. `None` in a build that compiled its kernels.
pub fn library_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("FLASHINFER_RS_KERNELS_LIB") {
        return Some(PathBuf::from(p));
    }
    option_env!("FLASHINFER_RS_KERNELS_LIB_DEFAULT").map(PathBuf::from)
}

/// Hex sha256 of a file's bytes.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in Sha256::digest(bytes) {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Checks the library at `path` against its sha256 file and `want`, and returns it loaded.
///
/// # Safety
/// Loading a shared library runs its initialisers: `path` must be a library you trust to be
/// a flashinfer-rs kernel library (its sha256 file is a check against accidents, not an
/// attacker who can write both).
pub unsafe fn open(path: &Path, want: &Requirements) -> Result<libloading::Library, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let sidecar = PathBuf::from(format!("{}.sha256", path.display()));
    let listed = std::fs::read_to_string(&sidecar).map_err(|e| {
        format!(
            "cannot read {} ({e}): the library's sha256, which scripts/kernels-lib.sh writes beside it",
            sidecar.display()
        )
    })?;
    let listed = listed.split_whitespace().next().unwrap_or("");
    let actual = sha256_hex(&bytes);
    if listed != actual {
        return Err(format!(
            "{shown} has sha256 {actual}, its {} says {listed}: the file was altered or replaced",
            sidecar.display()
        ));
    }
    // SAFETY: the caller trusts the file (see above); the sha256 matched.
    let library = unsafe { libloading::Library::new(path) }
        .map_err(|e| format!("cannot load {shown}: {e}"))?;
    type GetBuildInfo = unsafe extern "C" fn(*mut fi_build_info) -> fi_status;
    // SAFETY: every flashinfer-rs kernel library exports fi_get_build_info with this type.
    let get: GetBuildInfo = unsafe { library.get::<GetBuildInfo>(b"fi_get_build_info\0") }
        .map(|s| *s)
        .map_err(|e| format!("{shown} is no flashinfer-rs kernel library: {e}"))?;
    let mut record = fi_build_info::default();
    // SAFETY: `record` is a valid out-pointer; the function only writes it.
    if unsafe { get(&mut record) } != fi_status::FI_STATUS_OK {
        return Err(format!("{shown}: fi_get_build_info failed"));
    }
    // SAFETY: the record's strings are static NUL-terminated strings of the library, which
    // stays loaded while they are read.
    let text = |p: *const core::ffi::c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    // Only the first field is read before the ABI version is known to match (a library of
    // another ABI may lay the rest out differently).
    check_record(
        &Record {
            abi_version: record.abi_version,
            crate_version: if record.abi_version == want.abi_version {
                text(record.crate_version)
            } else {
                String::new()
            },
            flashinfer_version: if record.abi_version == want.abi_version {
                text(record.flashinfer_version)
            } else {
                String::new()
            },
            targets: if record.abi_version == want.abi_version {
                text(record.targets)
            } else {
                String::new()
            },
            has_cutlass_moe: record.abi_version == want.abi_version && record.has_cutlass_moe != 0,
        },
        want,
    )
    .map_err(|why| format!("{shown}: {why}"))?;
    Ok(library)
}

/// A library's record, read from its `fi_get_build_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Its C ABI version.
    pub abi_version: i32,
    /// The flashinfer-sys version that built it.
    pub crate_version: String,
    /// The FlashInfer version it was compiled from.
    pub flashinfer_version: String,
    /// Its machine-code targets, comma-separated.
    pub targets: String,
    /// Whether it holds the CUTLASS fused MoE.
    pub has_cutlass_moe: bool,
}

/// Whether a library with `record` serves a build with `want`; else what differs, both sides
/// named.
pub fn check_record(record: &Record, want: &Requirements) -> Result<(), String> {
    if record.abi_version != want.abi_version {
        return Err(format!(
            "C ABI version {} in the library, {} in this build",
            record.abi_version, want.abi_version
        ));
    }
    if record.crate_version != want.crate_version {
        return Err(format!(
            "built by flashinfer-sys {}, this build is flashinfer-sys {}",
            record.crate_version, want.crate_version
        ));
    }
    if record.flashinfer_version != want.flashinfer_version {
        return Err(format!(
            "compiled from FlashInfer {}, this build pins FlashInfer {}",
            record.flashinfer_version, want.flashinfer_version
        ));
    }
    let has: Vec<&str> = record.targets.split(',').collect();
    let missing: Vec<&str> = want
        .targets
        .iter()
        .map(String::as_str)
        .filter(|t| !has.contains(t))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "holds machine code for [{}], this build's features need [{}] (missing: {})",
            record.targets,
            want.targets.join(","),
            missing.join(",")
        ));
    }
    if want.cutlass_moe && !record.has_cutlass_moe {
        return Err(
            "holds no CUTLASS fused MoE, this build's `sm90-moe` feature needs it \
                    (build the library with `bash scripts/kernels-lib.sh sm90-moe`)"
                .to_string(),
        );
    }
    Ok(())
}

#[cfg(flashinfer_prebuilt)]
mod loaded {
    use std::ffi::CString;
    use std::sync::OnceLock;

    use crate::bindings::Table;

    static TABLE: OnceLock<Result<Table, CString>> = OnceLock::new();

    /// The library's function table, loaded and checked at first use.
    pub(crate) fn table() -> Option<&'static Table> {
        TABLE
            .get_or_init(|| {
                let load = || -> Result<Table, String> {
                    let path = super::library_path().ok_or("no library named")?;
                    let want = super::Requirements::of_this_build();
                    // SAFETY: the user named this file as the kernel library of this build;
                    // its sha256 and record are checked before any symbol is used.
                    let library = unsafe { super::open(&path, &want) }?;
                    // SAFETY: the record says this library has our ABI version.
                    unsafe { Table::load(library) }
                        .map_err(|e| format!("{}: missing C ABI function {e}", path.display()))
                };
                load().map_err(|e| {
                    CString::new(e.replace('\0', " ")).unwrap_or_else(|_| CString::default())
                })
            })
            .as_ref()
            .ok()
    }

    /// Why the library could not be used ("" when it is in use).
    pub(crate) fn load_error() -> *const core::ffi::c_char {
        match TABLE.get() {
            Some(Err(why)) => why.as_ptr(),
            _ => c"".as_ptr(),
        }
    }
}

#[cfg(flashinfer_prebuilt)]
pub(crate) use loaded::{load_error, table};

/// The status of every call while the library cannot be used.
#[cfg(flashinfer_prebuilt)]
pub(crate) fn unavailable() -> fi_status {
    fi_status::FI_STATUS_KERNELS_LIBRARY_ERROR
}
