#!/usr/bin/env python3
"""The MoE layer a PyTorch user would write, timed on the GPU for BENCHMARKS.md (section 7).

    python3 scripts/bench_torch_moe.py      # on the GPU machine (PyTorch is there)
    python3 scripts/bench_torch_moe.py --layers qwen3 --tokens 1 4096   # one layer, two sizes

The layers of the Rust bench `moe_layer` (gpu-pack/bench.sh layer): Qwen3-30B-A3B (128
experts, top-8, hidden 2048, intermediate 768) and a DeepSeek-V3-sized layer in bf16 (256,
top-8, 7168, 2048), bf16 logits routed by softmax top-k with renormalised weights. The layer:
route, sort the (token, expert) pairs by expert, gather the rows, one grouped GEMM per
projection (`torch._grouped_mm` with per-expert offsets, where this PyTorch has it; else a
loop over the experts), SwiGLU (linear half first), the weighted sum with `index_add_`.
Captured in a CUDA graph (no host synchronisation in it); per call, median over 30
repetitions of 20 back-to-back calls (fewer where 20 would take over 5 ms:
torch_timing.graph_per_call_us) after 5 warm-ups, CUDA events. Prints a Markdown table.
"""
import argparse

import torch
import torch.nn.functional as F

from torch_timing import N, graph_per_call_us, per_call_us

TOKENS = [1, 2, 4, 8, 16, 32, 64, 512, 4096]  # the Rust bench's and bench_vllm_moe.py's sizes
# Keyed as scripts/bench_vllm_moe.py's (gpu-proof.sh layer-bench passes one key to both).
MODELS = {
    "qwen3": ("Qwen3-30B-A3B layer", 128, 8, 2048, 768),
    "deepseek": ("DeepSeek-V3-sized layer, bf16", 256, 8, 7168, 2048),
}
GROUPED = hasattr(torch, "_grouped_mm")


def layer(logits, x, w13, w2, k):
    t, e = logits.shape
    i = w2.shape[2]
    weights, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    weights = weights / weights.sum(-1, keepdim=True)
    flat = ids.flatten()
    order = flat.argsort(stable=True)
    tok = order // k
    xs = x[tok]
    if GROUPED:
        counts = torch.zeros(e, dtype=torch.int32, device=x.device)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = counts.cumsum(0, dtype=torch.int32)
        h = torch._grouped_mm(xs, w13.transpose(1, 2), offs=offs)
        a = F.silu(h[:, i:]) * h[:, :i]
        y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs)
    else:
        sorted_ids = flat[order]
        y = torch.empty(xs.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
        for ex in range(e):
            rows = (sorted_ids == ex).nonzero().squeeze(1)
            h = xs[rows] @ w13[ex].T
            y[rows] = (F.silu(h[:, i:]) * h[:, :i]) @ w2[ex].T
    y = y * weights.flatten()[order].unsqueeze(1).to(y.dtype)
    return torch.zeros_like(x).index_add_(0, tok, y)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--tokens", nargs="+", type=int, default=TOKENS, help=f"default {TOKENS}")
    return p.parse_args()


def main():
    args = parse_args()
    dev = torch.device("cuda")
    print(f"\nPyTorch {torch.__version__} on {torch.cuda.get_device_name()}; grouped GEMM: "
          f"{'torch._grouped_mm, captured in a CUDA graph' if GROUPED else 'a loop over the experts (no torch._grouped_mm), eager'}.\n")
    for name, e, k, h, i in (MODELS[key] for key in args.layers):
        w13 = (torch.rand(e, 2 * i, h, device=dev, dtype=torch.bfloat16) * 2 - 1) * (2 / h ** 0.5)
        w2 = (torch.rand(e, h, i, device=dev, dtype=torch.bfloat16) * 2 - 1) * (2 / i ** 0.5)
        print(f"### PyTorch: {name}\n")
        print("| tokens | PyTorch layer (us) |")
        print("|---:|---:|")
        for t in args.tokens:
            logits = torch.randn(t, e, device=dev, dtype=torch.bfloat16) * 4
            x = torch.randn(t, h, device=dev, dtype=torch.bfloat16)
            if GROUPED:
                us = graph_per_call_us(lambda: layer(logits, x, w13, w2, k))
            else:  # the expert loop synchronises (nonzero): eager (per_call_us warms it up)
                def run():
                    for _ in range(N):
                        layer(logits, x, w13, w2, k)
                us = per_call_us(run)
            print(f"| {t} | {us:.1f} |")
        del w13, w2
        torch.cuda.empty_cache()
        print()


if __name__ == "__main__":
    main()
