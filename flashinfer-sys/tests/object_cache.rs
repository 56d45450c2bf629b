//! The object cache's eviction (build/eviction.rs, which the build script runs after every
//! kernel build) on a real directory: the horizon, the size bound taken least recently used
//! first, the objects of the running build spared, half-written leftovers.
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

#[path = "../build/eviction.rs"]
mod eviction;

const DAY: Duration = Duration::from_secs(24 * 3600);
const HORIZON: Duration = Duration::from_secs(14 * 24 * 3600);

/// A scratch cache under the workspace's target directory, emptied per test.
fn cache(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/object-cache-tests")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `name` with `len` bytes, last used `ago` before now.
fn object(dir: &Path, name: &str, len: usize, ago: Duration) {
    let path = dir.join(name);
    fs::write(&path, vec![0u8; len]).unwrap();
    let file = fs::File::options().append(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

fn left(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_least_recently_used_go_first_until_the_rest_fit() {
    let dir = cache("lru");
    object(&dir, "a-1.o", 100, 4 * DAY);
    object(&dir, "b-1.o", 100, 3 * DAY);
    object(&dir, "c-1.o", 100, 2 * DAY);
    object(&dir, "d-1.o", 100, DAY);
    let started = SystemTime::now();
    let removed = eviction::evict(&dir, 250, HORIZON, started);
    assert_eq!(removed.len(), 2);
    assert_eq!(left(&dir), ["c-1.o", "d-1.o"]);
    // Within the bound: nothing more goes.
    assert!(eviction::evict(&dir, 250, HORIZON, started).is_empty());
}

#[test]
fn the_running_build_keeps_its_own_objects_beyond_the_bound() {
    let dir = cache("own");
    object(&dir, "old-1.o", 100, 2 * DAY);
    let started = SystemTime::now() - Duration::from_secs(600);
    object(&dir, "new-1.o", 300, Duration::from_secs(60));
    object(&dir, "new-2.o", 300, Duration::ZERO);
    eviction::evict(&dir, 100, HORIZON, started);
    assert_eq!(left(&dir), ["new-1.o", "new-2.o"]);
}

#[test]
fn stale_objects_and_dead_builds_leftovers_go_whatever_the_bound() {
    let dir = cache("stale");
    object(&dir, "stale-1.o", 10, HORIZON + DAY);
    object(&dir, "fresh-1.o", 10, DAY);
    object(&dir, ".dead-1.123", 10, 2 * DAY);
    object(&dir, ".live-1.456", 10, Duration::from_secs(60));
    eviction::evict(&dir, u64::MAX, HORIZON, SystemTime::now());
    assert_eq!(left(&dir), [".live-1.456", "fresh-1.o"]);
}

#[test]
fn a_missing_directory_is_no_error() {
    let dir = cache("missing").join("absent");
    assert!(eviction::evict(&dir, 0, HORIZON, SystemTime::now()).is_empty());
}
