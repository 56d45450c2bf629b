//! `cargo xtask bench-tables BENCH.md TORCH.md > BENCHMARKS.md`: assembles BENCHMARKS.md from
//! one GPU run's outputs.
//!
//! ```sh
//! # on the GPU machine (same session):
//! bash gpu-pack/bench.sh > bench.md
//! python3 scripts/bench_torch_routing.py > torch.md
//! # anywhere:
//! cargo xtask bench-tables bench.md torch.md > BENCHMARKS.md
//! ```
//!
//! The tables come from the run; the comparison with PyTorch is computed here from both files;
//! the discussion of each target (docs/benchmarks-analysis.md) is prose kept by hand.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

const HEADER: &str = "# Benchmarks

All numbers below come from **one run on one GPU**; `nvidia-smi` at the start read: {gpu}
(name, driver, SM and memory clocks; the SM clock boosts under load). As printed by the commands below;
FlashInfer 0.6.13 kernels built by flashinfer-rs with nvcc 13.0.88 (CUDA 13.0 runtime, static),
{torch}.

```sh
bash scripts/gpu-pack.sh                              # here: builds the bench into gpu-pack/
bash gpu-pack/bench.sh > bench.md                     # on the GPU machine: tables 1-5
python3 scripts/bench_torch_routing.py > torch.md     # same machine, same session: PyTorch
cargo xtask bench-tables bench.md torch.md > BENCHMARKS.md
```

Method: CUDA events around CUDA-graph launches of N back-to-back calls (20 for routing, one step
of L calls for capture), 5 warm-up replays, 30 timed, variants interleaved replay by replay,
median and p10..p90; host timers where the host is what is measured (3, 3b, 5). Ratios are
computed within the run. No test asserts a time.
";

const COMPARISON: &str = "
## 4b. Against what a PyTorch user would write (same GPU, same session)

`scripts/bench_torch_routing.py`: sigmoid + bias, grouped top-2 sum, group top-k, masked
top-k, gather and renormalise (DeepSeek-V3); `topk` + softmax (Qwen3 Renormalize). \"Ours\" is
the routing call with the replay buffer (table 4 for DeepSeek-V3, table 1 for Qwen3); ours also
builds the grouped-GEMM permutation, which the PyTorch code does not.

| router | tokens | ours, with replay (us) | PyTorch eager (us) | PyTorch CUDA graph (us) | graph / ours | eager / ours | target | verdict |
|---|---:|---:|---:|---:|---:|---:|---|---|
";

pub fn run(root: &Path, bench: &Path, torch: &Path) -> Result<ExitCode> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
    let analysis = read(&root.join("docs/benchmarks-analysis.md"))?;
    print!("{}", assemble(&read(bench)?, &read(torch)?, &analysis)?);
    Ok(ExitCode::SUCCESS)
}

fn assemble(bench: &str, torch: &str, analysis: &str) -> Result<String> {
    let smi = bench.lines().next().context("the bench output is empty")?;
    let body = bench
        .split_once("# flashinfer-rs benchmarks")
        .context("the bench output has no `# flashinfer-rs benchmarks` line")?
        .1
        .trim();
    let torch_version = torch
        .match_indices("PyTorch ")
        .map(|(i, m)| {
            let rest = &torch[i + m.len()..];
            &rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())]
        })
        .find(|v| !v.is_empty());
    let mut out = HEADER.replace("{gpu}", smi.trim()).replace(
        "{torch}",
        &torch_version.map_or("PyTorch".into(), |v| format!("PyTorch {v}")),
    );
    writeln!(out, "\n{body}")?;

    let mut ours = HashMap::new();
    for line in body.lines() {
        if let Some((tokens, us)) = table4_row(line) {
            ours.insert(("DeepSeek-V3", tokens), us);
        }
        if let Some((tokens, us)) = table1_qwen3_row(line) {
            ours.insert(("Qwen3 Renormalize", tokens), us);
        }
    }
    out.push_str(COMPARISON);
    for line in torch.lines() {
        let Some((router, t, eager, graph)) = torch_row(line) else {
            continue;
        };
        let Some(&o) = ours.get(&(router, t)) else {
            continue;
        };
        let target = if t <= 8192 { 10.0 } else { 5.0 };
        let verdict = if graph / o >= target { "met" } else { "missed" };
        writeln!(
            out,
            "| {router} | {t} | {o:.2} | {eager:.2} | {graph:.2} | {:.1}x | {:.1}x | >= {target}x | {verdict} |",
            graph / o,
            eager / o
        )?;
    }
    writeln!(out, "\n{}", analysis.trim())?;
    Ok(out)
}

/// A left-anchored matcher for table rows (the cells are separated by ` | `).
struct Row<'a>(&'a str);

impl<'a> Row<'a> {
    fn lit(&mut self, s: &str) -> Option<()> {
        self.0 = self.0.strip_prefix(s)?;
        Some(())
    }

    fn take(&mut self, f: impl Fn(char) -> bool) -> Option<&'a str> {
        let end = self.0.find(|c| !f(c)).unwrap_or(self.0.len());
        let (head, rest) = self.0.split_at(end);
        self.0 = rest;
        (end > 0).then_some(head)
    }

    /// `\d+`
    fn int(&mut self) -> Option<u64> {
        self.take(|c| c.is_ascii_digit())?.parse().ok()
    }

    /// `[\d.]+`
    fn float(&mut self) -> Option<f64> {
        self.take(|c| c.is_ascii_digit() || c == '.')?.parse().ok()
    }
}

