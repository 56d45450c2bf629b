#!/usr/bin/env python3
"""The peers' MoE routers beside ours (BENCHMARKS.md section 6, issue 29): SGLang's
`moe_fused_gate` and vLLM's bundled `triton_kernels` top-k, timed on the GPU in the harness of
table 6 (`bash gpu-pack/bench.sh topk`, flashinfer-rs/benches/moe_routing.rs) with an empty-kernel
launch floor, and checked against a torch reference of each model's router.

    bash scripts/fetch-peers.sh                    # here: the sha-pinned wheels, extracted to
                                                   # gpu-pack/peers (git-ignored)
    python3 scripts/bench_peer_routers.py          # on the GPU machine: torch + triton, no SGLang
                                                   # or vLLM installed
    python3 scripts/bench_peer_routers.py --check  # anywhere, no GPU (torch, and triton for the
                                                   # peers): the checker's self-test, then the
                                                   # peers under Triton's interpreter on the CPU

The peers, as the pinned wheels have them (scripts/fetch-peers.sh cuts them out verbatim):
  - SGLang 0.5.23's `moe_fused_gate` (sglang/kernels/ops/moe/moe_fused_gate.py), a Triton kernel
    in the sglang wheel (`_router_triton_kernel`: one warp per program, one row per program, or
    2 rows at 128 experts); SGLang's CUDA paths no longer call sgl-kernel's CUDA op of that name
    (sglang/srt/layers/moe/topk.py: "retired"). SGLang runs it on CUDA for Kimi-K2 (384 experts, one group: biased_grouped_topk_gpu's `_jit_gate_ok`)
    and for every softmax top-k (fused_topk: Qwen3, Qwen3-Next, gpt-oss). For DeepSeek-V3's groups
    SGLang's default is FlashInfer's `fused_topk_deepseek` (the NoAuxTc column of table 6);
    moe_fused_gate is there its opt-in (SGLANG_OPT_USE_JIT_KERNEL_GROUPED_TOPK) and its fallback
    where FlashInfer's constraints fail. Called as SGLang calls it: sigmoid with the fp32 bias,
    renormalised, num_expert_group / topk_group (DeepSeek-V3's 8 / 4), the scale applied to the
    output (apply_routed_scaling_factor_on_output, so that its weights are the reference's; where
    SGLang applies it later the kernel skips one multiply); softmax without bias, renormalised.
    Programmatic dependent launch (PDL) is on from SM90, as SGLang sets it (the kernel waits with
    gdc_wait before its loads and lets the next launch start with gdc_launch_dependents before its
    stores), so in a graph of 20 back-to-back calls a launch can overlap the previous call's
    tail; it is also timed with PDL off, as our router is launched.
  - vLLM 0.26.0's bundled `triton_kernels` `topk` (vllm/third_party/triton_kernels/topk.py, kernel
    `_topk_forward` in topk_details/): the top-k of the logits, a softmax over those k
    (apply_softmax=True: Renormalize), weights in the logits' dtype (bf16), ids int16, and a
    bitmatrix of the choices; the top-k of vLLM's gpt-oss MoE (triton_kernel_moe_forward, where
    the bundled version's `routing()` then sorts the tokens, not timed here). Renormalize models
    with a power-of-two k only (the kernel's tl.arange(0, k)): not Qwen3-Next's top-10.
  - Table 6's Llama 4 (128 experts, top-1, then sigmoid) has no peer kernel (SGLang and vLLM route
    it in torch), nor does sigmoid + bias in triton_kernels: no rows.

Data as moe_routing.rs: logits uniform in [-4, 4) (fp32, or rounded to bf16), bias 0.01 per
expert. Timing as torch_timing.per_call_us: a CUDA graph of 20 calls, 5 warm-ups, the median of 30
replays, per call in us; a call whose capture fails is timed eagerly (20 calls a sample) and the
table says so. floor: an empty Triton kernel (no arguments, one warp) in the same harness.

Check (the first size of each model, every size with --check-all), against a reference in f32
torch on the same logits:
  - sigmoid + bias (DeepSeek-V3; Kimi-K2 as one group): transformers' DeepseekV3TopkRouter (5.17,
    the GPU machine's): sigmoid; + bias for the choice; per group the sum of its top 2;
    topk_group groups kept, the others -inf; top-k; weights the chosen sigmoids / (sum + 1e-20)
    x routed_scaling_factor;
  - Renormalize (Qwen3-30B-A3B, Qwen3-Next, gpt-oss): transformers' Qwen3MoeTopKRouter: softmax in
    f32, top-k, divided by their sum (gpt-oss's router, a softmax over the top-k logits, is the
    same function).
ids: equal as sets per token, except where the differing experts tie (within 1e-6) with the
reference's k-th in its ranking key (the biased sigmoid, or the softmax); weights, matched by
expert: within 1e-3, plus one bf16 ulp of the weight where the peer returns bf16 (vLLM's: the GPU
rounds to nearest, Triton's CPU interpreter truncates). A mismatch, or a peer that raises, is shown
in the table and makes the exit status 1.

--check (CPU, no timing): (1) the checker against planted faults (the reference shuffled, and a tie
swapped, must pass; a wrong expert, a weight 2e-3 off and an expert chosen twice must fail), and
the torch references against a per-token loop in Python floats; (2) the peers under Triton's
interpreter (TRITON_INTERPRET=1) at 1, 5 and 33 tokens of each model, every size checked. Without
triton or the peer folder, (2) is skipped and the output says so. Triton 3.6's interpreter takes
only torch tensors as kernel arguments, where triton_kernels' topk passes its own Tensor wrapper:
--check unwraps it, in the interpreter only (unwrap_for_interpreter).
"""
import argparse
import math
import os
import sys
from typing import Callable, NamedTuple, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
TOKENS = [1, 16, 128, 1024, 8192, 32768, 131072]
CHECK_TOKENS = [1, 5, 33]  # 33: more than one program of vLLM's 32-row blocks
TIE_TOL = 1e-6  # ranking keys closer than this to the k-th count as tied
WEIGHT_TOL = 1e-3
BF16_ULP = 2.0 ** -7  # one bf16 ulp, relative to the value, at most (8 significant bits)
FLOOR = "floor: empty Triton kernel, 1 warp"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="CPU self-test: the checker, the references, the peers under Triton's interpreter")
    p.add_argument("--check-all", action="store_true", help="GPU: check every size, not only the first")
    p.add_argument("--models", nargs="+", metavar="PREFIX", help="only models whose name starts so")
    p.add_argument("--tokens", nargs="+", type=int,
                   help=f"default {TOKENS} ({CHECK_TOKENS} with --check)")
    p.add_argument("--peers", default=os.path.join(HERE, "..", "gpu-pack", "peers"),
                   help="the folder scripts/fetch-peers.sh made (its sglang/ and vllm/)")
    return p.parse_args()


