//! What the object cache removes after a build (build/cache.rs): objects unused for the
//! horizon, then the least recently used beyond the size bound, never one the build used; and
//! half-written files a killed build left. A module of its own, with nothing of the build
//! script's, so tests/object_cache.rs runs it on a real directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Half-written files (`.`-prefixed, build/cache.rs) older than this belong to no live build.
const LEFTOVER_AGE: Duration = Duration::from_secs(24 * 3600);

/// Removes from `dir` every object unused (modified) for longer than `horizon`, then the least
/// recently used objects until the rest fit in `bound` bytes, sparing any used at or after
/// `build_started`. Returns the paths it removed. Errors are ignored: eviction is best effort
/// (a file another build removed first, say).
pub fn evict(dir: &Path, bound: u64, horizon: Duration, build_started: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    let mut objects: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let Ok(used) = meta.modified() else { continue };
        let age = used.elapsed().unwrap_or_default();
        let leftover = entry.file_name().to_string_lossy().starts_with('.');
        if (leftover && age > LEFTOVER_AGE) || age > horizon {
            removed.push(entry.path());
        } else if !leftover {
            objects.push((used, meta.len(), entry.path()));
        }
    }
    objects.sort_by_key(|o| std::cmp::Reverse(o.0)); // most recently used first
    let mut kept = 0u64;
    for (used, len, path) in objects {
        kept = kept.saturating_add(len);
        if kept > bound && used < build_started {
            removed.push(path);
        }
    }
    removed.retain(|p| fs::remove_file(p).is_ok());
    removed
}
