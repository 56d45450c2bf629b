//! The assembler's host cost per step, with and without an expert map (replicated experts),
//! and of incremental export against a whole-request export. No GPU needed:
//!
//!     cargo bench -p flashinfer-rs --bench assembly
//!
//! Prints a Markdown table (BENCHMARKS.md, "Assembly on the host"). Per step, median of 21
//! repetitions, wall time on this machine's CPU, one thread.
use std::time::Instant;

use flashinfer_rs::capture::{Assembler, AssemblerConfig, ExpertMap, RowOwner, StepRows};

const REPS: usize = 21;

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// Median microseconds of `f` over REPS runs.
fn time_us(mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..REPS)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect(),
    )
}

fn main() {
    // DeepSeek-V3-like: 58 MoE layers, top-8, 256 logical experts on 288 physical (EPLB-style
    // redundancy: 32 replicas of the first 32).
    let (layers, top_k, logical, physical) = (58usize, 8usize, 256u32, 288u32);
    let table: Vec<u32> = (0..physical).map(|p| p % logical).collect();
    let map = ExpertMap::new(&table, logical).unwrap();
    let config = AssemblerConfig::new(layers, top_k, physical, 1 << 16);
    println!("## Assembly on the host (one thread)\n");
    println!("58 layers x top-8, 288 physical experts (256 logical). Per step: `push_step` of T rows, each row a token of one of 64 requests; median of {REPS}.\n");
    println!(
        "| rows per step | push_step (us) | with expert map (us) | map cost | ns per id with map |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for tokens in [128usize, 1024, 8192] {
        let rows = StepRows {
            weights: None,
            tokens,
            layers,
            top_k,
            ids: (0..tokens * layers * top_k)
                .map(|i| (i % physical as usize) as i16)
                .collect(),
        };
        let owners: Vec<RowOwner> = (0..tokens)
            .map(|r| RowOwner::Token {
                request: (r % 64) as u64,
                position: r / 64,
            })
            .collect();
        let mut plain = Assembler::new(config).unwrap();
        let mut mapped = Assembler::with_expert_map(config, map.clone()).unwrap();
        for r in 0..64 {
            plain.start(r, 0).unwrap();
            mapped.start(r, 0).unwrap();
        }
        let base = time_us(|| plain.push_step(&rows, &owners).unwrap());
        let with_map = time_us(|| mapped.push_step(&rows, &owners).unwrap());
        println!(
            "| {tokens} | {base:.1} | {with_map:.1} | {:.2} | {:.2} |",
            with_map / base,
            with_map * 1e3 / (tokens * layers * top_k) as f64
        );
    }

    // Incremental export: a 32768-token request, its last 16 rows new since the last export.
    let mut a = Assembler::new(AssemblerConfig::new(layers, top_k, logical, 1 << 16)).unwrap();
    let len = 32768usize;
    a.start(1, 0).unwrap();
    let row: Vec<i16> = (0..layers * top_k).map(|i| (i % 256) as i16).collect();
    for p in 0..len {
        a.set_row(1, p, &row).unwrap();
    }
    let whole = time_us(|| {
        a.export_range(1, 0, len + 1).unwrap();
    });
    let tail = time_us(|| {
        a.export_range(1, len - 16, len + 1).unwrap();
    });
    println!("\nExport of a {len}-token request: whole {whole:.1} us, its last 16 rows {tail:.2} us ({:.0}x less).", whole / tail);
}
