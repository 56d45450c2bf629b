//! The fused MoE's GEMM cubins: read from the pinned artifact in the local cubin cache, each
//! checked against the artifact's `checksums.txt` (sha256) and against the hash upstream's
//! kernel table expects, before the bytes reach the driver. Nothing is downloaded at run time
//! (`python3 flashinfer-sys/vendor/fetch.py sources` fills the cache).
//!
//! Upstream asks for a cubin through a process-wide C callback the first time a kernel runs in
//! a context; [`install`] registers ours. The callback never unwinds: errors and panics become
//! a message the C shim turns into `Error::Cubin`.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, RwLock};

use flashinfer_sys as sys;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::ffi::check;

/// The pinned cubin artifact on disk: `<root>/<artifact>/` plus its checksum list.
#[derive(Debug, Clone)]
pub struct CubinStore {
    root: PathBuf,
    artifact: String,
    /// File name → lowercase hex sha256, from checksums.txt.
    checksums: HashMap<String, String>,
}

impl CubinStore {
    /// The store `flashinfer-sys/vendor/fetch.py` fills: `$FLASHINFER_CUBIN_DIR`, else
    /// `$FLASHINFER_RS_CACHE/cubins`, else `~/.cache/flashinfer-rs/cubins`, with the artifact
    /// this build pins ([`flashinfer_sys::BMM_ARTIFACT`]).
    pub fn from_env() -> Result<CubinStore> {
        let root = if let Some(dir) = std::env::var_os("FLASHINFER_CUBIN_DIR") {
            PathBuf::from(dir)
        } else if let Some(cache) = std::env::var_os("FLASHINFER_RS_CACHE") {
            PathBuf::from(cache).join("cubins")
        } else {
            let home = std::env::var_os("HOME").ok_or_else(|| {
                Error::Cubin("set FLASHINFER_CUBIN_DIR: no HOME to find the cubin cache".into())
            })?;
            PathBuf::from(home).join(".cache/flashinfer-rs/cubins")
        };
        CubinStore::open(root, sys::BMM_ARTIFACT)
    }

    /// The store at `root` for `artifact` (a path relative to `root`); reads its checksums.
    pub fn open(root: impl Into<PathBuf>, artifact: &str) -> Result<CubinStore> {
        let root = root.into();
        let list = root.join(artifact).join("checksums.txt");
        let text = std::fs::read_to_string(&list).map_err(|e| {
            Error::Cubin(format!(
                "cannot read {} ({e}); fetch the pinned cubins with `python3 flashinfer-sys/vendor/fetch.py sources`",
                list.display()
            ))
        })?;
        let mut checksums = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(sha), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(Error::Cubin(format!(
                    "{}:{}: expected `<sha256>  <file>`",
                    list.display(),
                    n + 1
                )));
            };
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Cubin(format!(
                    "{}:{}: `{sha}` is not a sha256",
                    list.display(),
                    n + 1
                )));
            }
            checksums.insert(name.to_string(), sha.to_ascii_lowercase());
        }
        Ok(CubinStore {
            root,
            artifact: artifact.to_string(),
            checksums,
        })
    }

    /// The artifact path relative to the root (what upstream prefixes cubin names with).
    pub fn artifact(&self) -> &str {
        &self.artifact
    }

    /// The file names the checksum list names, sorted.
    pub fn files(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.checksums.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Number of cubins the checksum list names.
    pub fn len(&self) -> usize {
        self.checksums.len()
    }

    /// Whether the checksum list is empty.
    pub fn is_empty(&self) -> bool {
        self.checksums.is_empty()
    }

    /// The bytes of `path` (`<artifact>/<file>.cubin`, as upstream asks), after checking that
    /// the file is one of the artifact's, that its sha256 equals the checksum list's, and that
    /// it equals `expected_sha256` when upstream gives one.
    pub fn load(&self, path: &str, expected_sha256: &str) -> Result<Vec<u8>> {
        let rel = Path::new(path);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(Error::Cubin(format!(
                "refusing cubin path `{path}`: not a plain relative path"
            )));
        }
        let file = rel
            .strip_prefix(&self.artifact)
            .ok()
            .and_then(|f| f.to_str())
            .filter(|f| !f.contains('/'))
            .ok_or_else(|| {
                Error::Cubin(format!(
                    "`{path}` is not a file of the pinned artifact {}",
                    self.artifact
                ))
            })?;
        let listed = self.checksums.get(file).ok_or_else(|| {
            Error::Cubin(format!(
                "{file} is not listed in {}/checksums.txt",
                self.artifact
            ))
        })?;
        if !expected_sha256.is_empty() && !expected_sha256.eq_ignore_ascii_case(listed) {
            return Err(Error::Cubin(format!(
                "{file}: upstream expects sha256 {expected_sha256}, checksums.txt lists {listed}"
            )));
        }
        let full = self.root.join(path);
        let bytes = std::fs::read(&full).map_err(|e| {
            Error::Cubin(format!(
                "cannot read {} ({e}); run `python3 flashinfer-sys/vendor/fetch.py sources`",
                full.display()
            ))
        })?;
        let actual = hex(&Sha256::digest(&bytes));
        if &actual != listed {
            return Err(Error::Cubin(format!(
                "{} is altered: sha256 {actual}, checksums.txt lists {listed}",
                full.display()
            )));
        }
        Ok(bytes)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The store the process-wide callback reads.
static STORE: RwLock<Option<Arc<CubinStore>>> = RwLock::new(None);

/// Makes `store` the source of every cubin the fused MoE loads from now on (process-wide).
pub fn install(store: CubinStore) -> Result<()> {
    *STORE.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(store));
    // SAFETY: `cubin_callback` matches fi_cubin_loader and never unwinds; it reads the
    // store from the static above, so the user pointer is unused.
    check(unsafe { sys::fi_set_cubin_loader(Some(cubin_callback), std::ptr::null_mut()) })
}

