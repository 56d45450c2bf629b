//! Where the model's tensors come from: a Hugging Face checkpoint directory (one
//! `model.safetensors` or shards named by `model.safetensors.index.json`), or tensors built in
//! memory (random weights).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{Device, Tensor};

/// Tensors by their checkpoint names.
pub trait TensorSource {
    /// The tensor `name`, on the host, in the file's dtype.
    fn get(&self, name: &str) -> Result<Tensor>;
    /// Whether `name` exists.
    fn contains(&self, name: &str) -> bool;
}

impl TensorSource for HashMap<String, Tensor> {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.get(name)
            .cloned()
            .with_context(|| format!("missing tensor {name}"))
    }
    fn contains(&self, name: &str) -> bool {
        self.contains_key(name)
    }
}

/// A checkpoint's safetensors files, memory-mapped.
pub struct Checkpoint {
    files: MmapedSafetensors,
    names: BTreeSet<String>,
}

impl Checkpoint {
    /// Opens the safetensors of checkpoint directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let paths = safetensors_files(dir)?;
        // SAFETY: the files are mapped read-only; a checkpoint changed under a running
        // server is outside what the server supports (as for every mmap loader).
        let files = unsafe { MmapedSafetensors::multi(&paths) }
            .with_context(|| format!("opening the safetensors of {}", dir.display()))?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Checkpoint { files, names })
    }
}

impl TensorSource for Checkpoint {
    fn get(&self, name: &str) -> Result<Tensor> {
        self.files
            .load(name, &Device::Cpu)
            .with_context(|| format!("loading tensor {name}"))
    }
    fn contains(&self, name: &str) -> bool {
        self.names.contains(name)
    }
}

/// The safetensors files of `dir`: the shards its index names, or `model.safetensors`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index)?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
        let Some(map) = json.get("weight_map").and_then(|m| m.as_object()) else {
            bail!("{} has no weight_map", index.display());
        };
        let files: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    bail!(
        "{} has neither model.safetensors nor model.safetensors.index.json",
        dir.display()
    )
}
