//! `cargo xtask executables [--tests] [--target NAME]... [--copy-to DIR [--prefix P | --rename
//! NAME]] -- CARGO_ARGS...`: runs `cargo CARGO_ARGS --message-format=json` (a `--no-run` test
//! or bench build, typically) and prints the executables it built as `target-name path` lines,
//! or copies them into DIR as `P<target-name>` (or as NAME, which asks for exactly one).
//!
//! The packers (scripts/gpu-pack*.sh, scripts/candle-check.sh --pack) use it; cargo's own
//! diagnostics go to stderr as usual, and a failed build fails the command.

use std::io::BufReader;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use cargo_metadata::Message;

#[derive(Debug, Default, PartialEq)]
struct Options {
    /// Only test (and bench) harness builds: the artifact's profile says `test`.
    tests: bool,
    /// Only these targets (all when empty).
    targets: Vec<String>,
    copy_to: Option<PathBuf>,
    prefix: String,
    rename: Option<String>,
    cargo: Vec<String>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value"))
                .cloned()
        };
        match a.as_str() {
            "--tests" => o.tests = true,
            "--target" => o.targets.push(value()?),
            "--copy-to" => o.copy_to = Some(value()?.into()),
            "--prefix" => o.prefix = value()?,
            "--rename" => o.rename = Some(value()?),
            "--" => {
                o.cargo = it.by_ref().cloned().collect();
                break;
            }
            other => bail!("unknown option {other:?} (cargo's arguments go after `--`)"),
        }
    }
    if o.cargo.is_empty() {
        bail!("usage: cargo xtask executables [options] -- CARGO_ARGS... (cargo xtask help)");
    }
    if o.copy_to.is_none() && (o.rename.is_some() || !o.prefix.is_empty()) {
        bail!("--prefix and --rename name copies: they need --copy-to");
    }
    if o.rename.is_some() && !o.prefix.is_empty() {
        bail!("--prefix and --rename exclude each other");
    }
    if !o.cargo.iter().any(|a| a.starts_with("--message-format")) {
        o.cargo.push("--message-format=json".into());
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let o = parse(args)?;
    let mut child = crate::cargo()
        .args(&o.cargo)
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run cargo")?;
    let mut found = Vec::new();
    for message in Message::parse_stream(BufReader::new(child.stdout.take().unwrap())) {
        if let Message::CompilerArtifact(a) = message.context("reading cargo's messages")? {
            let Some(exe) = a.executable else { continue };
            if (o.tests && !a.profile.test)
                || (!o.targets.is_empty() && !o.targets.contains(&a.target.name))
            {
                continue;
            }
            found.push((a.target.name.clone(), PathBuf::from(exe)));
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("cargo {} failed ({status})", o.cargo.join(" "));
    }
    let Some(dir) = &o.copy_to else {
        for (name, exe) in &found {
            println!("{name} {}", exe.display());
        }
        return Ok(ExitCode::SUCCESS);
    };
    if o.rename.is_some() && found.len() != 1 {
        bail!("--rename wants exactly one executable; cargo built {found:?}");
    }
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    for (name, exe) in &found {
        let to = dir.join(match &o.rename {
            Some(n) => n.clone(),
            None => format!("{}{name}", o.prefix),
        });
        std::fs::copy(exe, &to)
            .with_context(|| format!("copying {} to {}", exe.display(), to.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn options() {
        let o = parse(&args(
            "--tests --target a --target b --copy-to d --prefix test- -- test --no-run",
        ))
        .unwrap();
        assert_eq!(
            o,
            Options {
                tests: true,
                targets: vec!["a".into(), "b".into()],
                copy_to: Some("d".into()),
                prefix: "test-".into(),
                rename: None,
                cargo: args("test --no-run --message-format=json"),
            }
        );
        // cargo's own arguments may look like ours.
        let o = parse(&args(
            "-- bench --target x86_64-unknown-linux-gnu --message-format=json",
        ))
        .unwrap();
        assert_eq!(
            o.cargo,
            args("bench --target x86_64-unknown-linux-gnu --message-format=json")
        );
        assert!(parse(&args("--tests")).is_err());
        assert!(parse(&args("--rename x -- test")).is_err());
        assert!(parse(&args("--copy-to d --rename x --prefix p -- test")).is_err());
        assert!(parse(&args("--target")).is_err());
    }
}
