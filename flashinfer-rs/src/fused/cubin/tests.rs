//! The cubin store on a throwaway artifact: good, altered, missing, unlisted and escaping
//! files, and the callback's error and panic paths.
use super::*;
use std::io::Write;

const ARTIFACT: &str = "abc123/batched_gemm-test";

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An artifact with `good.cubin` (listed, intact), `bad.cubin` (listed, altered) and
/// `stray.cubin` (present, unlisted); `gone.cubin` is listed but absent.
fn artifact() -> (Tmp, CubinStore, String) {
    let root = std::env::temp_dir().join(format!(
        "fi-cubin-test-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let dir = root.join(ARTIFACT);
    std::fs::create_dir_all(&dir).unwrap();
    let good = b"\x7fELF good cubin bytes".to_vec();
    let good_sha = hex(&Sha256::digest(&good));
    std::fs::write(dir.join("Good.cubin"), &good).unwrap();
    std::fs::write(dir.join("Bad.cubin"), b"tampered").unwrap();
    std::fs::write(dir.join("Stray.cubin"), b"x").unwrap();
    let mut list = std::fs::File::create(dir.join("checksums.txt")).unwrap();
    writeln!(list, "{good_sha}  Good.cubin").unwrap();
    writeln!(list, "{}  Bad.cubin", "0".repeat(64)).unwrap();
    writeln!(list, "{}  Gone.cubin", "1".repeat(64)).unwrap();
    let store = CubinStore::open(&root, ARTIFACT).unwrap();
    (Tmp(root), store, good_sha)
}

fn cubin_err(r: Result<Vec<u8>>) -> String {
    match r {
        Err(Error::Cubin(m)) => m,
        other => panic!("expected a cubin error, got {other:?}"),
    }
}

#[test]
fn an_intact_listed_cubin_loads() {
    let (_tmp, store, sha) = artifact();
    assert_eq!(store.len(), 3);
    let bytes = store.load(&format!("{ARTIFACT}/Good.cubin"), &sha).unwrap();
    assert!(bytes.starts_with(b"\x7fELF"));
    // Upstream may pass no hash; the checksum list still applies.
    store.load(&format!("{ARTIFACT}/Good.cubin"), "").unwrap();
}

#[test]
fn an_altered_cubin_is_refused_with_both_hashes() {
    let (_tmp, store, _) = artifact();
    let m = cubin_err(store.load(&format!("{ARTIFACT}/Bad.cubin"), ""));
    assert!(m.contains("altered") && m.contains(&"0".repeat(64)), "{m}");
}

#[test]
fn a_missing_cubin_names_the_fetch_command() {
    let (_tmp, store, _) = artifact();
    let m = cubin_err(store.load(&format!("{ARTIFACT}/Gone.cubin"), ""));
    assert!(m.contains("flashinfer-sys/vendor/fetch.py"), "{m}");
}

#[test]
fn unlisted_foreign_and_escaping_paths_are_refused() {
    let (_tmp, store, sha) = artifact();
    let m = cubin_err(store.load(&format!("{ARTIFACT}/Stray.cubin"), ""));
    assert!(m.contains("not listed"), "{m}");
    let m = cubin_err(store.load("other/Good.cubin", ""));
    assert!(m.contains("pinned artifact"), "{m}");
    let m = cubin_err(store.load(&format!("{ARTIFACT}/../x/Good.cubin"), ""));
    assert!(m.contains("plain relative"), "{m}");
    let m = cubin_err(store.load("/etc/passwd", ""));
    assert!(m.contains("plain relative"), "{m}");
    // Upstream's kernel table and the checksum list must agree.
    let m = cubin_err(store.load(&format!("{ARTIFACT}/Good.cubin"), &"f".repeat(64)));
    assert!(m.contains("upstream expects") && m.contains(&sha), "{m}");
}

#[test]
fn a_missing_or_malformed_checksum_list_is_a_cubin_error() {
    let root = std::env::temp_dir().join(format!("fi-cubin-none-{}", std::process::id()));
    let m = match CubinStore::open(&root, ARTIFACT) {
        Err(Error::Cubin(m)) => m,
        other => panic!("{other:?}"),
    };
    assert!(
        m.contains("checksums.txt") && m.contains("flashinfer-sys/vendor/fetch.py"),
        "{m}"
    );
    let dir = root.join(ARTIFACT);
    std::fs::create_dir_all(&dir).unwrap();
    let _tmp = Tmp(root.clone());
    std::fs::write(dir.join("checksums.txt"), "nothex  A.cubin\n").unwrap();
    assert!(matches!(
        CubinStore::open(&root, ARTIFACT),
        Err(Error::Cubin(_))
    ));
}

extern "C" fn collect(ctx: *mut c_void, data: *const u8, len: usize) {
    // SAFETY: the tests pass a &mut Vec<u8> as ctx and `answer` passes a live slice.
    unsafe { (*(ctx as *mut Vec<u8>)).extend_from_slice(std::slice::from_raw_parts(data, len)) }
}

fn call(load: impl FnOnce() -> Result<Vec<u8>>) -> (i32, Vec<u8>, String) {
    let mut sunk = Vec::new();
    let mut err = [0 as c_char; 64];
    // SAFETY: `err` has 64 bytes; `collect` matches the sink contract with `sunk`.
    let rc = unsafe {
        answer(
            load,
            Some(collect),
            &mut sunk as *mut Vec<u8> as *mut c_void,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    // SAFETY: `answer` NUL-terminates within the buffer.
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    (rc, sunk, msg)
}

#[test]
fn the_callback_sinks_bytes_or_reports_and_never_unwinds() {
    assert_eq!(
        call(|| Ok(vec![1, 2, 3])),
        (0, vec![1, 2, 3], String::new())
    );
    let (rc, sunk, msg) = call(|| Err(Error::Cubin("nope".into())));
    assert_eq!((rc, sunk.len(), msg.as_str()), (1, 0, "nope"));
    let (rc, _, msg) = call(|| panic!("loader bug"));
    assert_eq!((rc, msg.as_str()), (1, "the cubin loader panicked"));
    // Long messages are cut to the buffer, still NUL-terminated.
    let (rc, _, msg) = call(|| Err(Error::Cubin("x".repeat(500))));
    assert_eq!((rc, msg.len()), (1, 63));
}
