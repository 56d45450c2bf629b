"""The timing the Python benchmarks use (bench_torch_routing.py, bench_torch_moe.py,
bench_vllm_moe.py, bench_peer_routers.py), the same as the Rust benches': `fn` runs N
back-to-back calls; CUDA events around each of WARMUP + REPS runs; the median of the timed ones,
per call, in microseconds. `graphed` records N calls of a function into one CUDA graph;
`graph_per_call_us` times one with fewer calls where N would take longer than RUN_US, as
benches/moe_layer.rs does."""
import math
import statistics

import torch

N, REPS, WARMUP = 20, 30, 5
# A timed graph's length worth having: its launch (a few microseconds) is under 0.1% of it; more
# calls a graph only add device time (35 replays of 20 calls of 14 ms take 10 s).
RUN_US = 5000.0


def per_call_us(fn, n=N):
    """Per-call us of `fn`, which makes `n` calls."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    samples = []
    for i in range(WARMUP + REPS):
        start.record()
        fn()
        end.record()
        end.synchronize()
        if i >= WARMUP:
            samples.append(start.elapsed_time(end) * 1000.0 / n)
    return statistics.median(samples)


def graphed(fn, n=N):
    """Warm up on a side stream (compilers such as Triton's run here), then record `n` calls of
    `fn` into one CUDA graph; time its `replay`."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(n):
            fn()
    return graph


def graph_per_call_us(fn):
    """Per-call us of `fn` in a CUDA graph of N calls, or of as many as fill RUN_US by a graph of
    one call's time (its second replay), at least one."""
    one = graphed(fn, 1)
    one.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    one.replay()
    end.record()
    end.synchronize()
    del one
    n = max(1, min(N, math.ceil(RUN_US / (start.elapsed_time(end) * 1000.0))))
    graph = graphed(fn, n)
    us = per_call_us(graph.replay, n)
    del graph
    return us
