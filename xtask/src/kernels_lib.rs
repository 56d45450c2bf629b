//! `cargo xtask kernels-lib [FEATURES] [OUT_DIR]` (what scripts/kernels-lib.sh runs): the
//! prebuilt kernel library, the kernels and the C ABI of flashinfer-sys as one shared library
//! (default: `sm90` into target/kernels-lib). Prints the library's path last, on stdout (all
//! else goes to stderr); writes `<name>.sha256` beside it.
//!
//! The kernels are built as the normal build makes them (`cargo build -p flashinfer-sys`, the
//! object cache included); its build script writes its link line to OUT_DIR/kernels-link.txt,
//! which this links into the library with g++, exporting only the C ABI (`fi_*`).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, ensure, Context, Result};
use cargo_metadata::semver::Version;
use cargo_metadata::{Message, MetadataCommand};

pub fn run(root: &Path, args: &[String]) -> Result<ExitCode> {
    let (features, out) = match args {
        [] => ("sm90", root.join("target/kernels-lib")),
        [f] => (f.as_str(), root.join("target/kernels-lib")),
        [f, o] => (f.as_str(), PathBuf::from(o)),
        _ => bail!("usage: cargo xtask kernels-lib [FEATURES] [OUT_DIR]"),
    };
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let fetch = Command::new("python3")
        .arg(root.join("flashinfer-sys/vendor/fetch.py"))
        .arg("all")
        .current_dir(root)
        .stdout(std::io::stderr())
        .status()
        .context("python3 flashinfer-sys/vendor/fetch.py all")?;
    ensure!(
        fetch.success(),
        "flashinfer-sys/vendor/fetch.py all failed ({fetch})"
    );

    // The dev profile: nvcc's flags do not depend on cargo's profile (the library is the same
    // either way), and a workspace that built these features already has this build script's
    // output.
    let mut cargo = crate::cargo()
        .args(["build", "-p", "flashinfer-sys", "--features", features])
        .arg("--message-format=json")
        .current_dir(root)
        .env_remove("FLASHINFER_RS_KERNELS_LIB")
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let mut out_dir = None;
    for m in Message::parse_stream(std::io::BufReader::new(cargo.stdout.take().unwrap())) {
        if let Message::BuildScriptExecuted(s) = m? {
            if s.package_id.repr.contains("flashinfer-sys") {
                out_dir = Some(PathBuf::from(s.out_dir));
            }
        }
    }
    let status = cargo.wait()?;
    ensure!(
        status.success(),
        "cargo build -p flashinfer-sys --features {features} failed"
    );
    let out_dir = out_dir.context("cargo ran no build script of flashinfer-sys")?;
    let link_txt = out_dir.join("kernels-link.txt");
    let link = std::fs::read_to_string(&link_txt)
        .with_context(|| format!("no kernels-link.txt in {}", out_dir.display()))?;
    let link = LinkLine::parse(&link, &out_dir);

    let meta = MetadataCommand::new()
        .current_dir(root)
        .manifest_path(root.join("Cargo.toml"))
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let sys = meta
        .workspace_packages()
        .into_iter()
        .find(|p| p.name.as_str() == "flashinfer-sys")
        .context("no flashinfer-sys in the workspace")?;
    let name = library_name(&sys.version, &link.targets, features)?;

    let map =
        std::env::temp_dir().join(format!("flashinfer-rs-kernels-{}.map", std::process::id()));
    std::fs::write(&map, "{ global: fi_*; local: *; };\n")?;
    let library = out.join(&name);
    let gxx = Command::new("g++")
        .arg("-shared")
        .arg("-o")
        .arg(&library)
        .arg("-Wl,--whole-archive")
        .args(&link.whole)
        .arg("-Wl,--no-whole-archive")
        .args(&link.search)
        .args(&link.libs)
        .arg(format!("-Wl,-soname,{name}"))
        .arg(format!("-Wl,--version-script={}", map.display()))
        .args(["-Wl,-z,defs", "-Wl,--as-needed"])
        .status();
    let _ = std::fs::remove_file(&map);
    let gxx = gxx.context("cannot run g++")?;
    ensure!(gxx.success(), "g++ failed to link {name} ({gxx})");

    let sum = Command::new("sha256sum")
        .arg(&name)
        .current_dir(&out)
        .output()
        .context("cannot run sha256sum")?;
    ensure!(sum.status.success(), "sha256sum {name} failed");
    std::fs::write(out.join(format!("{name}.sha256")), sum.stdout)?;
    println!("{}", library.display());
    Ok(ExitCode::SUCCESS)
}

