#!/usr/bin/env python3
"""vLLM's Triton fused MoE, the bf16 path vLLM 0.26.0 takes on Hopper, timed on the GPU for
BENCHMARKS.md (section 7) beside flashinfer-rs/benches/moe_layer.rs and scripts/bench_torch_moe.py.

    bash scripts/fetch-peers.sh                       # here: the sha-pinned vLLM wheel, extracted
                                                      # to gpu-pack/peers/vllm (git-ignored)
    python3 scripts/bench_vllm_moe.py [--check]       # on the GPU machine: torch + triton, no vLLM
    python3 scripts/bench_vllm_moe.py --tiny --device cpu    # anywhere, no GPU: the check only,
                                                      # under Triton's interpreter (TRITON_INTERPRET=1)

The CPU mode needs torch, triton (3.6.0 checked) and numpy < 2.4 (Triton 3.6's interpreter fails
with numpy 2.4); it works around two bf16 faults of that interpreter (fix_interpreter_bf16).

The peer folder (--peers, else $VLLM_PEER_DIR, else gpu-pack/peers/vllm) holds what fetch-peers.sh
cut from the wheel: vLLM's `fused_moe_kernel` (and its `@triton.jit` helper), its launcher
`invoke_fused_moe_triton_kernel`, the config choice (`try_get_optimal_moe_config`: the tuned JSON
of this GPU, nearest M key, else `get_default_config`) and `_prepare_expert_assignment`, verbatim.

The path, as vLLM 0.26's `TritonExperts.apply` runs it (the unquantized MoE oracle puts Triton
first on SM90, FlashInfer's kernels behind it): route (`fused_topk`, softmax, renormalize); the
expert assignment (for few tokens, tokens x top-k x 4 <= experts, vLLM skips the alignment: one
block per (token, expert) pair; else `moe_align_block_size`); `fused_moe_kernel` on w13
[E, 2I, H] (gate rows first, then up); `silu_and_mul` (silu(gate) * up); `fused_moe_kernel` on
w2 [E, H, I] with the routed weights multiplied in (MUL_ROUTED_WEIGHT, top_k 1); `moe_sum`.
Four of those steps are CUDA ops in vllm._C, which this bench cannot load, and vLLM 0.26 has no
Triton or torch fallback for them; here they are torch, and so are timed as torch:
  - `topk_softmax` (routing): softmax in f32, top-k, weights renormalised, ids int32;
  - `moe_align_block_size`: written here in torch (`moe_align_block_size` below) to the CUDA op's
    definition: sorted_token_ids (the flat (token, slot) indices sorted by expert, each expert's
    run padded to a multiple of the block size with the index top_k x tokens, buffer of
    top_k x tokens + experts x (block - 1) entries, capped at top_k x tokens x block below E
    pairs), expert_ids (each block's expert), num_tokens_post_padded; a dozen or more small
    kernels (a sort among them) where the CUDA op is one or two, so its time is shown on its own
    ("alignment");
  - `silu_and_mul`: F.silu(h[:, :I]) * h[:, I:];
  - `moe_sum`: a sum over the top-k dimension.

Layers and data as moe_layer.rs: Qwen3-30B-A3B (128 experts, top-8, hidden 2048, intermediate
768) and a DeepSeek-V3-sized layer in bf16 (256, top-8, 7168, 2048); weights uniform in [-s, s),
s = 2/sqrt(hidden) for w13 and 2/sqrt(intermediate) for w2; activations uniform in [-1, 1);
bf16 logits uniform in [-4, 4). Timing as torch_timing.per_call_us: a CUDA graph of N = 20
back-to-back calls, CUDA events, median of 30 replays after 5 warm-ups, per call in us. Columns:
the layer with routing; the routing alone; the experts given the routing (alignment, two GEMMs,
activation, sum); the alignment alone (part of the previous column); vLLM's kernel config.

Check: the first size of each layer (every size with --check; every size of --tiny) is compared
with a plain torch MoE (a loop over the experts, f32 accumulation, same routing); exits 1 when
the max error is over 2% of the reference's max magnitude (bf16 intermediates).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = [1, 2, 4, 8, 16, 32, 64, 512, 4096]
MODELS = {
    "qwen3": ("Qwen3-30B-A3B layer", 128, 8, 2048, 768),
    "deepseek": ("DeepSeek-V3-sized layer, bf16", 256, 8, 7168, 2048),
}
TINY = ("tiny layer (check of the script)", 8, 2, 128, 64)
TINY_TOKENS = [1, 5, 33]
TOLERANCE = 0.02  # of the reference's max |y|


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="check every size, not only the first")
    p.add_argument("--tiny", action="store_true",
                   help=f"the tiny layer {TINY[1:]} at tokens {TINY_TOKENS}, every size checked")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: Triton's interpreter (sets TRITON_INTERPRET=1), check only, no timing")
    p.add_argument("--layers", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--tokens", nargs="+", type=int, help=f"default {TOKENS} ({TINY_TOKENS} with --tiny)")
    p.add_argument("--peers", default=os.environ.get("VLLM_PEER_DIR",
                                                     os.path.join(HERE, "..", "gpu-pack", "peers", "vllm")),
                   help="the folder scripts/fetch-peers.sh made")
    return p.parse_args()


args = parse_args()
if args.device == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from torch_timing import graphed, per_call_us  # noqa: E402

if not os.path.exists(os.path.join(args.peers, "vllm_fused_moe_kernel.py")):
    sys.exit(f"bench_vllm_moe: no {args.peers}/vllm_fused_moe_kernel.py: run scripts/fetch-peers.sh "
             "(where there is network) and bring its folder along (--peers)")
sys.path.insert(0, os.path.abspath(args.peers))
import vllm_fused_moe_kernel as vk  # noqa: E402


def fix_interpreter_bf16():
    """Two bf16 faults of Triton's interpreter (3.6), which the CPU mode works around, in the
    interpreter only (vLLM's kernel is untouched), and only where a probe finds them: tl.dot
    multiplies bf16 operands as their raw uint16 bits (its create_dot widens only 8-bit floats),
    and f32 -> bf16 casts truncate where the GPU rounds to nearest even. Returns what it fixed."""
    import numpy as np
    from triton.runtime import interpreter

    @triton.jit
    def probe(a_ptr, f_ptr, c_ptr, r_ptr, n):
        i = tl.arange(0, 16)
        a = tl.load(a_ptr + i[:, None] * 16 + i[None, :])
        for _ in range(0, tl.cdiv(n, 16)):  # a loop bound from a runtime argument, as the kernel's
            tl.store(c_ptr + i[:, None] * 16 + i[None, :], tl.dot(a, a))
        tl.store(r_ptr + i, tl.load(f_ptr + i).to(tl.bfloat16))

    eye = torch.eye(16, dtype=torch.bfloat16)
    f = torch.full((16,), 1 + 2.0 ** -8 + 2.0 ** -10)  # rounds up to 1 + 2^-7 in bf16
    c, r = torch.empty(16, 16), torch.empty(16, dtype=torch.bfloat16)
    try:
        probe[(1,)](eye, f, c, r, 16)
    except Exception as e:  # Triton 3.6's interpreter with numpy >= 2.4: int() of a 1-element array
        sys.exit(f"bench_vllm_moe: Triton {triton.__version__}'s interpreter fails on this numpy "
                 f"({np.__version__}): {e!r}; Triton 3.6's works with numpy < 2.4")
    builder, fixed = interpreter.InterpreterBuilder, []
    if not torch.equal(c, torch.eye(16)):
        fixed.append("bf16 tl.dot operands widened to f32")
        create_dot = builder.create_dot

        def widened_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
            if a.dtype.scalar == tl.bfloat16:
                a = self.cast_impl(a, tl.float32)
            if b.dtype.scalar == tl.bfloat16:
                b = self.cast_impl(b, tl.float32)
            return create_dot(self, a, b, d, input_precision, max_num_imprecise_acc)

        builder.create_dot = widened_dot
    if not torch.equal(r, f.to(torch.bfloat16)):
        fixed.append("f32 -> bf16 rounded to nearest even")
        cast_impl = builder.cast_impl

        def rounded_cast(self, src, dst_type):
            if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
                bits = np.asarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
                out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
                return interpreter.TensorHandle(out.reshape(np.shape(src.data)), tl.bfloat16)
            return cast_impl(self, src, dst_type)

        builder.cast_impl = rounded_cast
    return fixed


# ---- Stand-ins for vLLM's CUDA ops (vllm._C), in torch ----------------------------------------

_CONSTS = {}


def _steps(n, step, device, dtype=torch.int32):
    """arange(0, n * step, step), made once (the CUDA op needs no such input)."""
    key = (n, step, str(device), dtype)
    if key not in _CONSTS:
        _CONSTS[key] = torch.arange(0, n * step, step, device=device, dtype=dtype)
    return _CONSTS[key]


def moe_align_block_size(topk_ids, block_size, num_experts, expert_map=None,
                         pad_sorted_ids=False, ignore_invalid_experts=False):
    """vLLM 0.26's moe_align_block_size (vllm/model_executor/layers/fused_moe/
    moe_align_block_size.py around vllm._C's CUDA op), in torch: same outputs, same buffer sizes;
    no host synchronisation (capturable). Within an expert the pairs keep their flat order.
    expert_ids past num_tokens_post_padded are left at num_experts: the kernel returns before
    reading them. Expert parallelism (expert_map) and pad_sorted_ids are not needed here."""
    if expert_map is not None or pad_sorted_ids:
        raise NotImplementedError("expert_map / pad_sorted_ids: not in this stand-in")
    numel, dev = topk_ids.numel(), topk_ids.device
    max_padded = numel + num_experts * (block_size - 1)
    if numel < num_experts:
        max_padded = min(numel * block_size, max_padded)
    max_blocks = triton.cdiv(max_padded, block_size)
    sorted_e, order = torch.sort(topk_ids.view(-1), stable=True)
    # first[e]: where expert e's pairs start in the sorted order (first[E] = numel)
    first = torch.searchsorted(sorted_e, _steps(num_experts + 1, 1, dev, sorted_e.dtype), out_int32=True)
    counts = first[1:] - first[:-1]
    padded = (counts + (block_size - 1)) // block_size * block_size
    ends = padded.cumsum(0, dtype=torch.int32)
    shift = ends - padded - first[:-1]  # padded start - unpadded start, per expert
    dest = shift.index_select(0, sorted_e) + _steps(numel, 1, dev, torch.int64)
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32, device=dev)
    sorted_ids.scatter_(0, dest, order.to(torch.int32))
    expert_ids = torch.searchsorted(ends, _steps(max_blocks, block_size, dev), right=True, out_int32=True)
    return sorted_ids, expert_ids, ends[-1:]


vk.moe_align_block_size = moe_align_block_size  # what vLLM's _prepare_expert_assignment calls


def route(logits, k):
    """vLLM's fused_topk (topk_softmax, renormalize=True) in torch."""
    w, ids = torch.softmax(logits.float(), dim=-1).topk(k, dim=-1)
    return w / w.sum(-1, keepdim=True), ids.to(torch.int32)


# ---- vLLM's path (TritonExperts.apply, unquantized bf16, no expert map, no LoRA) -----------------

def config_for(w13, w2, k, m):
    return vk.try_get_optimal_moe_config(w13.size(), w2.size(), k, None, m)


def assignment(topk_ids, config, e):
    m, k = topk_ids.shape
    return vk._prepare_expert_assignment(topk_ids, config, m, k, e, None)


def gemm(a, w, c, topk_weights, assigned, mul_routed_weight, top_k, config):
    vk.invoke_fused_moe_triton_kernel(
        a, w, c, None, None, topk_weights, *assigned, mul_routed_weight, top_k, config,
        compute_type=tl.bfloat16, use_fp8_w8a8=False, use_int8_w8a8=False, use_int8_w8a16=False,
        use_int4_w4a16=False, per_channel_quant=False, block_shape=None, B_bias=None)


def experts(x, w13, w2, topk_weights, topk_ids):
    m, h = x.shape
    e, n, _ = w13.shape
    k = topk_ids.shape[1]
    config = config_for(w13, w2, k, m)  # host only (lru_cache'd file read)
    assigned = assignment(topk_ids, config, e)
    cache1 = torch.empty(m, k, n, dtype=x.dtype, device=x.device)
    gemm(x, w13, cache1, None, assigned, False, k, config)
    h1 = cache1.view(-1, n)
    cache2 = F.silu(h1[:, : n // 2]) * h1[:, n // 2:]  # silu_and_mul: gate first
    cache3 = torch.empty(m, k, h, dtype=x.dtype, device=x.device)
    gemm(cache2, w2, cache3, topk_weights, assigned, True, 1, config)
    return cache3.sum(dim=1)  # moe_sum


def layer(logits, x, w13, w2, k):
    topk_weights, topk_ids = route(logits, k)
    return experts(x, w13, w2, topk_weights, topk_ids)


def reference(x, w13, w2, topk_weights, topk_ids):
    """The same MoE in plain torch: a loop over the experts, f32 throughout."""
    i = w2.shape[2]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for ex in range(w13.shape[0]):
        tok, slot = (topk_ids == ex).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        hh = x[tok].float() @ w13[ex].float().T
        a = F.silu(hh[:, :i]) * hh[:, i:]
        out.index_add_(0, tok, (a @ w2[ex].float().T) * topk_weights[tok, slot, None])
    return out


def check(name, t, logits, x, w13, w2, k):
    topk_weights, topk_ids = route(logits, k)
    got = layer(logits, x, w13, w2, k).float()
    want = reference(x, w13, w2, topk_weights, topk_ids)
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    ok = err <= TOLERANCE * scale
    print(f"check {name}, {t} tokens: max |vLLM - reference| = {err:.3g} "
          f"(reference max |y| = {scale:.3g}, tolerance {TOLERANCE * scale:.3g}): "
          f"{'ok' if ok else 'MISMATCH'}", file=sys.stderr)
    if not ok:
        sys.exit(f"bench_vllm_moe: {name}, {t} tokens: vLLM's output does not match the reference")


# ---- Timing ----------------------------------------------------------------------------------

def config_text(w13, w2, k, t):
    e, i = w2.shape[0], w2.shape[2]
    c = config_for(w13, w2, k, t)
    tuned = vk.get_moe_configs(e, i, None)
    src = f"JSON M={min(tuned, key=lambda x: abs(x - t))}" if tuned else "default"
    path = "naive" if t * k * 4 <= e else "aligned"
    return (f"{src}, {path}: {c['BLOCK_SIZE_M']}/{c['BLOCK_SIZE_N']}/{c['BLOCK_SIZE_K']} "
            f"g{c['GROUP_SIZE_M']} w{c.get('num_warps', '-')} s{c.get('num_stages', '-')}")


def uniform(shape, scale, dev, gen):
    return torch.empty(shape, dtype=torch.bfloat16, device=dev).uniform_(-scale, scale, generator=gen)


def main():
    dev = torch.device(args.device)
    timing = dev.type == "cuda"
    if timing and not torch.cuda.is_available():
        sys.exit("bench_vllm_moe: no CUDA device (use --tiny --device cpu for the check alone)")
    where = torch.cuda.get_device_name() if timing else "the CPU (Triton interpreter; check only)"
    if not timing:
        fixed = fix_interpreter_bf16()
        if fixed:
            where += f"; this Triton's interpreter fixed for bf16: {', '.join(fixed)}"
    print(f"\nvLLM {vk.VLLM_VERSION} Triton fused MoE ({vk.VLLM_WHEEL}, sha256 {vk.VLLM_WHEEL_SHA256}) "
          f"on {where}; PyTorch {torch.__version__}, Triton {triton.__version__}.\n")
    models = [TINY] if args.tiny else [MODELS[m] for m in args.layers]
    tokens = args.tokens or (TINY_TOKENS if args.tiny else TOKENS)
    gen = torch.Generator(device=dev)
    for name, e, k, h, i in models:
        gen.manual_seed(1)
        w13 = uniform((e, 2 * i, h), 2 / h ** 0.5, dev, gen)
        w2 = uniform((e, h, i), 2 / i ** 0.5, dev, gen)
        cfg_file = vk.get_config_file_name(e, i, None)
        have = os.path.exists(os.path.join(args.peers, "configs", cfg_file))
        print(f"### vLLM Triton: {name} ({e} experts, top-{k}, hidden {h}, intermediate {i}; "
              f"config {cfg_file if have else 'get_default_config (no ' + cfg_file + ')'})\n")
        if timing:
            print("| tokens | vLLM Triton layer incl. torch routing (us) | of which routing (us) "
                  "| the two GEMMs + alignment + activation + sum, routing given (us) "
                  "| of which alignment (torch stand-in) (us) | config (BM/BN/BK, group, warps, stages) |")
            print("|---:|---:|---:|---:|---:|---|")
        for n, t in enumerate(tokens):
            gen.manual_seed(10 + n)
            logits = uniform((t, e), 4.0, dev, gen)
            x = uniform((t, h), 1.0, dev, gen)
            if args.tiny or args.check or n == 0:
                check(name, t, logits, x, w13, w2, k)
            if not timing:
                continue
            topk_weights, topk_ids = route(logits, k)
            config = config_for(w13, w2, k, t)
            us = []
            for fn in (lambda: layer(logits, x, w13, w2, k),
                       lambda: route(logits, k),
                       lambda: experts(x, w13, w2, topk_weights, topk_ids),
                       lambda: assignment(topk_ids, config, e)):
                graph = graphed(fn)
                us.append(per_call_us(graph.replay))
                del graph
            print(f"| {t} | {us[0]:.1f} | {us[1]:.1f} | {us[2]:.1f} | {us[3]:.1f} "
                  f"| {config_text(w13, w2, k, t)} |")
        del w13, w2
        if timing:
            torch.cuda.empty_cache()
        print()


if __name__ == "__main__":
    main()