args = parse_args()
if args.check:
    os.environ["TRITON_INTERPRET"] = "1"  # read when kernels are decorated: before any import
try:
    import torch
except ImportError:
    sys.exit("bench_peer_routers: needs torch (here: a venv with torch; the GPU machine's python3 has it)")
try:
    import triton
except ImportError:
    if not args.check:
        sys.exit("bench_peer_routers: needs triton")
    triton = None
if triton is not None:
    from torch_timing import N, graphed, per_call_us

    @triton.jit
    def empty_kernel():  # the launch floor: no arguments, no work
        pass


class Model(NamedTuple):
    name: str  # as in table 6 (flashinfer-rs/tests/fixtures/models.rs)
    experts: int
    k: int
    bf16: bool  # bf16 logits, else fp32
    sigmoid: bool  # sigmoid + bias, DeepSeek-V3's way; else softmax, top-k, renormalised
    groups: int = 1
    groups_kept: int = 1
    scale: float = 1.0


MODELS = [
    Model("DeepSeek-V3 (256e, top-8, 8 groups/4 kept, fp32)", 256, 8, False, True, 8, 4, 2.5),
    Model("Qwen3-30B-A3B (128e, top-8, Renormalize, bf16)", 128, 8, True, False),
    Model("Qwen3-Next (512e, top-10, Renormalize, bf16)", 512, 10, True, False),
    Model("gpt-oss (128e, top-4, Renormalize, bf16)", 128, 4, True, False),
    Model("Kimi-K2 (384e, top-8, ungrouped sigmoid + bias, fp32)", 384, 8, False, True, 1, 1, 2.827),
]


