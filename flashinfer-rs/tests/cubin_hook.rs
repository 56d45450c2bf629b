//! The cubin path a fused launch takes, end to end on the CPU: upstream's `getCubin` hook ->
//! our C trampoline -> the installed Rust store (sha256 checks) -> upstream's buffer. Its own
//! process, since the installed store is process-wide.
use std::io::Write;
use std::path::PathBuf;

use flashinfer_rs::fused::cubin::{self, CubinStore};
use flashinfer_rs::Error;

const ARTIFACT: &str = "hook-test/batched_gemm-x";

fn artifact() -> PathBuf {
    let root = std::env::temp_dir().join(format!("fi-cubin-hook-{}", std::process::id()));
    let dir = root.join(ARTIFACT);
    std::fs::create_dir_all(&dir).unwrap();
    let good = vec![0x7fu8; 4096];
    std::fs::write(dir.join("Good.cubin"), &good).unwrap();
    std::fs::write(dir.join("Bad.cubin"), b"altered").unwrap();
    let sha = |b: &[u8]| {
        use sha2::Digest;
        sha2::Sha256::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    };
    let mut list = std::fs::File::create(dir.join("checksums.txt")).unwrap();
    writeln!(list, "{}  Good.cubin", sha(&good)).unwrap();
    writeln!(list, "{}  Bad.cubin", sha(b"original")).unwrap();
    root
}

// One test: the installed store is process-wide, and these steps install two in turn.
#[test]
fn a_cubin_goes_through_upstreams_hook_checked() {
    let root = artifact();
    cubin::install(CubinStore::open(&root, ARTIFACT).unwrap()).unwrap();
    let good = cubin::probe(&format!("{ARTIFACT}/Good.cubin"), "");
    let bad = cubin::probe(&format!("{ARTIFACT}/Bad.cubin"), "");
    let unlisted = cubin::probe(&format!("{ARTIFACT}/Missing.cubin"), "");
    std::fs::remove_dir_all(&root).unwrap();
    if !flashinfer_rs::build_info().sm100 {
        assert_eq!(good, Err(Error::KernelsNotBuilt));
        eprintln!("skipped: the cubin hook is in the sm100 build only");
        return;
    }
    assert_eq!(good, Ok(4096));
    assert!(
        matches!(bad, Err(Error::Cubin(ref m)) if m.contains("altered")),
        "{bad:?}"
    );
    assert!(
        matches!(unlisted, Err(Error::Cubin(ref m)) if m.contains("not listed")),
        "{unlisted:?}"
    );
}