/// Table 4: `| tokens | ours (us) | NoAuxTc (us) | ratio | met|missed | GB/s | GB/s | fraction |`.
fn table4_row(line: &str) -> Option<(u64, f64)> {
    let mut r = Row(line);
    r.lit("| ")?;
    let tokens = r.int()?;
    r.lit(" | ")?;
    let ours = r.float()?;
    for _ in 0..2 {
        r.lit(" | ")?;
        r.float()?;
    }
    r.lit(" | ")?;
    if r.lit("met").is_none() {
        r.lit("missed")?;
    }
    for _ in 0..2 {
        r.lit(" | ")?;
        r.int()?;
    }
    r.lit(" | ")?;
    r.float()?;
    r.lit(" |")?;
    Some((tokens, ours))
}

/// Table 1's Qwen3 rows: `| Qwen3-30B-A3B (...) | tokens | without (p10..p90) | with (`.
fn table1_qwen3_row(line: &str) -> Option<(u64, f64)> {
    let mut r = Row(line);
    r.lit("| Qwen3-30B-A3B (128e, top-8, Renormalize, bf16) | ")?;
    let tokens = r.int()?;
    r.lit(" | ")?;
    r.float()?;
    r.lit(" (")?;
    r.0 = &r.0[r.0.find(')')?..];
    r.lit(") | ")?;
    let with = r.float()?;
    r.lit(" (")?;
    Some((tokens, with))
}

/// torch.md's rows: `| DeepSeek-V3|Qwen3 Renormalize | tokens | eager (us) | graph (us) |`.
fn torch_row(line: &str) -> Option<(&'static str, u64, f64, f64)> {
    let mut r = Row(line);
    r.lit("| ")?;
    let router = ["DeepSeek-V3", "Qwen3 Renormalize"]
        .into_iter()
        .find(|name| r.0.starts_with(name))?;
    r.lit(router)?;
    r.lit(" | ")?;
    let tokens = r.int()?;
    r.lit(" | ")?;
    let eager = r.float()?;
    r.lit(" | ")?;
    let graph = r.float()?;
    r.lit(" |")?;
    Some((router, tokens, eager, graph))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows() {
        assert_eq!(
            table4_row("| 8192 | 27.96 | 21.73 | 1.287 | missed | 300 | 4238 | 0.07 |"),
            Some((8192, 27.96))
        );
        assert_eq!(
            table4_row("| 1 | 6.01 | 3.03 | 1.982 | met | 0 | 1 | 0.12 | extra"),
            Some((1, 6.01))
        );
        assert_eq!(
            table4_row("| 1 | 6.01 | 3.03 | 1.982 | meh | 0 | 1 | 0.12 |"),
            None
        );
        assert_eq!(table4_row("|---:|---:|"), None);
        assert_eq!(
            table1_qwen3_row(
                "| Qwen3-30B-A3B (128e, top-8, Renormalize, bf16) | 16 | 4.07 (4.05..4.10) | 4.07 (4.06..4.09) | 1.0 | met |"
            ),
            Some((16, 4.07))
        );
        assert_eq!(
            table1_qwen3_row(
                "| Qwen3-30B-A3B (128e, top-8, Renormalize, bf16) | 16 | 4.07 | 4.07 |"
            ),
            None
        );
        assert_eq!(
            torch_row("| Qwen3 Renormalize | 128 | 55.79 | 17.83 |"),
            Some(("Qwen3 Renormalize", 128, 55.79, 17.83))
        );
        assert_eq!(
            torch_row("| Qwen3-Next (512e, top-10) | 1 | 79.22 | 16.93 |"),
            None
        );
    }

    #[test]
    fn assembles() {
        let bench = "H100, 580, 345 MHz, 2619 MHz  \n# flashinfer-rs benchmarks\n\n\
                     | 1 | 6.00 | 3.03 | 1.982 | missed | 0 | 1 | 0.12 |\n\
                     | Qwen3-30B-A3B (128e, top-8, Renormalize, bf16) | 1 | 2.40 (2.3..2.5) | 2.45 (2.4..2.5) | x |\n";
        let torch = "GPU: H100; PyTorch 2.11.0+cu130\n\
                     | DeepSeek-V3 | 1 | 198.34 | 60.00 |\n\
                     | DeepSeek-V3 | 2 | 1.0 | 1.0 |\n\
                     | Qwen3 Renormalize | 1 | 50.94 | 14.91 |\n";
        let out = assemble(bench, torch, "\nanalysis\n").unwrap();
        assert!(out.contains("read: H100, 580, 345 MHz, 2619 MHz\n"));
        assert!(out.contains("\nPyTorch 2.11.0+cu130.\n"));
        assert!(out.contains("computed within the run. No test asserts a time.\n\n| 1 | 6.00"));
        assert!(out.contains(
            "| DeepSeek-V3 | 1 | 6.00 | 198.34 | 60.00 | 10.0x | 33.1x | >= 10x | met |\n"
        ));
        assert!(out.contains(
            "| Qwen3 Renormalize | 1 | 2.45 | 50.94 | 14.91 | 6.1x | 20.8x | >= 10x | missed |\n"
        ));
        assert!(!out.contains("| DeepSeek-V3 | 2 |"));
        assert!(out.ends_with("missed |\n\nanalysis\n"));
    }
}