class Peer(NamedTuple):
    name: str
    unsupported: Callable[[Model], Optional[str]]  # why it cannot route this model, else None
    route: Callable  # (model, logits, bias) -> (ids [T, k], weights [T, k])
    bf16_weights: bool


class Reference(NamedTuple):
    ids: "torch.Tensor"  # [T, k]: the chosen experts
    key: "torch.Tensor"  # [T, E] f32: what the choice ranks (-inf outside the kept groups)
    weight: "torch.Tensor"  # [T, E] f32: each expert's weight, were it chosen with the reference's set


def inputs(m, t, dev, gen):
    """Logits and bias as moe_routing.rs makes them."""
    logits = torch.empty(t, m.experts, device=dev).uniform_(-4.0, 4.0, generator=gen)
    if m.bf16:
        logits = logits.to(torch.bfloat16)
    bias = torch.full((m.experts,), 0.01, device=dev) if m.sigmoid else None
    return logits, bias


def reference(m, logits, bias):
    x = logits.float()
    t = x.shape[0]
    if m.sigmoid:  # transformers 5.17 DeepseekV3TopkRouter.forward, after the gate's linear
        scores = x.sigmoid()
        choice = scores + bias
        group_scores = choice.view(t, m.groups, -1).topk(2, dim=-1)[0].sum(dim=-1)
        group_idx = torch.topk(group_scores, k=m.groups_kept, dim=-1, sorted=False)[1]
        group_mask = torch.zeros_like(group_scores).scatter_(1, group_idx, 1)
        score_mask = (group_mask.unsqueeze(-1).expand(t, m.groups, m.experts // m.groups)
                      .reshape(t, m.experts))
        choice = choice.masked_fill(~score_mask.bool(), float("-inf"))
        ids = torch.topk(choice, k=m.k, dim=-1, sorted=False)[1]
        denominator = scores.gather(1, ids).sum(dim=-1, keepdim=True) + 1e-20
        return Reference(ids, choice, scores / denominator * m.scale)
    # transformers 5.17 Qwen3MoeTopKRouter.forward (norm_topk_prob), after the gate's linear
    probs = torch.softmax(x, dim=-1)
    top, ids = torch.topk(probs, m.k, dim=-1)
    return Reference(ids, probs, probs / top.sum(dim=-1, keepdim=True))


def check(ref, ids, weights, bf16_weights):
    """(ok, text): a peer's [T, k] ids and weights against the reference."""
    t, e = ref.key.shape
    ids = ids.long()
    if ids.shape != ref.ids.shape or ids.min() < 0 or ids.max() >= e:
        return False, f"MISMATCH: ids of shape {tuple(ids.shape)} or out of [0, {e})"
    chosen = torch.zeros(t, e, dtype=torch.bool, device=ids.device).scatter_(1, ids, True)
    if (chosen.sum(dim=1) != ids.shape[1]).any():
        return False, "MISMATCH: an expert chosen twice for a token"
    wanted = torch.zeros_like(chosen).scatter_(1, ref.ids, True)
    kth = ref.key.gather(1, ref.ids).min(dim=1, keepdim=True).values
    differ = chosen ^ wanted
    ties = differ & ((ref.key - kth).abs() <= TIE_TOL)
    if (differ & ~ties).any():
        tok = int((differ & ~ties).any(dim=1).nonzero()[0])
        return False, (f"MISMATCH: ids of token {tok}: {sorted(ids[tok].tolist())}, "
                       f"reference {sorted(ref.ids[tok].tolist())}")
    want = ref.weight.gather(1, ids)
    err = (weights.float() - want).abs()
    tol = WEIGHT_TOL + (BF16_ULP * want.abs() if bf16_weights else 0.0)
    if (err > tol).any():
        return False, f"MISMATCH: weights off by up to {err.max().item():.2e}"
    swaps = int(ties.sum()) // 2
    swapped = f" ({swaps} tie swap{'s' * (swaps > 1)})" if swaps else ""
    return True, (f"ok: ids = reference{swapped}, "
                  f"max weight error {err.max().item():.1e}")


# ---- The peers -------------------------------------------------------------------------------

def sglang_peer(sg, pdl):
    sglangs_choice = sg.is_arch_support_pdl  # on from SM90

    def route(m, logits, bias):
        sg.is_arch_support_pdl = sglangs_choice if pdl else (lambda: False)
        if m.sigmoid:  # as biased_grouped_topk_gpu calls it
            w, i = sg.moe_fused_gate(logits, bias, m.k, scoring_func="sigmoid", renormalize=True,
                                     routed_scaling_factor=m.scale,
                                     apply_routed_scaling_factor_on_output=True,
                                     num_expert_group=m.groups, topk_group=m.groups_kept)
        else:  # as fused_topk calls it
            w, i = sg.moe_fused_gate(logits, None, m.k, scoring_func="softmax", renormalize=True)
        return i, w

    pdl_text = "" if not sglangs_choice() else (", PDL" if pdl else ", no PDL")
    return Peer(f"SGLang {sg.SGLANG_VERSION} moe_fused_gate (Triton{pdl_text})",
                lambda m: None, route, bf16_weights=False)


def vllm_peer(topk):
    def unsupported(m):
        if m.sigmoid:
            return "no sigmoid + bias (topk: softmax over the top-k logits, or none)"
        if m.k & (m.k - 1):
            return f"top-{m.k}: the kernel's tl.arange(0, k) needs a power of two"
        return None

    def route(m, logits, bias):
        values, ids, _bitmatrix = topk(logits, m.k, apply_softmax=True)
        return ids, values

    return Peer("vLLM 0.26.0 triton_kernels topk (Triton)", unsupported, route, bf16_weights=True)


def unwrap_for_interpreter(tensor_class):
    """Triton 3.6's interpreter copies each tensor argument to the host through its storage and
    knows torch tensors (and its own TensorWrapper) only; triton_kernels' topk launches with its
    Tensor wrapper of the logits. Under the interpreter only: the wrapper is read as the torch
    tensor it holds."""
    from triton.runtime import interpreter

    unwrap, rewrap = interpreter._unwrap_tensor, interpreter._rewrap_tensor
    interpreter._unwrap_tensor = (
        lambda t: t.storage.data if isinstance(t, tensor_class) else unwrap(t))
    interpreter._rewrap_tensor = (
        lambda t, original_tensor: t if isinstance(original_tensor, tensor_class)
        else rewrap(t, original_tensor))


def load_peers(folder, cpu):
    """The peers in the folder fetch-peers.sh made, and a line on where each comes from (or why
    it is missing)."""
    peers, lines = [], []
    sglang_dir, vllm_dir = os.path.join(folder, "sglang"), os.path.join(folder, "vllm")
    if os.path.exists(os.path.join(sglang_dir, "sglang_moe_fused_gate.py")):
        sys.path.insert(0, os.path.abspath(sglang_dir))
        import sglang_moe_fused_gate as sg

        peers.append(sglang_peer(sg, pdl=True))
        if sg.is_arch_support_pdl():
            peers.append(sglang_peer(sg, pdl=False))
        lines.append(f"SGLang {sg.SGLANG_VERSION}: {sg.SGLANG_WHEEL}, sha256 {sg.SGLANG_WHEEL_SHA256}")
    else:
        lines.append(f"no {sglang_dir}/sglang_moe_fused_gate.py: run scripts/fetch-peers.sh")
    if os.path.exists(os.path.join(vllm_dir, "triton_kernels", "topk.py")):
        sys.path.insert(0, os.path.abspath(vllm_dir))
        import triton_kernels
        import triton_kernels.tensor
        from triton_kernels.topk import topk

        found = os.path.dirname(os.path.dirname(os.path.abspath(triton_kernels.__file__)))
        if found != os.path.abspath(vllm_dir):  # not a triton_kernels installed there
            sys.exit(f"bench_peer_routers: triton_kernels comes from {triton_kernels.__file__}, "
                     f"not the vLLM extract in {vllm_dir}")
        if cpu:
            unwrap_for_interpreter(triton_kernels.tensor.Tensor)
        peers.append(vllm_peer(topk))
        with open(os.path.join(vllm_dir, "SOURCE.txt")) as f:
            lines.append("vLLM triton_kernels: " + f.readline().strip())
    else:
        lines.append(f"no {vllm_dir}/triton_kernels/topk.py: run scripts/fetch-peers.sh")
    return peers, lines


# ---- The self-test of --check ----------------------------------------------------------------

def loop_reference(m, logits, bias):
    """The same routers, token by token in Python floats (f64), written apart from `reference`:
    the chosen ids and their weights, as [T, k] tensors."""
    all_ids, all_weights = [], []
    size = m.experts // m.groups
    for row in logits.float().tolist():
        if m.sigmoid:
            s = [1.0 / (1.0 + math.exp(-v)) for v in row]
            c = [v + b for v, b in zip(s, bias.tolist())]
            group = [sum(sorted(c[g * size:(g + 1) * size])[-2:]) for g in range(m.groups)]
            kept = sorted(range(m.groups), key=lambda g: -group[g])[:m.groups_kept]
            ids = sorted((i for i in range(m.experts) if i // size in kept), key=lambda i: -c[i])[:m.k]
            total = sum(s[i] for i in ids)
            weights = [s[i] / total * m.scale for i in ids]
        else:
            ids = sorted(range(m.experts), key=lambda i: -row[i])[:m.k]
            top = max(row)
            total = sum(math.exp(row[i] - top) for i in ids)
            weights = [math.exp(row[i] - top) / total for i in ids]
        all_ids.append(ids)
        all_weights.append(weights)
    return torch.tensor(all_ids), torch.tensor(all_weights)


def self_test():
    """The checker against planted faults, and the references against loop_reference; returns
    whether all went as expected."""
    ok = True
    gen = torch.Generator()
    for m in MODELS:
        gen.manual_seed(7)
        logits, bias = inputs(m, 8, "cpu", gen)
        passed, text = check(reference(m, logits, bias), *loop_reference(m, logits, bias), False)
        print(f"self-test: {m.name}: the reference against a per-token loop: {text}")
        ok &= passed
    m = MODELS[1]  # Qwen3: bf16 logits, where ties happen
    gen.manual_seed(8)
    logits, _ = inputs(m, 4, "cpu", gen)
    order = logits.float().argsort(dim=1, descending=True)
    logits[0, order[0, m.k]] = logits[0, order[0, m.k - 1]]  # token 0: the k-th and next tie
    ref = reference(m, logits, None)
    ids, weights = ref.ids, ref.weight.gather(1, ref.ids)
    row, a, b = ids[0].tolist(), int(order[0, m.k - 1]), int(order[0, m.k])
    chosen, other = (a, b) if a in row else (b, a)
    swapped = ids.clone()
    swapped[0, row.index(chosen)] = other
    wrong = ids.clone()
    wrong[1, 0] = int(logits[1].float().argmin())
    twice = ids.clone()
    twice[2, 1] = twice[2, 0]
    off = weights.clone()
    off[3, 0] += 2e-3
    shuffle = torch.randperm(m.k, generator=gen)
    cases = [
        ("the reference, each token's experts shuffled", ids[:, shuffle], weights[:, shuffle], True),
        ("a tie swapped (token 0: the k-th for the equal (k+1)-th)", swapped,
         ref.weight.gather(1, swapped), True),
        ("a wrong expert (token 1: the first for the least)", wrong, weights, False),
        ("an expert chosen twice (token 2)", twice, weights, False),
        ("a weight 2e-3 off (token 3)", ids, off, False),
    ]
    for what, case_ids, case_weights, expected in cases:
        passed, text = check(ref, case_ids, case_weights, False)
        print(f"self-test: {m.name}: {what}: {text} (expected {'ok' if expected else 'MISMATCH'})")
        ok &= passed == expected
    return ok


# ---- Timing and the table --------------------------------------------------------------------

def time_it(fn):
    """Per-call us and how: a CUDA graph of N calls, else (capture refused) N eager calls."""
    try:
        graph = graphed(fn)
    except Exception as e:  # whatever refused the capture: timed eagerly instead, and said so
        torch.cuda.synchronize()

        def eager():
            for _ in range(N):
                fn()

        return per_call_us(eager), f"eager (capture failed: {type(e).__name__})"
    return per_call_us(graph.replay), "graph"


def cell(text):
    return str(text).replace("|", "/").replace("\n", " ")


def short(e):
    lines = [line for line in str(e).splitlines() if line.strip()]
    return cell(f"{type(e).__name__}: {lines[-1] if lines else ''}")[:160]


def main():
    cpu = args.check
    dev = torch.device("cpu" if cpu else "cuda")
    if not cpu and not torch.cuda.is_available():
        sys.exit("bench_peer_routers: no CUDA device (--check runs on the CPU)")
    failures = 0
    if cpu:
        print("## Self-test (CPU)\n")
        failures += not self_test()
        print()
    if triton is None:
        print("no triton here: the peers are not run (the self-test above is all of --check)")
        return failures
    peers, lines = load_peers(args.peers, cpu)
    missing = [line for line in lines if line.startswith("no ")]
    if missing and not cpu:
        sys.exit("bench_peer_routers: " + "; ".join(missing))
    where = ("the CPU (Triton's interpreter; checks only, no timing)" if cpu
             else torch.cuda.get_device_name())
    print(f"## Peer routers on {where}; PyTorch {torch.__version__}, Triton {triton.__version__}\n")
    for line in lines:
        print(f"- {line}")
    print("\nPer call, us: a CUDA graph of 20 calls, median of 30 replays after 5 warm-ups; "
          "/ floor: the peer's time over the floor's (an empty Triton kernel, one warp) in the same "
          "harness. check: ids and weights against the model's torch reference, at "
          f"{'every size' if cpu or args.check_all else 'the first size'}.\n")
    print("| model | tokens | peer | us | / floor | timed as | check |")
    print("|---|---:|---|---:|---:|---|---|")
    tokens = args.tokens or (CHECK_TOKENS if cpu else TOKENS)
    models = [m for m in MODELS if not args.models or any(m.name.startswith(p) for p in args.models)]
    gen = torch.Generator(device=dev)
    with torch.no_grad():
        for m in models:
            broken = set()  # the peers that raised on this model: not run at its later sizes
            for p in peers:
                why = p.unsupported(m)
                if why:
                    print(f"| {m.name} | - | {p.name} | - | - | - | not supported: {cell(why)} |")
            for n, t in enumerate(tokens):
                gen.manual_seed(1000 * m.experts + t)
                logits, bias = inputs(m, t, dev, gen)
                ref = reference(m, logits, bias) if cpu or args.check_all or n == 0 else None
                if not cpu:
                    floor_us, how = time_it(lambda: empty_kernel[(1,)](num_warps=1))
                    print(f"| {m.name} | {t} | {FLOOR} | {floor_us:.2f} | 1.00 | {how} | - |")
                for p in peers:
                    if p.unsupported(m) or p.name in broken:
                        continue
                    try:
                        ids, weights = p.route(m, logits, bias)
                    except Exception as e:  # shown in the table; the exit status is then 1
                        broken.add(p.name)
                        failures += 1
                        print(f"| {m.name} | {t} | {p.name} | - | - | - | FAILED: {short(e)} |")
                        continue
                    verdict = "-"
                    if ref is not None:
                        passed, verdict = check(ref, ids, weights, p.bf16_weights)
                        failures += not passed
                    us, ratio, how = "-", "-", "-"
                    if not cpu:
                        t_us, how = time_it(lambda: p.route(m, logits, bias))
                        us, ratio = f"{t_us:.2f}", f"{t_us / floor_us:.2f}"
                    print(f"| {m.name} | {t} | {p.name} | {us} | {ratio} | {how} | {verdict} |",
                          flush=True)
            if not cpu:
                torch.cuda.empty_cache()
    print("\nLlama4 (128e, top-1, bf16), table 6's last model: no peer kernel (SGLang and vLLM "
          "route Llama 4 in torch).")
    return failures


if __name__ == "__main__":
    sys.exit(1 if main() else 0)
