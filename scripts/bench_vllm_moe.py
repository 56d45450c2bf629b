#!/usr/bin/env python3
"""vLLM's Triton fused MoE, the bf16 path vLLM 0.26.0 takes on Hopper (with --fp8, its Triton
path for fp8 per-tensor weights and activations; with --fp8-blocks, for DeepSeek-V3's block fp8),
timed on the GPU for BENCHMARKS.md (section 7) beside flashinfer-rs/benches/moe_layer.rs and
scripts/bench_torch_moe.py.

    bash scripts/fetch-peers.sh                       # here: the sha-pinned vLLM wheel, extracted
                                                      # to gpu-pack/peers/vllm (git-ignored)
    python3 scripts/bench_vllm_moe.py [--check]       # on the GPU machine: torch + triton, no vLLM
    python3 scripts/bench_vllm_moe.py --fp8 [--check] # the same, fp8 W8A8 per-tensor (below)
    python3 scripts/bench_vllm_moe.py --fp8-blocks [--check]  # the same, DeepSeek-V3's block fp8
    python3 scripts/bench_vllm_moe.py --tiny --device cpu    # anywhere, no GPU: the check only,
                                                      # under Triton's interpreter (TRITON_INTERPRET=1)
    python3 scripts/bench_vllm_moe.py --tiny --device cpu --fp8
    python3 scripts/bench_vllm_moe.py --tiny --device cpu --fp8-blocks

The CPU mode needs torch, triton (3.6.0 checked) and numpy < 2.4 (Triton 3.6's interpreter fails
with numpy 2.4); it works around two bf16 faults of that interpreter (fix_interpreter_bf16) and,
with --fp8-blocks, one in its f32 -> fp8 cast (fix_interpreter_fp8).

The peer folder (--peers, else $VLLM_PEER_DIR, else gpu-pack/peers/vllm) holds what fetch-peers.sh
cut from the wheel: vLLM's `fused_moe_kernel` (and its `@triton.jit` helper), its launcher
`invoke_fused_moe_triton_kernel`, the config choice (`try_get_optimal_moe_config`: the tuned JSON
of this GPU, nearest M key, else `get_default_config`) and `_prepare_expert_assignment`, verbatim;
and, for --fp8-blocks, `_per_token_group_quant_fp8` (the Triton kernel of fp8_utils.py's
per_token_group_quant_fp8 fallback) and the block-fp8 tuned JSONs (an older extract lacks them:
run fetch-peers.sh again).

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

--fp8: fp8 W8A8 per tensor with static activation scales (a checkpoint with
`activation_scheme: static`, vLLM's Fp8MoEMethod) as TritonExperts runs it, which vLLM 0.26 does
where its MoE backend is Triton (`--moe-backend triton`; on SM90 its fp8 oracle, left on auto,
puts FlashInfer's CUTLASS MoE and vLLM's CUTLASS MoE ahead of Triton for this scheme). The same
bf16 weights, quantised to float8_e4m3fn with one f32 scale per expert, amax / 448: w13's shared
by gate and up (vLLM's `w13_weight_scale` after it max-merges the two shards' scales), w2's; the
static activation scales as vLLM keeps them (0-dim f32, the max over experts): a1 = 1/448 for the
hidden states in [-1, 1), a2 = 4/448 for the SwiGLU output (beyond +-4 it clamps, as in vLLM).
The path: the hidden states quantised with a1 (vLLM's prepare step); `fused_moe_kernel` with
use_fp8_w8a8=True, A_scale a1, B_scale w13's scales, per_channel_quant False, block_shape None
(the per-tensor branch: the dots accumulated in f32, times a_scale x b_scale[expert], then bf16:
compute_type bf16, as vLLM sets for fp8 hidden states; on SM90 with BLOCK_SIZE_M < 64 <=
BLOCK_SIZE_N the kernel swaps A and B, enable_swap_ab, shown in the config column);
`silu_and_mul` in bf16; its output quantised with a2; the w2 GEMM with A_scale a2, B_scale w2's
scales; `moe_sum`. The quantisation is vLLM's `scaled_fp8_quant` (static per tensor), another
vllm._C CUDA op, so here torch, timed as torch: x (as f32) times the f32 reciprocal of the scale
(the CUDA kernel multiplies by 1/scale), clamped to +-448, cast to torch.float8_e4m3fn (round to
nearest even); five small kernels where the CUDA op is one, so the two quantisations together
are also timed on their own.
The config: try_get_optimal_moe_config with dtype "fp8_w8a8", i.e. a JSON named
`E=..,N=..,device_name=..,dtype=fp8_w8a8.json`; the 0.26.0 wheel has none for either layer (only
block-wise `,block_shape=[128,128]` ones for E=128,N=768, which per-tensor does not read), so vLLM
takes get_default_config's fp8 branch (BLOCK_SIZE_K 128), as the bench then does.

--fp8-blocks: DeepSeek-V3's fp8 format (`weight_block_size` [128, 128], dynamic activations) as
vLLM 0.26's Fp8MoEMethod runs it with TritonExperts, which on SM90 its fp8 oracle puts first for
this scheme without expert parallelism (FlashInfer's CUTLASS MoE first with EP). The same bf16
weights, quantised to float8_e4m3fn per 128 x 128 block with one f32 scale each, amax / 448 (the
checkpoint's `w13_weight_scale_inv` [E, 2I/128, H/128] and `w2_weight_scale_inv` [E, H/128, I/128];
dequantised = code x scale); no activation scales: the activations are quantised inside the call,
per token and group of 128 columns, by vLLM's `per_token_group_quant_fp8` (f32 scales [M, K/128]).
The path: the hidden states quantised so (vLLM's prepare step); `fused_moe_kernel` with
use_fp8_w8a8=True, block_shape [128, 128] (group_n = group_k = 128: per 128-deep K tile an fp8
dot times the token's group scale and the block's scale, summed in f32; bf16 out; A_scale the
group scales, B_scale the block scales; swap AB on SM90 as with --fp8); `silu_and_mul` in bf16; its
output quantised per token group likewise; the w2 GEMM the same way; `moe_sum`. vLLM runs
per_token_group_quant_fp8 as vllm._C's CUDA op; the function's own fallback is a Triton kernel of
vLLM's, `_per_token_group_quant_fp8`, which fetch-peers.sh cuts verbatim and the bench launches as
that fallback does (`group_quant`): vLLM's code, not a torch stand-in, one kernel per quantisation
as the CUDA op is, and the two quantisations are also timed on their own. Its scales: use_ue8m0 is
vLLM's is_deep_gemm_e8m0_used(), True on SM90 by default in 0.26 (the wheel bundles DeepGEMM;
VLLM_USE_DEEP_GEMM and VLLM_USE_DEEP_GEMM_E8M0 default to 1, and nothing there limits E8M0 to
Blackwell), so each activation scale is amax / 448 rounded up to a power of two (UE8M0 = True;
the weights' scales stay f32: only vLLM's DeepGEMM backend re-quantises those). With
VLLM_USE_DEEP_GEMM_E8M0=0 vLLM keeps f32 activation scales and fuses silu_and_mul with the second
quantisation (vllm._C's silu_and_mul_per_block_quant: the SwiGLU in f32, not rounded to bf16, one
kernel); that variant is not benched here (the same GEMMs and configs; set UE8M0 = False for its
scales alone). The config: try_get_optimal_moe_config with dtype "fp8_w8a8" and block_shape
[128, 128], i.e. `E=..,N=..,device_name=..,dtype=fp8_w8a8,block_shape=[128,128].json`: the 0.26.0
wheel has one for E=128,N=768 on the H200 (and B200, GB200, H20, H20-3e, MI300X), none on the H100
and none for E=256,N=2048 (whole, TP 1; DeepSeek-V3 at TP 8 would be E=256,N=256), where vLLM
takes get_default_config's block-fp8 branch (BLOCK_SIZE_M 16 up to 64 tokens, else 64;
BLOCK_SIZE_N 64 up to 8 tokens, else 128; BLOCK_SIZE_K 128; GROUP_SIZE_M 1 up to 16 tokens, else
32; 4 warps; 4 stages up to 4 tokens, else 3), as the bench then does.

Layers and data as moe_layer.rs: Qwen3-30B-A3B (128 experts, top-8, hidden 2048, intermediate
768) and a DeepSeek-V3-sized layer (256, top-8, 7168, 2048), in bf16 (or, with --fp8, fp8 per
tensor, which is not DeepSeek-V3's block-wise fp8; with --fp8-blocks, that one); weights uniform
in [-s, s), s = 2/sqrt(hidden) for w13 and 2/sqrt(intermediate) for w2; activations uniform in [-1, 1);
bf16 logits uniform in [-4, 4). Timing as torch_timing.graph_per_call_us: a CUDA graph of N = 20
back-to-back calls (fewer where 20 would take over 5 ms), CUDA events, median of 30 replays after
5 warm-ups, per call in us. Columns:
the layer with routing; the routing alone; the experts given the routing (alignment, two GEMMs,
activation, sum; with --fp8 or --fp8-blocks the two activation quantisations too); the alignment
alone (part of the previous column); with --fp8 or --fp8-blocks, the two quantisations alone (part
of it too); vLLM's config.

Check: the first size of each layer (every size with --check; every size of --tiny) is compared
with a plain torch MoE (a loop over the experts, f32 accumulation, same routing); exits 1 when
the max error is over 2% of the reference's max magnitude (bf16 intermediates). With --fp8 the
reference takes the dequantised operands (the quantised hidden states and weights times their
scales; the SwiGLU output, in f32 there, quantised with a2 and dequantised), so what remains is
rounding, and the bound is 4%: as with bf16, the bf16 intermediates and output, plus the SwiGLU
elements that the kernel path (bf16 GEMM output, bf16 silu_and_mul) and the reference (f32) put
on either side of an fp8 rounding boundary, each then one fp8 step apart (1/16 to 1/8 of the
element: e4m3 has 3 mantissa bits), a few per token; and on SM90 the fp8 MMAs' reduced-precision
accumulation (Triton's default there). Seen: 0.8-2.4% on the tiny layer (CPU); 1.6-1.9% from a
torch model of the kernel path at both layers' sizes, that accumulation modelled as a 13-bit
truncation per 32-deep step. With --fp8-blocks the reference takes the weights dequantised from
their blocks, the hidden states quantised per token and group of 128 and dequantised (its own
torch quantisation, group_qdq, to the kernel's formula), and the SwiGLU output, in f32 there,
rounded to bf16, then quantised per group and dequantised; the bound is 4%, for the same reasons.
These uniform data give every weight block about the same amax, and every hidden-state group too
(about 1: with UE8M0 all 1/256), so the check cannot tell a scale read from the wrong block or
group there; the SwiGLU output's group scales do differ. --tiny with --fp8-blocks takes a tiny
layer of 8 experts, top-2, hidden 256, intermediate 128 (both multiples of the 128 block; the
tiny layer's 64 is not).
"""
import argparse
import os
import sys
from typing import NamedTuple

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = [1, 2, 4, 8, 16, 32, 64, 512, 4096]
MODELS = {
    "qwen3": ("Qwen3-30B-A3B layer", 128, 8, 2048, 768),
    "deepseek": ("DeepSeek-V3-sized layer", 256, 8, 7168, 2048),
}
TINY = ("tiny layer (check of the script)", 8, 2, 128, 64)
# --fp8-blocks: hidden and intermediate must be multiples of the 128 block (TINY's 64 is not)
TINY_BLOCKS = ("tiny layer (check of the script)", 8, 2, 256, 128)
TINY_TOKENS = [1, 5, 33]
TOLERANCE, FP8_TOLERANCE = 0.02, 0.04  # of the reference's max |y|
A1_SCALE, A2_SCALE = 1 / 448, 4 / 448  # --fp8: static scales, hidden states and SwiGLU output
BLOCK_SHAPE = [128, 128]  # --fp8-blocks: DeepSeek-V3's weight_block_size (a list, as vLLM passes it)
# --fp8-blocks: vLLM 0.26's per_token_group_quant_fp8 takes use_ue8m0 = is_deep_gemm_e8m0_used(),
# True on SM90 by default (its bundled DeepGEMM, VLLM_USE_DEEP_GEMM_E8M0 unset): see the docstring
UE8M0 = True


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="check every size, not only the first")
    p.add_argument("--tiny", action="store_true",
                   help=f"the tiny layer {TINY[1:]} at tokens {TINY_TOKENS}, every size checked")
    p.add_argument("--fp8", action="store_true",
                   help="fp8 W8A8 per tensor, static activation scales (vLLM's Triton path for it)")
    p.add_argument("--fp8-blocks", action="store_true",
                   help="DeepSeek-V3's block fp8: 128x128 weight blocks, activations per token and "
                        f"128-column group (vLLM's Triton path for it); --tiny: {TINY_BLOCKS[1:]}")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                   help="cpu: Triton's interpreter (sets TRITON_INTERPRET=1), check only, no timing")
    p.add_argument("--layers", nargs="+", choices=sorted(MODELS), default=list(MODELS))
    p.add_argument("--tokens", nargs="+", type=int, help=f"default {TOKENS} ({TINY_TOKENS} with --tiny)")
    p.add_argument("--peers", default=os.environ.get("VLLM_PEER_DIR",
                                                     os.path.join(HERE, "..", "gpu-pack", "peers", "vllm")),
                   help="the folder scripts/fetch-peers.sh made")
    a = p.parse_args()
    if a.fp8 and a.fp8_blocks:
        p.error("--fp8 (per tensor) or --fp8-blocks, not both")
    return a


