//! vendor/fetch.py, exercised offline against wheels made on the spot: a tampered wheel is
//! refused with both hashes named, a missing one is reported, a good one is extracted once.
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// This crate's directory (vendor/ lives in it).
fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory under target/, removed and recreated per test.
fn scratch(name: &str) -> PathBuf {
    // The workspace's target directory holds the scratch trees.
    let dir = root().join("../target/fetch-tests").join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn sha256_hex(bytes: &[u8]) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import hashlib,sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A tiny wheel with one header, built with Python's zipfile.
fn make_wheel(path: &Path) -> Vec<u8> {
    let status = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile\n\
             with zipfile.ZipFile(sys.argv[1], 'w') as z:\n\
             \x20   z.writestr('pkg/include/demo.h', '#define DEMO 1\\n')\n\
             \x20   z.writestr('pkg/other.txt', 'not extracted')\n",
            path.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(status.success());
    fs::read(path).unwrap()
}

fn manifest(dir: &Path, sha: &str) -> PathBuf {
    let m = dir.join("MANIFEST.toml");
    fs::write(
        &m,
        format!(
            "[flashinfer]\nversion = \"0.0.0\"\nbmm_artifact = \"none\"\n\n\
             [[source]]\nname = \"demo\"\nversion = \"1.0\"\nfile = \"demo-1.0-py3-none-any.whl\"\n\
             sha256 = \"{sha}\"\nextract = [[\"pkg/include/\", \"demo/include/\"]]\n\n\
             [[toolchain]]\nname = \"none\"\nversion = \"0\"\nfile = \"none.whl\"\nsha256 = \"0\"\n"
        ),
    )
    .unwrap();
    m
}

fn fetch(dir: &Path, manifest: &Path) -> Output {
    Command::new("python3")
        .arg(root().join("vendor/fetch.py"))
        .args(["sources", "--offline", "--manifest"])
        .arg(manifest)
        .env("FLASHINFER_RS_CACHE", dir.join("cache"))
        .env("FLASHINFER_RS_VENDOR_DIR", dir.join("tree"))
        .env("FLASHINFER_CUBIN_DIR", dir.join("cubins"))
        .output()
        .unwrap()
}

#[test]
fn a_tampered_wheel_is_refused_naming_the_file_and_both_hashes() {
    let dir = scratch("tampered");
    let wheels = dir.join("cache/wheels");
    fs::create_dir_all(&wheels).unwrap();
    let good = make_wheel(&dir.join("good.whl"));
    let pinned = sha256_hex(&good);
    // Same name, one byte changed.
    let mut bad = good.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let wheel = wheels.join("demo-1.0-py3-none-any.whl");
    fs::write(&wheel, &bad).unwrap();
    let actual = sha256_hex(&bad);

    let out = fetch(&dir, &manifest(&dir, &pinned));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("sha256 mismatch"), "{stderr}");
    assert!(
        stderr.contains(wheel.to_str().unwrap()),
        "names the file: {stderr}"
    );
    assert!(
        stderr.contains(&pinned),
        "names the expected hash: {stderr}"
    );
    assert!(stderr.contains(&actual), "names the actual hash: {stderr}");
    assert!(
        !dir.join("tree").exists(),
        "nothing is extracted from a refused wheel"
    );
}

#[test]
fn a_missing_wheel_offline_is_an_error() {
    let dir = scratch("missing");
    let out = fetch(&dir, &manifest(&dir, &"0".repeat(64)));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("is missing and --offline was given"),
        "{stderr}"
    );
}

#[test]
fn a_verified_wheel_is_extracted_once_and_then_left_alone() {
    let dir = scratch("good");
    let wheels = dir.join("cache/wheels");
    fs::create_dir_all(&wheels).unwrap();
    let good = make_wheel(&wheels.join("demo-1.0-py3-none-any.whl"));
    let m = manifest(&dir, &sha256_hex(&good));

    let first = fetch(&dir, &m);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let header = dir.join("tree/demo/include/demo.h");
    assert_eq!(fs::read_to_string(&header).unwrap(), "#define DEMO 1\n");
    assert!(
        !dir.join("tree/pkg").exists(),
        "only the listed prefixes are extracted"
    );

    // A second run finds the stamp and touches nothing: a marker file survives.
    fs::write(dir.join("tree/marker"), "kept").unwrap();
    let second = fetch(&dir, &m);
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("up to date"));
    assert!(dir.join("tree/marker").exists());
}