/// Installs [`CubinStore::from_env`] unless a store is installed already. Called by every
/// fused call before launching, so a missing cubin cache is an error before any kernel runs.
pub(crate) fn ensure_installed() -> Result<()> {
    if is_installed() {
        return Ok(());
    }
    install(CubinStore::from_env()?)
}

/// Whether a store is installed (one read lock).
pub(crate) fn is_installed() -> bool {
    STORE.read().unwrap_or_else(|p| p.into_inner()).is_some()
}

/// Loads the cubin at `path` (`<artifact>/<file>.cubin`) through upstream's own hook, exactly
/// as the first fused launch of that kernel would (upstream -> our C trampoline -> the
/// installed store), and returns its size. Needs no GPU: a pre-flight check that a
/// deployment's cubin cache is intact. Installs [`CubinStore::from_env`] if no store is.
pub fn probe(path: &str, expected_sha256: &str) -> Result<usize> {
    ensure_installed()?;
    let c = |s: &str, arg| {
        std::ffi::CString::new(s).map_err(|_| Error::invalid(arg, "contains a NUL byte"))
    };
    let (path, sha) = (c(path, "path")?, c(expected_sha256, "expected_sha256")?);
    let mut size = 0usize;
    // SAFETY: both strings are NUL-terminated and live across the call; `size` is valid.
    check(unsafe { sys::fi_cubin_probe(path.as_ptr(), sha.as_ptr(), &mut size) })?;
    Ok(size)
}

fn load_from_installed(path: &str, sha: &str) -> Result<Vec<u8>> {
    let store = STORE
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| Error::Cubin("no cubin store is installed".into()))?;
    store.load(path, sha)
}

/// The `fi_cubin_loader` upstream's hook reaches through our C shim.
unsafe extern "C" fn cubin_callback(
    _user: *mut c_void,
    path: *const c_char,
    sha256: *const c_char,
    sink: sys::fi_cubin_sink,
    sink_ctx: *mut c_void,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    // SAFETY: the shim passes NUL-terminated strings (or NULL, refused in `answer`) that live
    // for the call, and an `err` buffer of `err_cap` bytes.
    unsafe {
        answer(
            || {
                if path.is_null() || sha256.is_null() {
                    return Err(Error::Cubin("the cubin hook passed a NULL path".into()));
                }
                let path = CStr::from_ptr(path).to_string_lossy();
                let sha = CStr::from_ptr(sha256).to_string_lossy();
                load_from_installed(&path, &sha)
            },
            sink,
            sink_ctx,
            err,
            err_cap,
        )
    }
}

/// Runs `load` with panics caught and reports its outcome the way `fi_cubin_loader` must:
/// bytes to `sink` and 0, or a message in `err` and 1. Nothing unwinds out of it.
///
/// # Safety
/// `err` must point to `err_cap` writable bytes (or be NULL); `sink`, if given, must be safe
/// to call with `sink_ctx` and a byte slice.
unsafe fn answer(
    load: impl FnOnce() -> Result<Vec<u8>>,
    sink: sys::fi_cubin_sink,
    sink_ctx: *mut c_void,
    err: *mut c_char,
    err_cap: usize,
) -> i32 {
    let outcome = catch_unwind(AssertUnwindSafe(load));
    let message = match outcome {
        Ok(Ok(bytes)) => match sink {
            Some(sink) => {
                // SAFETY: per this function's contract.
                unsafe { sink(sink_ctx, bytes.as_ptr(), bytes.len()) };
                return 0;
            }
            None => "the cubin hook passed no sink".to_string(),
        },
        Ok(Err(Error::Cubin(m))) => m,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the cubin loader panicked".to_string(),
    };
    if !err.is_null() && err_cap > 0 {
        let n = message.len().min(err_cap - 1);
        // SAFETY: `err` holds `err_cap` bytes and we write `n + 1 <= err_cap`.
        unsafe {
            std::ptr::copy_nonoverlapping(message.as_ptr(), err.cast::<u8>(), n);
            *err.add(n) = 0;
        }
    }
    1
}

#[cfg(test)]
mod tests;
