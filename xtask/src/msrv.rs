//! `cargo xtask msrv`: the declared MSRV holds for the whole dependency tree of the published
//! libraries: every crate they depend on (normal and build dependencies, with the features
//! `cargo metadata` resolves, on every platform) must declare a `rust-version` no newer than
//! theirs. Every optional dependency the libraries' features add is included. A crate that
//! declares none is listed (its MSRV is unknown), not failed.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, ensure, Context, Result};
use cargo_metadata::semver::Version;
use cargo_metadata::{CargoOpt, DependencyKind, Metadata, MetadataCommand};

const LIBRARIES: [&str; 2] = ["flashinfer-rs", "flashinfer-sys"];
/// The features that add optional dependencies (the arch features add kernels only).
const FEATURES: [&str; 3] = [
    "flashinfer-rs/nccl",
    "flashinfer-rs/serde",
    "flashinfer-rs/float8",
];

pub fn run(root: &Path) -> Result<ExitCode> {
    let out = MetadataCommand::new()
        .current_dir(root)
        .manifest_path(root.join("Cargo.toml"))
        .features(CargoOpt::SomeFeatures(
            FEATURES.iter().map(|f| f.to_string()).collect(),
        ))
        .cargo_command()
        .output()
        .context("cannot run cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = String::from_utf8(out.stdout).context("cargo metadata's output")?;
    let meta = MetadataCommand::parse(&json)?;
    // The rust-versions as declared (`1.88`, `1.85.0`), which `Metadata` holds parsed only.
    let raw: serde_json::Value = serde_json::from_str(&json)?;
    let declared: HashMap<&str, &str> = raw["packages"]
        .as_array()
        .context("cargo metadata gave no packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["rust_version"].as_str()?)))
        .collect();
    let tree = Tree::from_metadata(&meta, &declared)?;
    let report = tree.check()?;
    print!("{}", report.summary);
    if report.newer.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "newer than the declared MSRV:\n  {}",
            report.newer.join("\n  ")
        );
        Ok(ExitCode::FAILURE)
    }
}

struct Crate {
    name: String,
    version: String,
    /// The rust-version as declared, and parsed.
    rust_version: Option<(String, Version)>,
    /// A workspace (path) package: `source` is null in cargo's metadata.
    local: bool,
}

/// The resolved graph, reduced to what the check reads.
struct Tree {
    crates: HashMap<String, Crate>,
    /// Package id -> the ids it depends on as a normal or build dependency.
    edges: HashMap<String, Vec<String>>,
}

struct Report {
    summary: String,
    newer: Vec<String>,
}

impl Tree {
    fn from_metadata(meta: &Metadata, declared: &HashMap<&str, &str>) -> Result<Tree> {
        let crates = meta
            .packages
            .iter()
            .map(|p| {
                let c = Crate {
                    name: p.name.to_string(),
                    version: p.version.to_string(),
                    rust_version: p.rust_version.clone().map(|v| {
                        let text = declared
                            .get(p.id.repr.as_str())
                            .map_or(v.to_string(), |d| d.to_string());
                        (text, v)
                    }),
                    local: p.source.is_none(),
                };
                (p.id.repr.clone(), c)
            })
            .collect();
        let resolve = meta
            .resolve
            .as_ref()
            .context("cargo metadata gave no resolve")?;
        let edges = resolve
            .nodes
            .iter()
            .map(|n| {
                let deps = n
                    .deps
                    .iter()
                    .filter(|d| {
                        d.dep_kinds.iter().any(|k| {
                            matches!(k.kind, DependencyKind::Normal | DependencyKind::Build)
                        })
                    })
                    .map(|d| d.pkg.repr.clone())
                    .collect();
                (n.id.repr.clone(), deps)
            })
            .collect();
        Ok(Tree { crates, edges })
    }

    /// The libraries' own rust-version (as declared, and parsed): the one the tree must meet.
    fn ours(&self) -> Result<(&str, &Version)> {
        let mut ours: Option<(&str, &Version)> = None;
        for c in self.crates.values() {
            if !(c.local && LIBRARIES.contains(&c.name.as_str())) {
                continue;
            }
            let Some((text, v)) = &c.rust_version else {
                bail!("{} declares no rust-version", c.name);
            };
            match ours {
                Some((_, o)) if o != v => {
                    bail!("the libraries declare different rust-versions: {o} and {v}")
                }
                _ => ours = Some((text, v)),
            }
        }
        ours.with_context(|| format!("none of {LIBRARIES:?} is in the workspace"))
    }

