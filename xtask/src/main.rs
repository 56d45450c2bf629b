//! `cargo xtask`: the project's build glue, in Rust (the alias is in .cargo/config.toml).
//!
//! The shell scripts under scripts/ orchestrate (CI runs `bash scripts/test.sh`); what they
//! used to do with `python3 -c` over cargo's JSON, `sed` over Cargo.toml and small Python
//! programs is here, on `cargo_metadata`. Python stays where only Python will do (the fetch
//! script shipped inside flashinfer-sys, the PyTorch benches, transformers' fixtures).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

mod bench_tables;
mod bindings;
mod executables;
mod generate;
mod kernels_lib;
mod long_functions;
mod msrv;

const HELP: &str = "\
cargo xtask <command> [args]

  msrv                        every crate in the published libraries' dependency tree
                              declares a rust-version no newer than theirs (exit 1 if not)
  long-functions [LIMIT]      functions over LIMIT lines (default 120) in flashinfer-rs/src
                              and flashinfer-sys/csrc (exit 1 if any)
  executables [--tests] [--target NAME]... [--copy-to DIR [--prefix P | --rename NAME]]
              -- CARGO_ARGS...
                              runs `cargo CARGO_ARGS --message-format=json` and prints the
                              executables it built (`target-name path` lines), or copies them
                              into DIR (as P<target-name>, or as NAME when exactly one)
  kernels-lib [FEATURES] [OUT_DIR]
                              the prebuilt kernel library (default: sm90 target/kernels-lib);
                              prints its path last
  bench-tables BENCH.md TORCH.md
                              BENCHMARKS.md from one GPU run's outputs, on stdout
  bindings                    regenerates flashinfer-sys/src/bindings.rs with bindgen, then
                              runs `generate`
  generate [--check]          writes flashinfer-sys/src/generated/ (the MoeTensor enum from
                              the C header, the prebuilt-library bindings from bindings.rs);
                              --check writes nothing and exits 1 naming each stale file
";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.collect();
    let root = workspace_root();
    match command.as_str() {
        "msrv" => {
            no_args(&command, &rest)?;
            msrv::run(&root)
        }
        "long-functions" => {
            let limit = match rest.as_slice() {
                [] => 120,
                [n] => n
                    .parse()
                    .with_context(|| format!("not a line count: {n}"))?,
                _ => bail!("usage: cargo xtask long-functions [LIMIT]"),
            };
            long_functions::run(&root, limit)
        }
        "executables" => executables::run(&rest),
        "kernels-lib" => kernels_lib::run(&root, &rest),
        "bench-tables" => match rest.as_slice() {
            [bench, torch] => bench_tables::run(&root, Path::new(bench), Path::new(torch)),
            _ => bail!("usage: cargo xtask bench-tables BENCH.md TORCH.md"),
        },
        "bindings" => {
            no_args(&command, &rest)?;
            bindings::run(&root)
        }
        "generate" => match rest.as_slice() {
            [] => generate::run(&root, false),
            [check] if check == "--check" => generate::run(&root, true),
            _ => bail!("usage: cargo xtask generate [--check]"),
        },
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

fn no_args(command: &str, rest: &[String]) -> Result<()> {
    if !rest.is_empty() {
        bail!("`cargo xtask {command}` takes no arguments (got {rest:?})");
    }
    Ok(())
}

/// The workspace root: this crate's parent folder.
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_path_buf()
}

/// The cargo that runs us (`$CARGO`), so a `cargo +toolchain xtask` builds with that toolchain.
fn cargo() -> std::process::Command {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}
