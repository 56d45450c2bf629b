//! Capture across ranks: one process per rank, an NCCL communicator between them, every
//! rank's captured rows checked against the oracle over many steps of random per-rank batch
//! sizes. Run it as a test (`cargo test --features sm90,nccl --test ranks`): the process
//! started without `FLASHINFER_RS_RANK` is the launcher; it makes the NCCL unique id, starts
//! one copy of itself per rank and fails if any rank fails.
//!
//! Per step, the ranks share one seed, so each knows every rank's batch size:
//! - per-rank combine: a rank routes only its own tokens (`StepLayout::per_rank`);
//! - naive DP dispatch with expert parallelism: each layer's logits are all-gathered (padded
//!   to the largest batch), every rank routes the whole padded batch with the routing config
//!   of its local experts, and keeps its own slice (global ids, as replay records them);
//! - sequence parallelism: each rank routes its shard into a `ShardGather`'s views, and one
//!   all-gather per step lands every shard in the rank's store in token order.
//!
//! Ranks and GPUs: `FLASHINFER_RS_RANKS` ranks (default: the GPU count, at least 2), rank `r`
//! on GPU `r % gpus`. With fewer GPUs than ranks, the ranks share a GPU: NCCL refuses two
//! ranks of one communicator on one GPU of one host, so each rank then gets its own
//! `NCCL_HOSTID` (NCCL then connects them as separate hosts, through sockets on loopback).
//! `FLASHINFER_RS_RANK_STEPS` sets the steps (default 1000). NCCL is loaded at run time
//! (`libnccl.so.2` on the library path); without it, or without a GPU, the launcher says
//! it skipped (a failure under `FLASHINFER_RS_REQUIRE_GPU=1`).
mod rank;

use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

use flashinfer_rs::cudarc::nccl::Id;

fn main() -> ExitCode {
    match std::env::var("FLASHINFER_RS_RANK") {
        Ok(rank) => rank::run(rank.parse().expect("FLASHINFER_RS_RANK: a number")),
        Err(_) => launch(),
    }
}

fn required() -> bool {
    std::env::var("FLASHINFER_RS_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

fn skip(why: &str) -> ExitCode {
    if required() {
        eprintln!("ranks: FLASHINFER_RS_REQUIRE_GPU=1 but {why}");
        return ExitCode::FAILURE;
    }
    eprintln!("ranks: skipped: {why}");
    ExitCode::SUCCESS
}

fn launch() -> ExitCode {
    if !flashinfer_rs::build_info().kernels_built {
        return skip("built without kernels");
    }
    let gpus = flashinfer_rs::cuda_device_count();
    if gpus == 0 {
        return skip("no CUDA device");
    }
    let world: usize = std::env::var("FLASHINFER_RS_RANKS")
        .map(|v| v.parse().expect("FLASHINFER_RS_RANKS: a number"))
        .unwrap_or(gpus.max(2));
    // cudarc loads libnccl at first use and panics when it cannot.
    let id = match std::panic::catch_unwind(Id::new) {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => return skip(&format!("ncclGetUniqueId failed: {e:?}")),
        Err(_) => return skip("libnccl.so.2 cannot be loaded (put NCCL on the library path)"),
    };
    let hex: String = id
        .internal()
        .iter()
        .map(|&b| format!("{:02x}", b as u8))
        .collect();
    let shared = gpus < world;
    eprintln!(
        "ranks: {world} ranks on {gpus} GPU(s){}",
        if shared {
            ", sharing GPUs (one NCCL_HOSTID per rank)"
        } else {
            ""
        }
    );
    let exe = std::env::current_exe().expect("the harness's own path");
    let mut children: Vec<(usize, Child)> = (0..world)
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.env("FLASHINFER_RS_RANK", rank.to_string())
                .env("FLASHINFER_RS_WORLD", world.to_string())
                .env("FLASHINFER_RS_RANK_DEVICE", (rank % gpus).to_string())
                .env("FLASHINFER_RS_NCCL_ID", &hex)
                // Never NVLink multicast (it can take the host's GPUs out of service).
                .env("NCCL_NVLS_ENABLE", "0");
            if shared {
                cmd.env("NCCL_HOSTID", format!("flashinfer-rs-rank-{rank}"));
                cmd.env("NCCL_SOCKET_IFNAME", "lo");
            }
            (rank, cmd.spawn().expect("start a rank"))
        })
        .collect();
    let limit = Duration::from_secs(
        std::env::var("FLASHINFER_RS_RANKS_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(540),
    );
    let started = Instant::now();
    let mut failed = Vec::new();
    while !children.is_empty() {
        let mut i = 0;
        while i < children.len() {
            match children[i].1.try_wait().expect("a rank's status") {
                Some(status) => {
                    let (rank, _) = children.remove(i);
                    if !status.success() {
                        failed.push(format!("rank {rank}: {status}"));
                    }
                }
                None => i += 1,
            }
        }
        if started.elapsed() > limit {
            for (rank, child) in &mut children {
                let _ = child.kill();
                failed.push(format!(
                    "rank {rank}: still running after {limit:?}, killed"
                ));
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if failed.is_empty() {
        eprintln!(
            "ranks: all {world} ranks passed in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        ExitCode::SUCCESS
    } else {
        eprintln!("ranks: FAILED: {}", failed.join("; "));
        ExitCode::FAILURE
    }
}
