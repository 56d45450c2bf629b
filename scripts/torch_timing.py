"""The timing the Python benchmarks use (bench_torch_routing.py, bench_torch_moe.py,
bench_vllm_moe.py), the same as the Rust benches': `fn` runs N back-to-back calls; CUDA events
around each of WARMUP + REPS runs; the median of the timed ones, per call, in microseconds.
`graphed` records N calls of a function into one CUDA graph."""
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


def graphed(fn):
    """Warm up on a side stream (compilers such as Triton's run here), then record N calls of
    `fn` into one CUDA graph; time its `replay`."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(N):
            fn()
    return graph
