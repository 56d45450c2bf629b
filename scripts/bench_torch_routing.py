#!/usr/bin/env python3
"""What a PyTorch user would write for MoE routing, timed on the GPU for BENCHMARKS.md.

    python3 scripts/bench_torch_routing.py      # on the GPU machine (PyTorch is there)

The routers of the Rust bench's tables 4 and 6 (`gpu-pack/bench.sh peers`, `topk`):
DeepSeek-V3 grouped (256 experts, top-8, 8 groups, 4 kept, fp32 logits), Qwen3 Renormalize
(128 experts, top-8, bf16), Qwen3-Next (512, top-10, bf16), gpt-oss (128, top-4, bf16),
Kimi-K2 ungrouped sigmoid + bias (384, top-8, fp32) and Llama 4 (128, top-1, bf16), eager and
captured in a CUDA graph; per call, median over repetitions of 20 back-to-back calls, CUDA
events, warm-up first. Prints a Markdown table.
"""
import torch

from torch_timing import N, graphed, per_call_us

TOKENS = [1, 16, 128, 1024, 8192, 32768, 131072]


def deepseek_v3(logits, bias, n_group=8, topk_group=4, k=8, scale=2.5):
    t, e = logits.shape
    s = logits.sigmoid()
    sb = s + bias
    group = sb.view(t, n_group, e // n_group).topk(2, dim=-1).values.sum(-1)
    keep = group.topk(topk_group, dim=-1).indices
    mask = torch.zeros_like(group).scatter_(1, keep, 1.0)
    mask = mask.unsqueeze(-1).expand(t, n_group, e // n_group).reshape(t, e)
    idx = sb.masked_fill(mask == 0, float("-inf")).topk(k, dim=-1).indices
    w = s.gather(1, idx)
    return idx.to(torch.int16), (w / w.sum(-1, keepdim=True) * scale).to(torch.bfloat16)


def renormalize(logits, k=8):
    v, idx = logits.topk(k, dim=-1)
    return idx.to(torch.int16), torch.softmax(v.float(), dim=-1).to(torch.bfloat16)


def sigmoid_bias_ungrouped(logits, bias, k=8, scale=2.827):
    s = logits.sigmoid()
    idx = (s + bias).topk(k, dim=-1).indices
    w = s.gather(1, idx)
    return idx.to(torch.int16), (w / (w.sum(-1, keepdim=True) + 1e-20) * scale).to(torch.bfloat16)


def llama4(logits):
    v, idx = logits.topk(1, dim=-1)
    return idx.to(torch.int16), v.float().sigmoid().to(torch.bfloat16)


def main():
    dev = torch.device("cuda")
    print(f"GPU: {torch.cuda.get_device_name(0)}; PyTorch {torch.__version__}\n")
    print("| router | tokens | PyTorch eager (us) | PyTorch CUDA graph (us) |")
    print("|---|---:|---:|---:|")
    for name, e, dtype, fn, needs_bias in [
        ("DeepSeek-V3", 256, torch.float32, deepseek_v3, True),
        ("Qwen3 Renormalize", 128, torch.bfloat16, renormalize, False),
        ("Qwen3-Next (512e, top-10)", 512, torch.bfloat16, lambda l: renormalize(l, 10), False),
        ("gpt-oss (128e, top-4)", 128, torch.bfloat16, lambda l: renormalize(l, 4), False),
        ("Kimi-K2 (384e, top-8)", 384, torch.float32, sigmoid_bias_ungrouped, True),
        ("Llama4 (128e, top-1)", 128, torch.bfloat16, llama4, False),
    ]:
        for t in TOKENS:
            logits = torch.randn(t, e, device=dev, dtype=dtype)
            bias = torch.rand(e, device=dev) * 0.01
            call = (lambda: fn(logits, bias)) if needs_bias else (lambda: fn(logits))

            def eager():
                for _ in range(N):
                    call()

            graph = graphed(call)
            print(f"| {name} | {t} | {per_call_us(eager):.2f} | {per_call_us(graph.replay):.2f} |")


if __name__ == "__main__":
    main()