/// The link line flashinfer-sys's build script writes (kernels-link.txt): `targets T,...`,
/// `search DIR`, `lib static=NAME` / `lib dylib=NAME` lines.
#[derive(Debug, Default, PartialEq)]
struct LinkLine {
    targets: String,
    /// `-L` flags.
    search: Vec<String>,
    /// Our own static libraries, linked whole: their `fi_*` symbols are the library's ABI.
    whole: Vec<PathBuf>,
    /// `-l` flags.
    libs: Vec<String>,
}

impl LinkLine {
    fn parse(text: &str, out_dir: &Path) -> LinkLine {
        let mut l = LinkLine::default();
        for line in text.lines() {
            let line = line.trim();
            let (kind, value) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let value = value.trim();
            match kind {
                "targets" => l.targets = value.to_string(),
                "search" => l.search.push(format!("-L{value}")),
                "lib" => {
                    if let Some(s) = value.strip_prefix("static=") {
                        if s.starts_with("flashinfer_rs_") {
                            l.whole.push(out_dir.join(format!("lib{s}.a")));
                        } else {
                            l.libs.push(format!("-l{s}"));
                        }
                    } else if let Some(d) = value.strip_prefix("dylib=") {
                        l.libs.push(format!("-l{d}"));
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// `libflashinfer-rs-kernels-<crate version>-flashinfer<FlashInfer version>-<targets>[-cutlass-moe].so`
/// from flashinfer-sys's version (`0.1.0+flashinfer.0.6.13`), the targets (`sm_90a,...`) and the
/// features (`-cutlass-moe` with the CUTLASS fused MoE, `sm90-moe`).
fn library_name(version: &Version, targets: &str, features: &str) -> Result<String> {
    let Some(flashinfer) = version.build.as_str().strip_prefix("flashinfer.") else {
        bail!("flashinfer-sys's version {version} names no FlashInfer version (+flashinfer.X)");
    };
    let mut ours = version.clone();
    ours.build = Default::default();
    let moe = if features.split(',').any(|f| f == "sm90-moe") {
        "-cutlass-moe"
    } else {
        ""
    };
    Ok(format!(
        "libflashinfer-rs-kernels-{ours}-flashinfer{flashinfer}-{}{moe}.so",
        targets.replace(',', "-")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let v = Version::parse("0.1.0+flashinfer.0.6.13").unwrap();
        assert_eq!(
            library_name(&v, "sm_90a", "sm90").unwrap(),
            "libflashinfer-rs-kernels-0.1.0-flashinfer0.6.13-sm_90a.so"
        );
        assert_eq!(
            library_name(&v, "sm_90a,sm_100f", "sm100,sm90-moe").unwrap(),
            "libflashinfer-rs-kernels-0.1.0-flashinfer0.6.13-sm_90a-sm_100f-cutlass-moe.so"
        );
        let pre = Version::parse("0.2.0-rc.1+flashinfer.0.7.0").unwrap();
        assert_eq!(
            library_name(&pre, "sm_90a", "sm90-moes").unwrap(),
            "libflashinfer-rs-kernels-0.2.0-rc.1-flashinfer0.7.0-sm_90a.so"
        );
        assert!(library_name(&Version::parse("0.1.0").unwrap(), "sm_90a", "sm90").is_err());
    }

    #[test]
    fn link_line() {
        let text = "targets sm_90a,sm_100f\nsearch /cuda/lib64\nlib static=flashinfer_rs_routing\n\
                    lib static=cudart_static\nlib dylib=stdc++\nlib   dylib=dl  \nother x\n";
        let l = LinkLine::parse(text, Path::new("/out"));
        assert_eq!(
            l,
            LinkLine {
                targets: "sm_90a,sm_100f".into(),
                search: vec!["-L/cuda/lib64".into()],
                whole: vec!["/out/libflashinfer_rs_routing.a".into()],
                libs: vec!["-lcudart_static".into(), "-lstdc++".into(), "-ldl".into()],
            }
        );
    }
}