    /// Every package reachable from the libraries through normal and build dependencies,
    /// the libraries included.
    fn reachable(&self) -> BTreeSet<&str> {
        let mut todo: Vec<&str> = self
            .crates
            .iter()
            .filter(|(_, c)| c.local && LIBRARIES.contains(&c.name.as_str()))
            .map(|(id, _)| id.as_str())
            .collect();
        let mut seen = BTreeSet::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            for dep in self.edges.get(id).into_iter().flatten() {
                todo.push(dep);
            }
        }
        seen
    }

    fn check(&self) -> Result<Report> {
        let (ours_text, ours) = self.ours()?;
        let seen = self.reachable();
        let mut in_tree: Vec<&Crate> = seen.iter().map(|id| &self.crates[*id]).collect();
        in_tree.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        let (mut newer, mut unknown) = (Vec::new(), Vec::new());
        for c in in_tree {
            match &c.rust_version {
                None => unknown.push(format!("{} {}", c.name, c.version)),
                Some((text, rv)) if rv > ours => {
                    newer.push(format!("{} {} needs Rust {text}", c.name, c.version))
                }
                Some(_) => {}
            }
        }
        let summary = format!(
            "MSRV {ours_text}: {} crates in the libraries' tree; {} declare no rust-version ({})\n",
            seen.len(),
            unknown.len(),
            unknown.join(", ")
        );
        Ok(Report { summary, newer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(name: &str, version: &str, rv: Option<&str>, local: bool) -> (String, Crate) {
        let c = Crate {
            name: name.into(),
            version: version.into(),
            rust_version: rv.map(|v| (v.to_string(), Version::parse(&format!("{v}.0")).unwrap())),
            local,
        };
        (format!("{name}@{version}"), c)
    }

    fn tree(crates: Vec<(String, Crate)>, edges: &[(&str, &[&str])]) -> Tree {
        Tree {
            crates: crates.into_iter().collect(),
            edges: edges
                .iter()
                .map(|(a, bs)| (a.to_string(), bs.iter().map(|b| b.to_string()).collect()))
                .collect(),
        }
    }

    #[test]
    fn walks_the_libraries_tree_only() {
        let t = tree(
            vec![
                krate("flashinfer-rs", "0.1.0", Some("1.88"), true),
                krate("flashinfer-sys", "0.1.0", Some("1.88"), true),
                krate("flashinfer-rs-serve", "0.1.0", Some("1.88"), true),
                krate("cudarc", "0.19.10", Some("1.80"), false),
                krate("libloading", "0.9.0", Some("1.88"), false),
                krate("cc", "1.2.0", None, false),
                krate("tokio", "1.0.0", Some("1.95"), false),
            ],
            &[
                (
                    "flashinfer-rs@0.1.0",
                    &["flashinfer-sys@0.1.0", "cudarc@0.19.10"],
                ),
                ("flashinfer-sys@0.1.0", &["cc@1.2.0"]),
                ("cudarc@0.19.10", &["libloading@0.9.0"]),
                (
                    "flashinfer-rs-serve@0.1.0",
                    &["tokio@1.0.0", "flashinfer-rs@0.1.0"],
                ),
            ],
        );
        let r = t.check().unwrap();
        assert_eq!(
            r.summary,
            "MSRV 1.88: 5 crates in the libraries' tree; 1 declare no rust-version (cc 1.2.0)\n"
        );
        assert!(r.newer.is_empty());
    }

    #[test]
    fn a_newer_crate_fails_and_a_registry_namesake_is_not_ours() {
        let t = tree(
            vec![
                krate("flashinfer-rs", "0.1.0", Some("1.88"), true),
                krate("flashinfer-sys", "0.1.0", Some("1.88"), true),
                // A registry crate of the same name is no root of the walk.
                krate("flashinfer-sys", "0.0.9", Some("1.99"), false),
                krate("half", "2.7.1", Some("1.89"), false),
                krate("b", "1.0.0", None, false),
                krate("a", "2.0.0", None, false),
                krate("a", "1.0.0", None, false),
            ],
            &[
                (
                    "flashinfer-rs@0.1.0",
                    &["half@2.7.1", "b@1.0.0", "a@2.0.0", "a@1.0.0"],
                ),
                ("flashinfer-sys@0.1.0", &[]),
            ],
        );
        let r = t.check().unwrap();
        assert_eq!(r.newer, ["half 2.7.1 needs Rust 1.89"]);
        assert!(r
            .summary
            .ends_with("3 declare no rust-version (a 1.0.0, a 2.0.0, b 1.0.0)\n"));
    }

    #[test]
    fn the_libraries_must_agree() {
        let t = tree(
            vec![
                krate("flashinfer-rs", "0.1.0", Some("1.88"), true),
                krate("flashinfer-sys", "0.1.0", Some("1.89"), true),
            ],
            &[],
        );
        assert!(t.check().is_err());
    }
}