args = parse_args()
if args.device == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"  # read when the kernels are decorated: before the import

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from torch_timing import graph_per_call_us  # noqa: E402

if not os.path.exists(os.path.join(args.peers, "vllm_fused_moe_kernel.py")):
    sys.exit(f"bench_vllm_moe: no {args.peers}/vllm_fused_moe_kernel.py: run scripts/fetch-peers.sh "
             "(where there is network) and bring its folder along (--peers)")
sys.path.insert(0, os.path.abspath(args.peers))
import vllm_fused_moe_kernel as vk  # noqa: E402

if args.fp8_blocks and not hasattr(vk, "_per_token_group_quant_fp8"):
    sys.exit(f"bench_vllm_moe: {args.peers} is an older extract, without vLLM's per-token-group "
             "quantisation kernel (--fp8-blocks): run scripts/fetch-peers.sh again")


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


def fix_interpreter_fp8():
    """A fault of Triton's interpreter (3.6) in f32 -> float8e4nv casts (the `.to()` of vLLM's
    per-token-group quantisation kernel, --fp8-blocks), worked around in the interpreter only and
    only where a probe finds it: its _convert_float rounds the 3-bit mantissa up without carrying
    into an odd exponent field (1.97 becomes 1.0, not 2.0: about 3% of the codes at half their
    value) and rounds ties up, where the GPU rounds to nearest even (cvt.rn.satfinite; the kernel
    clamps to +-448 first); the cast is redone with torch's, which rounds to nearest even."""
    import numpy as np
    from triton.runtime import interpreter

    @triton.jit
    def probe(f_ptr, q_ptr):
        i = tl.arange(0, 4)
        tl.store(q_ptr + i, tl.load(f_ptr + i).to(q_ptr.dtype.element_ty))  # as the kernel casts

    f = torch.tensor([1.96875, 1.0625, -3.0, 0.3])  # to 2.0 (the carry), 1.0 (tie to even), ...
    q = torch.empty(4, dtype=torch.float8_e4m3fn)
    probe[(1,)](f, q)
    if torch.equal(q.view(torch.uint8), f.to(torch.float8_e4m3fn).view(torch.uint8)):
        return []
    builder = interpreter.InterpreterBuilder
    create_fp_to_fp = builder.create_fp_to_fp

    def rounded_fp_to_fp(self, src, dst_type, rounding_mode):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.float8e4nv:
            x = torch.tensor(np.asarray(src.data, dtype=np.float32))
            out = x.to(torch.float8_e4m3fn).view(torch.uint8).numpy()
            return interpreter.TensorHandle(out.reshape(np.shape(src.data)), tl.float8e4nv)
        return create_fp_to_fp(self, src, dst_type, rounding_mode)

    builder.create_fp_to_fp = rounded_fp_to_fp
    return ["f32 -> fp8e4nv rounded to nearest even"]


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


FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448


def quantize(x, scale):
    """vLLM's scaled_fp8_quant, static per tensor, in torch (the weights' quantisation too, expert
    by expert); no scale: x as it is (unquantized, as vLLM's moe_kernel_quantize_input)."""
    if scale is None:
        return x
    return (x.float() * scale.reciprocal()).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def group_quant(x, group_size=BLOCK_SHAPE[1]):
    """vLLM's per_token_group_quant_fp8(x, group_size) (--fp8-blocks): its Triton kernel,
    `_per_token_group_quant_fp8` from the peer folder, launched as that function's Triton fallback
    launches it (one program per group, row-major f32 scales [M, K / group], eps 1e-10, +-448,
    use_ue8m0 UE8M0); vLLM itself takes vllm._C's CUDA op (same formula), which this bench cannot
    load. Returns x in float8_e4m3fn and its scales."""
    assert x.is_contiguous()  # as vLLM's callers give it (the fallback's x.shape[1] is the row)
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(x.shape[0], x.shape[1] // group_size, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(group_size)
    vk._per_token_group_quant_fp8[(x.numel() // group_size,)](
        x, q, s, group_size, x.shape[1], x.stride(0), 1e-10,
        fp8_min=-FP8_MAX, fp8_max=FP8_MAX, use_ue8m0=UE8M0, BLOCK=block,
        num_warps=min(max(block // 256, 1), 8), num_stages=1)
    return q, s


def blocks(w, b=BLOCK_SHAPE[0]):
    """w [N, K] as [N/b, b, K/b, b] (a view): a scale [N/b, K/b] broadcasts as [:, None, :, None]."""
    n, k = w.shape
    return w.unflatten(1, (k // b, b)).unflatten(0, (n // b, b))


# ---- vLLM's path (TritonExperts.apply: bf16, fp8 per tensor or block fp8; no expert map, no LoRA)

class MoE(NamedTuple):
    """The experts as TritonExperts gets them: bf16 weights, no scales; or (--fp8) float8_e4m3fn
    weights, their f32 scales [E] (w1_scale, w2_scale) and the static activation scales, 0-dim f32
    (a1_scale, a2_scale); or (--fp8-blocks) float8_e4m3fn weights, their f32 scales per block
    ([E, 2I/128, H/128] and [E, H/128, I/128], the checkpoint's weight_scale_inv), no activation
    scales (dynamic, per token group) and block_shape [128, 128]."""
    w13: torch.Tensor  # [E, 2I, H], gate rows first
    w2: torch.Tensor  # [E, H, I]
    w13_scale: torch.Tensor | None = None
    w2_scale: torch.Tensor | None = None
    a1_scale: torch.Tensor | None = None
    a2_scale: torch.Tensor | None = None
    block_shape: list[int] | None = None

    @property
    def fp8(self):
        return self.w13_scale is not None

    @property
    def config_dtype(self):
        """vLLM's FusedMoEQuantConfig.config_name: the dtype in the tuned JSON's name."""
        return "fp8_w8a8" if self.fp8 else None

    def dequantized(self, ex):
        """Expert ex's w13 and w2 in f32 (times their scales)."""
        if not self.fp8:
            return self.w13[ex].float(), self.w2[ex].float()
        if self.block_shape is not None:
            return (block_dequant(self.w13[ex], self.w13_scale[ex]),
                    block_dequant(self.w2[ex], self.w2_scale[ex]))
        return self.w13[ex].float() * self.w13_scale[ex], self.w2[ex].float() * self.w2_scale[ex]


def block_dequant(w, scale):
    """w [N, K] (float8_e4m3fn) times its block scales [N/128, K/128], in f32."""
    return (blocks(w.float()) * scale[:, None, :, None]).reshape(w.shape)


def config_for(moe, k, m):
    return vk.try_get_optimal_moe_config(moe.w13.size(), moe.w2.size(), k, moe.config_dtype, m,
                                         moe.block_shape)


def assignment(topk_ids, config, e):
    m, k = topk_ids.shape
    return vk._prepare_expert_assignment(topk_ids, config, m, k, e, None)


def gemm(a, w, c, a_scale, w_scale, topk_weights, assigned, mul_routed_weight, top_k, config,
         block_shape=None):
    """As TritonExperts calls it: compute_type bf16 (bf16 or fp8 hidden states); fp8 where there
    are scales (use_fp8_w8a8, per_channel_quant False): per tensor with block_shape None, else
    block-wise (group_n, group_k = block_shape; a_scale per token and K group, w_scale per block)."""
    vk.invoke_fused_moe_triton_kernel(
        a, w, c, a_scale, w_scale, topk_weights, *assigned, mul_routed_weight, top_k, config,
        compute_type=tl.bfloat16, use_fp8_w8a8=w_scale is not None, use_int8_w8a8=False,
        use_int8_w8a16=False, use_int4_w4a16=False, per_channel_quant=False, block_shape=block_shape,
        B_bias=None)


def quantize_input(a, moe, scale):
    """An activation and its scale as the GEMM takes them: block fp8 quantises per token group,
    dynamically (vLLM's moe_kernel_quantize_input -> per_token_group_quant_fp8); else `quantize`
    with the static scale (None: a as it is)."""
    if moe.block_shape is not None:
        return group_quant(a, moe.block_shape[1])
    return quantize(a, scale), scale


def experts(x, moe, topk_weights, topk_ids):
    m, h = x.shape
    e, n, _ = moe.w13.shape
    k = topk_ids.shape[1]
    config = config_for(moe, k, m)  # host only (lru_cache'd file read)
    assigned = assignment(topk_ids, config, e)
    a1, a1_scale = quantize_input(x, moe, moe.a1_scale)  # vLLM's prepare step
    cache1 = torch.empty(m, k, n, dtype=x.dtype, device=x.device)
    gemm(a1, moe.w13, cache1, a1_scale, moe.w13_scale, None, assigned, False, k, config,
         moe.block_shape)
    h1 = cache1.view(-1, n)
    cache2 = F.silu(h1[:, : n // 2]) * h1[:, n // 2:]  # silu_and_mul: gate first
    a2, a2_scale = quantize_input(cache2, moe, moe.a2_scale)
    cache3 = torch.empty(m, k, h, dtype=x.dtype, device=x.device)
    gemm(a2, moe.w2, cache3, a2_scale, moe.w2_scale, topk_weights, assigned, True, 1, config,
         moe.block_shape)
    return cache3.sum(dim=1)  # moe_sum


def layer(logits, x, moe, k):
    topk_weights, topk_ids = route(logits, k)
    return experts(x, moe, topk_weights, topk_ids)


def qdq(a, scale, block_shape=None):
    """a in f32, quantised and dequantised where there is a scale; block fp8: rounded to bf16 (the
    kernel path's activations are bf16), then per token group (group_qdq)."""
    if block_shape is not None:
        return group_qdq(a.to(torch.bfloat16), block_shape[1])
    return a.float() if scale is None else quantize(a, scale).float() * scale


def group_qdq(a, group_size):
    """a [M, K] quantised per token and group of columns, in torch (not vLLM's kernel), to the
    kernel's formula: scale = max(amax, 1e-10) * (1/448) (a power of two up with UE8M0), code =
    a / scale clamped to +-448, round to nearest even; then code * scale, in f32."""
    t = a.float().unflatten(-1, (-1, group_size))
    s = t.abs().amax(-1, keepdim=True).clamp_min(1e-10) * (1 / FP8_MAX)
    if UE8M0:
        s = torch.exp2(torch.ceil(torch.log2(s)))
    return ((t / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * s).flatten(-2)


def reference(x, moe, topk_weights, topk_ids):
    """The same MoE in plain torch: a loop over the experts, f32 throughout; fp8: on the
    dequantised operands, the SwiGLU output quantised with a2 and dequantised (block fp8: rounded
    to bf16, then per token group)."""
    i = moe.w2.shape[2]
    x = qdq(x, moe.a1_scale, moe.block_shape)
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    for ex in range(moe.w13.shape[0]):
        tok, slot = (topk_ids == ex).nonzero(as_tuple=True)
        if tok.numel() == 0:
            continue
        w13, w2 = moe.dequantized(ex)
        hh = x[tok] @ w13.T
        a = qdq(F.silu(hh[:, :i]) * hh[:, i:], moe.a2_scale, moe.block_shape)
        out.index_add_(0, tok, (a @ w2.T) * topk_weights[tok, slot, None])
    return out


def check(name, t, logits, x, moe, k):
    topk_weights, topk_ids = route(logits, k)
    got = layer(logits, x, moe, k).float()
    want = reference(x, moe, topk_weights, topk_ids)
    err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    tolerance = (FP8_TOLERANCE if moe.fp8 else TOLERANCE) * scale
    ok = err <= tolerance
    print(f"check {name}, {t} tokens: max |vLLM - reference| = {err:.3g} "
          f"(reference max |y| = {scale:.3g}, tolerance {tolerance:.3g}): "
          f"{'ok' if ok else 'MISMATCH'}", file=sys.stderr)
    if not ok:
        sys.exit(f"bench_vllm_moe: {name}, {t} tokens: vLLM's output does not match the reference")


# ---- Data and timing -------------------------------------------------------------------------

def uniform(shape, scale, dev, gen):
    return torch.empty(shape, dtype=torch.bfloat16, device=dev).uniform_(-scale, scale, generator=gen)


def fp8_per_expert(w):
    """w in float8_e4m3fn with one f32 scale per expert, amax / 448 (expert by expert: no f32 copy
    of the whole of w)."""
    scale = torch.stack([we.abs().max() for we in w]).float() / FP8_MAX
    q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=w.device)
    for ex, we in enumerate(w):
        q[ex] = quantize(we, scale[ex])
    return q, scale


def fp8_per_block(w):
    """w [E, N, K] in float8_e4m3fn with one f32 scale per 128 x 128 block, amax / 448 (DeepSeek-V3's
    weight_scale_inv, [E, N/128, K/128]; dequantised = code x scale), expert by expert."""
    e, n, k = w.shape
    b = BLOCK_SHAPE[0]
    scale = torch.empty(e, n // b, k // b, dtype=torch.float32, device=w.device)
    q = torch.empty(w.shape, dtype=torch.float8_e4m3fn, device=w.device)
    for ex, we in enumerate(w):
        wb = blocks(we)
        scale[ex] = wb.abs().amax(dim=(1, 3)).float() / FP8_MAX
        q[ex] = quantize(wb, scale[ex][:, None, :, None]).reshape(n, k)
    return q, scale


def make_moe(e, h, i, fp8, dev, gen, fp8_blocks=False):
    w13 = uniform((e, 2 * i, h), 2 / h ** 0.5, dev, gen)
    w2 = uniform((e, h, i), 2 / i ** 0.5, dev, gen)
    if fp8_blocks:  # the same bf16 weights, per block; the activations' scales come per call
        (w13, w13_scale), (w2, w2_scale) = fp8_per_block(w13), fp8_per_block(w2)
        return MoE(w13, w2, w13_scale, w2_scale, block_shape=BLOCK_SHAPE)
    if not fp8:
        return MoE(w13, w2)
    (w13, w13_scale), (w2, w2_scale) = fp8_per_expert(w13), fp8_per_expert(w2)
    a1_scale, a2_scale = (torch.tensor(a, dtype=torch.float32, device=dev)
                          for a in (A1_SCALE, A2_SCALE))
    return MoE(w13, w2, w13_scale, w2_scale, a1_scale, a2_scale)


def config_text(moe, k, t):
    e, i = moe.w2.shape[0], moe.w2.shape[2]
    c = config_for(moe, k, t)
    tuned = vk.get_moe_configs(e, i, moe.config_dtype, *(moe.block_shape or ()))
    src = f"JSON M={min(tuned, key=lambda x: abs(x - t))}" if tuned else "default"
    path = "naive" if t * k * 4 <= e else "aligned"
    # invoke_fused_moe_triton_kernel's choice for fp8: A and B swapped (SM90, BM < 64 <= BN)
    swap = ", swap AB" if moe.fp8 and vk.enable_swap_ab(c["BLOCK_SIZE_M"], c["BLOCK_SIZE_N"]) else ""
    return (f"{src}, {path}: {c['BLOCK_SIZE_M']}/{c['BLOCK_SIZE_N']}/{c['BLOCK_SIZE_K']} "
            f"g{c['GROUP_SIZE_M']} w{c.get('num_warps', '-')} s{c.get('num_stages', '-')}{swap}")


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
        fixed = fix_interpreter_fp8() if args.fp8_blocks else []
        if fixed:
            where += f"; fixed for fp8: {', '.join(fixed)}"
    print(f"\nvLLM {vk.VLLM_VERSION} Triton fused MoE ({vk.VLLM_WHEEL}, sha256 {vk.VLLM_WHEEL_SHA256}) "
          f"on {where}; PyTorch {torch.__version__}, Triton {triton.__version__}.\n")
    models = [TINY_BLOCKS if args.fp8_blocks else TINY] if args.tiny else [MODELS[m] for m in args.layers]
    tokens = args.tokens or (TINY_TOKENS if args.tiny else TOKENS)
    precision = "fp8 per-tensor (W8A8, static activation scales)" if args.fp8 else "bf16"
    if args.fp8_blocks:
        precision = ("block fp8 (DeepSeek-V3's: 128x128 weight blocks; activations per token and "
                     f"128-column group, dynamic, {'UE8M0' if UE8M0 else 'f32'} scales)")
    quantisations = " + fp8 quantisations" if args.fp8 or args.fp8_blocks else ""
    columns = ["vLLM Triton layer incl. torch routing", "of which routing",
               f"the two GEMMs + alignment + activation{quantisations} + sum, routing given",
               "of which alignment (torch stand-in)"]
    if args.fp8:
        columns.append("of which fp8 quantisations (torch stand-in)")
    if args.fp8_blocks:
        columns.append("of which fp8 quantisations (vLLM's Triton kernel)")
    gen = torch.Generator(device=dev)
    for name, e, k, h, i in models:
        gen.manual_seed(1)
        moe = make_moe(e, h, i, args.fp8, dev, gen, args.fp8_blocks)
        cfg_file = vk.get_config_file_name(e, i, moe.config_dtype, moe.block_shape)
        have = os.path.exists(os.path.join(args.peers, "configs", cfg_file))
        print(f"### vLLM Triton, {precision}: {name} ({e} experts, top-{k}, hidden {h}, intermediate {i}; "
              f"config {cfg_file if have else 'get_default_config (no ' + cfg_file + ')'})\n")
        if timing:
            print("| tokens | " + " | ".join(f"{c} (us)" for c in columns)
                  + " | config (BM/BN/BK, group, warps, stages) |")
            print("|---:|" + "---:|" * len(columns) + "---|")
        for n, t in enumerate(tokens):
            gen.manual_seed(10 + n)
            logits = uniform((t, e), 4.0, dev, gen)
            x = uniform((t, h), 1.0, dev, gen)
            if args.tiny or args.check or n == 0:
                check(name, t, logits, x, moe, k)
            if not timing:
                continue
            topk_weights, topk_ids = route(logits, k)
            config = config_for(moe, k, t)
            fns = [lambda: layer(logits, x, moe, k),
                   lambda: route(logits, k),
                   lambda: experts(x, moe, topk_weights, topk_ids),
                   lambda: assignment(topk_ids, config, e)]
            if moe.fp8:
                act = uniform((t * k, i), 1.0, dev, gen)  # the SwiGLU output's shape
                fns.append(lambda: (quantize_input(x, moe, moe.a1_scale),
                                    quantize_input(act, moe, moe.a2_scale)))
            us = [graph_per_call_us(fn) for fn in fns]
            print(f"| {t} | " + " | ".join(f"{u:.1f}" for u in us) + f" | {config_text(moe, k, t)} |")
        del moe
        if timing:
            torch.cuda.empty_cache()
        print()


if __name__ == "__main__":
    main()
