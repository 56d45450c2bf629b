//! The prebuilt kernel library's checks (src/prebuilt.rs), against small libraries made on
//! the spot with the C compiler: a library built for another ABI, crate or FlashInfer version,
//! or without an architecture this build needs, is refused naming both sides; so are an
//! altered file, a missing sha256 file and a library that is not ours. Runs in every build.
use std::path::{Path, PathBuf};
use std::process::Command;

use flashinfer_sys::prebuilt::{check_record, open, Record, Requirements};
use flashinfer_sys::FI_ABI_VERSION;

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("prebuilt")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A shared library whose fi_get_build_info reports these values (or, with `record: None`,
/// that exports nothing of ours), with its sha256 file.
fn library(dir: &Path, record: Option<(i32, &str, &str, &str)>) -> PathBuf {
    let src = dir.join("lib.c");
    let body = match record {
        Some((abi, crate_version, flashinfer, targets)) => format!(
            "#include \"flashinfer_rs.h\"\n\
             fi_status fi_get_build_info(fi_build_info* out) {{\n\
               out->abi_version = {abi};\n\
               out->flashinfer_version = \"{flashinfer}\";\n\
               out->bmm_artifact = \"\";\n\
               out->kernels_built = 1;\n\
               out->targets = \"{targets}\";\n\
               out->crate_version = \"{crate_version}\";\n\
               out->patches = \"\";\n\
               return FI_STATUS_OK;\n\
             }}\n"
        ),
        None => "int something_else(void) { return 0; }\n".to_string(),
    };
    std::fs::write(&src, body).unwrap();
    let lib = dir.join("libfake.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg(format!("-I{}/csrc", env!("CARGO_MANIFEST_DIR")))
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success());
    let sha = Command::new("sha256sum").arg(&lib).output().unwrap();
    std::fs::write(dir.join("libfake.so.sha256"), sha.stdout).unwrap();
    lib
}

fn want(targets: &[&str]) -> Requirements {
    Requirements {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        cutlass_moe: false,
        ..Requirements::of_this_build()
    }
}

/// The error opening `lib` gives (it must be refused).
fn refused(lib: &Path, want: &Requirements) -> String {
    // SAFETY: the library is one this test built; its initialisers do nothing.
    match unsafe { open(lib, want) } {
        Ok(_) => panic!("{} was accepted", lib.display()),
        Err(e) => e,
    }
}

#[test]
fn a_matching_library_is_accepted() {
    let r = Requirements::of_this_build();
    let lib = library(
        &scratch("good"),
        Some((
            r.abi_version,
            &r.crate_version,
            &r.flashinfer_version,
            "sm_90a,sm_100f",
        )),
    );
    // SAFETY: as in `refused`.
    unsafe { open(&lib, &want(&["sm_90a", "sm_100f"])) }.unwrap();
}

#[test]
fn a_library_of_another_abi_crate_or_flashinfer_version_is_refused_naming_both() {
    let r = Requirements::of_this_build();
    let abi = FI_ABI_VERSION as i32;
    for (name, record, expect) in [
        (
            "abi",
            (
                abi - 1,
                r.crate_version.as_str(),
                r.flashinfer_version.as_str(),
            ),
            format!(
                "C ABI version {} in the library, {abi} in this build",
                abi - 1
            ),
        ),
        (
            "crate",
            (
                abi,
                "0.0.9+flashinfer.0.6.13",
                r.flashinfer_version.as_str(),
            ),
            format!(
                "built by flashinfer-sys 0.0.9+flashinfer.0.6.13, this build is flashinfer-sys {}",
                r.crate_version
            ),
        ),
        (
            "flashinfer",
            (abi, r.crate_version.as_str(), "0.6.12"),
            format!(
                "compiled from FlashInfer 0.6.12, this build pins FlashInfer {}",
                r.flashinfer_version
            ),
        ),
    ] {
        let lib = library(
            &scratch(name),
            Some((record.0, record.1, record.2, "sm_90a")),
        );
        let e = refused(&lib, &want(&["sm_90a"]));
        assert!(e.contains(&expect), "{name}: {e}");
        assert!(e.contains(lib.to_str().unwrap()), "names the library: {e}");
    }
}

#[test]
fn a_library_without_an_architecture_this_build_needs_is_refused() {
    let r = Requirements::of_this_build();
    let lib = library(
        &scratch("arch"),
        Some((
            r.abi_version,
            &r.crate_version,
            &r.flashinfer_version,
            "sm_90a",
        )),
    );
    let e = refused(&lib, &want(&["sm_90a", "sm_100f"]));
    assert!(e.contains("holds machine code for [sm_90a]"), "{e}");
    assert!(e.contains("missing: sm_100f"), "{e}");
}

#[test]
fn an_altered_library_or_a_missing_sha256_is_refused() {
    let r = Requirements::of_this_build();
    let dir = scratch("tampered");
    let lib = library(
        &dir,
        Some((
            r.abi_version,
            &r.crate_version,
            &r.flashinfer_version,
            "sm_90a",
        )),
    );
    let mut bytes = std::fs::read(&lib).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&lib, &bytes).unwrap();
    let e = refused(&lib, &want(&["sm_90a"]));
    assert!(e.contains("was altered or replaced"), "{e}");
    std::fs::remove_file(dir.join("libfake.so.sha256")).unwrap();
    let e = refused(&lib, &want(&["sm_90a"]));
    assert!(e.contains("libfake.so.sha256"), "{e}");
    let e = refused(&dir.join("absent.so"), &want(&[]));
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn a_library_that_is_not_ours_is_refused() {
    let lib = library(&scratch("foreign"), None);
    let e = refused(&lib, &want(&[]));
    assert!(e.contains("is no flashinfer-rs kernel library"), "{e}");
}

#[test]
fn the_record_rules_read_as_they_should() {
    let r = Requirements::of_this_build();
    let record = Record {
        abi_version: r.abi_version,
        crate_version: r.crate_version.clone(),
        flashinfer_version: r.flashinfer_version.clone(),
        targets: "sm_90a,sm_100f".into(),
        has_cutlass_moe: false,
    };
    assert_eq!(check_record(&record, &want(&["sm_100f"])), Ok(()));
    assert_eq!(
        check_record(&record, &want(&[])),
        Ok(()),
        "no feature needs no target"
    );
    assert!(
        check_record(&record, &want(&["sm_100"])).is_err(),
        "targets match exactly"
    );
    // The CUTLASS fused MoE: needed by `sm90-moe`, refused naming the feature when absent.
    let needs_moe = Requirements {
        cutlass_moe: true,
        ..want(&["sm_90a"])
    };
    let e = check_record(&record, &needs_moe).unwrap_err();
    assert!(
        e.contains("holds no CUTLASS fused MoE") && e.contains("sm90-moe"),
        "{e}"
    );
    let with_moe = Record {
        has_cutlass_moe: true,
        ..record.clone()
    };
    assert_eq!(check_record(&with_moe, &needs_moe), Ok(()));
    assert_eq!(
        check_record(&with_moe, &want(&["sm_90a"])),
        Ok(()),
        "more than needed is fine"
    );
}
