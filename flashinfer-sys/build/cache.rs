//! The content-addressed object cache of the kernel build: a fresh clone on a machine that
//! compiled the same inputs before (CI) links in seconds instead of compiling for 15-25
//! minutes.
//!
//! An object's key covers the compiler (name and `--version`), its arguments with the
//! checkout's and the fetched tree's paths replaced by placeholders, the source, and the
//! inputs every unit shares ([`SharedInputs`]). Objects live in `<cache>/objects/` as
//! `<unit>-<key>.o`, are written then renamed (a concurrent build never reads half a file),
//! touched on every hit, and evicted after 14 days unused or, least recently used first, when
//! the cache outgrows its size bound (a machine whose builds see many keys, such as a CI
//! machine over weeks of commits, must not fill its disk with objects it will never read).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use super::{collect_files, eviction, Job, Tree};

/// The environment variables nvcc reads extra flags from.
pub const NVCC_ENV_FLAGS: [&str; 2] = ["NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS"];

/// Objects unused this long are removed.
const HORIZON: Duration = Duration::from_secs(14 * 24 * 3600);

/// The cache's default size bound in MiB (`FLASHINFER_RS_OBJECT_CACHE_MIB` sets another): a
/// full set of objects, both architectures and every feature, took 34 MiB (session 22), so
/// this keeps about 30 sets (branches, toolchains) and bounds what weeks of commits leave.
const DEFAULT_BOUND_MIB: u64 = 1024;

/// The cache directory, or none (`FLASHINFER_RS_NO_OBJECT_CACHE`).
pub struct ObjectCache {
    dir: Option<PathBuf>,
}

impl ObjectCache {
    /// `<cache_root>/objects`, created if missing; disabled by `FLASHINFER_RS_NO_OBJECT_CACHE`.
    pub fn open(cache_root: &Path) -> ObjectCache {
        if std::env::var_os("FLASHINFER_RS_NO_OBJECT_CACHE").is_some() {
            return ObjectCache { dir: None };
        }
        let dir = cache_root.join("objects");
        let _ = fs::create_dir_all(&dir);
        ObjectCache { dir: Some(dir) }
    }

    fn path(&self, name: &str, key: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{name}-{key}.o")))
    }

    /// Copies the cached object of `name`/`key` to `object`; `None` on a miss.
    pub fn fetch(&self, name: &str, key: &str, object: &Path) -> Option<Result<(), String>> {
        let cached = self.path(name, key).filter(|p| p.exists())?;
        // Mark it used, so eviction keeps it.
        let _ = fs::File::options()
            .append(true)
            .open(&cached)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Some(
            fs::copy(&cached, object)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        )
    }

    /// Stores a freshly compiled `object` (best effort: a full disk only costs a rebuild).
    pub fn store(&self, name: &str, key: &str, object: &Path) {
        let (Some(dir), Some(cached)) = (&self.dir, self.path(name, key)) else {
            return;
        };
        let tmp = dir.join(format!(".{name}-{key}.{}", std::process::id()));
        if fs::copy(object, &tmp).is_ok() {
            let _ = fs::rename(&tmp, &cached);
        }
    }

    /// Removes objects unused for [`HORIZON`] (other inputs, flags or compilers), then, least
    /// recently used first, what exceeds the size bound, sparing every object this build
    /// used (touched at or after `build_started`); see build/eviction.rs.
    pub fn evict(&self, build_started: SystemTime) {
        let Some(dir) = &self.dir else { return };
        let bound_mib = std::env::var("FLASHINFER_RS_OBJECT_CACHE_MIB")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(DEFAULT_BOUND_MIB);
        eviction::evict(
            dir,
            bound_mib.saturating_mul(1 << 20),
            HORIZON,
            build_started,
        );
    }
}

/// What jobs depend on besides their own source and arguments: upstream's translation units
/// on the fetched tree's stamp (the wheels, plus any patch that touches a header); ours
/// (under csrc/) on our headers too, so editing the C ABI header rebuilds the shim and not
/// the 20 minutes of upstream kernels. A patch that touches only a .cu file is covered by
/// that file's own hash. The CUTLASS MoE's units, upstream's and ours, also depend on its
/// own tree's stamp (its wheel, extraction, generator and patches), which no other unit sees.
pub struct SharedInputs {
    upstream: String,
    ours: String,
    cutlass_moe: String,
}

