#!/usr/bin/env python3
"""Assembles BENCHMARKS.md from one GPU run's outputs.

    # on the GPU machine (same session):
    bash gpu-pack/bench.sh > bench.md
    python3 scripts/bench_torch_routing.py > torch.md
    # anywhere:
    python3 scripts/make_benchmarks_md.py bench.md torch.md > BENCHMARKS.md

The tables come from the run; the comparison with PyTorch is computed here from both files;
the discussion of each target (docs/benchmarks-analysis.md) is prose kept by hand.
"""
import re
import sys
from pathlib import Path

HEADER = """# Benchmarks

All numbers below come from **one run on one GPU**; `nvidia-smi` at the start read: {gpu}
(name, driver, SM and memory clocks; the SM clock boosts under load). As printed by the commands below;
FlashInfer 0.6.13 kernels built by flashinfer-rs with nvcc 13.0.88 (CUDA 13.0 runtime, static),
{torch}.

```sh
bash scripts/gpu-pack.sh                              # here: builds the bench into gpu-pack/
bash gpu-pack/bench.sh > bench.md                     # on the GPU machine: tables 1-5
python3 scripts/bench_torch_routing.py > torch.md     # same machine, same session: PyTorch
python3 scripts/make_benchmarks_md.py bench.md torch.md > BENCHMARKS.md
```

Method: CUDA events around CUDA-graph replays of N back-to-back calls (20 for routing, one step
of L calls for capture), 5 warm-up replays, 30 timed, variants interleaved replay by replay,
median and p10..p90; host timers where the host is what is measured (3, 3b, 5). Ratios are
computed within the run. No test asserts a time.
"""


def main(bench_path, torch_path):
    bench = Path(bench_path).read_text()
    torch = Path(torch_path).read_text()
    smi = bench.splitlines()[0]
    body = bench.split("# flashinfer-rs benchmarks", 1)[1].strip()
    torch_gpu = re.search(r"PyTorch (\S+)", torch)
    print(HEADER.format(gpu=smi.strip(), torch=f"PyTorch {torch_gpu.group(1)}" if torch_gpu else "PyTorch"))
    print(body)
    ours = {}
    for line in body.splitlines():
        m = re.match(r"\| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| (met|missed) \| (\d+) \| (\d+) \| ([\d.]+) \|", line)
        if m:
            ours[("DeepSeek-V3", int(m.group(1)))] = float(m.group(2))
        m = re.match(r"\| Qwen3-30B-A3B \(128e, top-8, Renormalize, bf16\) \| (\d+) \| [\d.]+ \([^)]*\) \| ([\d.]+) \(", line)
        if m:
            ours[("Qwen3 Renormalize", int(m.group(1)))] = float(m.group(2))
    print("\n## 4b. Against what a PyTorch user would write (same GPU, same session)\n")
    print("`scripts/bench_torch_routing.py`: sigmoid + bias, grouped top-2 sum, group top-k, masked")
    print("top-k, gather and renormalise (DeepSeek-V3); `topk` + softmax (Qwen3 Renormalize). \"Ours\" is")
    print("the routing call with the replay buffer (table 4 for DeepSeek-V3, table 1 for Qwen3); ours also")
    print("builds the grouped-GEMM permutation, which the PyTorch code does not.\n")
    print("| router | tokens | ours, with replay (us) | PyTorch eager (us) | PyTorch CUDA graph (us) | graph / ours | eager / ours | target | verdict |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for line in torch.splitlines():
        m = re.match(r"\| (DeepSeek-V3|Qwen3 Renormalize) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if not m or (m.group(1), int(m.group(2))) not in ours:
            continue
        name, t, eager, graph = m.group(1), int(m.group(2)), float(m.group(3)), float(m.group(4))
        o = ours[(name, t)]
        target = 10 if t <= 8192 else 5
        verdict = "met" if graph / o >= target else "missed"
        print(f"| {name} | {t} | {o:.2f} | {eager:.2f} | {graph:.2f} | {graph / o:.1f}x | {eager / o:.1f}x | >= {target}x | {verdict} |")
    print()
    print((Path(__file__).resolve().parent.parent / "docs" / "benchmarks-analysis.md").read_text().strip())


if __name__ == "__main__":
    main(*sys.argv[1:3])
