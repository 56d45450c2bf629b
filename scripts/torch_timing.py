"""The timing both PyTorch benchmarks use (bench_torch_routing.py, bench_torch_moe.py), the
same as the Rust benches': `fn` runs N back-to-back calls; CUDA events around each of
WARMUP + REPS runs; the median of the timed ones, per call, in microseconds."""
import statistics

import torch

N, REPS, WARMUP = 20, 30, 5


def per_call_us(fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for i in range(WARMUP + REPS):
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= WARMUP:
            samples.append(start.elapsed_time(end) * 1000.0 / N)
    return statistics.median(samples)