impl SharedInputs {
    /// From the fetched trees' stamp files and our csrc/ directory.
    pub fn read(stamp: &Path, cutlass_moe_stamp: &Path, csrc: &Path) -> SharedInputs {
        let mut h = Sha256::new();
        h.update(fs::read(stamp).unwrap_or_default());
        let upstream = hex(h.clone().finalize().as_slice());
        let mut headers = Vec::new();
        collect_files(csrc, "h", &mut headers);
        hash_files(&mut h, csrc, headers);
        let cutlass_moe = hex(&Sha256::digest(
            fs::read(cutlass_moe_stamp).unwrap_or_default(),
        ));
        SharedInputs {
            upstream,
            ours: hex(h.finalize().as_slice()),
            cutlass_moe,
        }
    }
}

/// Computes object keys: the shared inputs, compiler versions (asked once per compiler) and
/// the path placeholders.
pub struct Keys {
    shared: SharedInputs,
    csrc: PathBuf,
    /// `(path, placeholder)`, longest path first: the fetched tree usually lives inside the
    /// checkout.
    roots: Vec<(String, &'static str)>,
    versions: HashMap<PathBuf, Vec<u8>>,
}

impl Keys {
    pub fn new(
        shared: SharedInputs,
        csrc: PathBuf,
        vendor: &Path,
        cutlass_moe: &Path,
        root: &Path,
    ) -> Keys {
        let mut roots = vec![
            (vendor.to_string_lossy().into_owned(), "<vendor>"),
            (root.to_string_lossy().into_owned(), "<root>"),
            (cutlass_moe.to_string_lossy().into_owned(), "<cutlass-moe>"),
        ];
        // Longest first: one may contain another (the CUTLASS MoE tree's path starts with the
        // main tree's). Stable, so the other two keep their order and their keys.
        roots.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));
        Keys {
            shared,
            csrc,
            roots,
            versions: HashMap::new(),
        }
    }

    /// The cache key of one object. Paths of the checkout and of the fetched tree are
    /// replaced by placeholders, so a fresh clone elsewhere (CI) finds the objects an earlier
    /// build of the same inputs made. (Such an object's upstream assertion messages then name
    /// the paths of the tree that first compiled it; nothing else in an object depends on
    /// them: no debug info.)
    pub fn key(&mut self, job: &Job) -> String {
        let version = self.versions.entry(job.program.clone()).or_insert_with(|| {
            Command::new(&job.program)
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        });
        let shared = if job.source.starts_with(&self.csrc) {
            &self.shared.ours
        } else {
            &self.shared.upstream
        };
        let mut h = Sha256::new();
        h.update(shared.as_bytes());
        if job.tree == Tree::CutlassMoe {
            h.update(self.shared.cutlass_moe.as_bytes());
        }
        h.update(
            job.program
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(&version[..]);
        // nvcc adds these to every command line it runs; they change the object like
        // arguments do (keys made without them set stay what they were).
        for var in NVCC_ENV_FLAGS {
            if let Some(v) = std::env::var_os(var) {
                h.update(var.as_bytes());
                h.update(v.as_encoded_bytes());
            }
        }
        for a in &job.args {
            let mut a = a.clone();
            for (path, placeholder) in &self.roots {
                a = a.replace(path.as_str(), placeholder);
            }
            h.update(a.as_bytes());
            h.update([0]);
        }
        h.update(fs::read(&job.source).unwrap_or_default());
        hex(&h.finalize()[..16])
    }
}

/// Hashes files by their path below `base` (not the absolute path: clones elsewhere share
/// keys) and their content.
fn hash_files(h: &mut Sha256, base: &Path, mut files: Vec<PathBuf>) {
    files.sort();
    for p in files {
        h.update(
            p.strip_prefix(base)
                .unwrap_or(&p)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(fs::read(&p).unwrap_or_default());
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
