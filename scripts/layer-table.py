#!/usr/bin/env python3
"""The layer beside its peers (`scripts/gpu-proof.sh layer-bench`, `candle-bench`) as markdown
tables with issue 29's layer targets' verdicts.

    python3 scripts/layer-table.py LAYER DIR [DIR ...]

LAYER is qwen3 or deepseek; the DIRs (one device call's logs each, or several calls' on one
machine) hold bench-layer-LAYER.md (ours), bench-layer-LAYER-vllm{,-fp8,-fp8-blocks}.md (vLLM's
Triton fused MoE), bench-layer-LAYER-torch.md (PyTorch) and bench-candle.md (candle's fused MoE);
a file not found leaves its columns out. Two tables: bf16 (ours as `CutlassMoe::new` makes it,
capture off, against vLLM, PyTorch and candle) and fp8 (our per-tensor and block-scale layers
against vLLM's fp8 and block-fp8 layers). "vLLM given" is vLLM's layer with its routing computed
beforehand, a range whose low end subtracts its alignment's torch stand-in: ours is ahead where
the range's low end is above our time, behind where its high end is below, level between. A
candle ratio short of 3x is marked "under the weight-read bound" where a third of candle's time
is less than reading the experts' weights at full HBM bandwidth takes (out of anyone's reach).
Then the targets on our layer alone: decode, prefill, capture on / off.
"""
import os
import sys

from md_tables import nonempty, size_table

LAYERS = {"qwen3": "Qwen3-30B-A3B", "deepseek": "DeepSeek-V3-sized"}
# Issue 29's sizes where the weight-read bound leaves room for 1.25x vLLM's time.
AHEAD_SIZES = {"qwen3": ("1", "512", "4096"), "deepseek": ("4096",)}


def find(dirs, name):
    return next((p for p in (os.path.join(d, name) for d in dirs) if nonempty(p)), None)


def rows(path, heading=None):
    """The first table of `path` (under the first `###` heading containing `heading`, if
    given) whose first column is `tokens`: size -> cells by the header's names."""
    if path is None:
        return {}
    source = path
    if heading is not None:
        source, keep = [], False
        for line in open(path):
            if line.startswith("###"):
                keep = heading in line
            elif keep:
                source.append(line)
    return size_table(source)


def number(cell):
    """A cell's value, a trailing `%` or `x` dropped; None where it holds none."""
    try:
        return float(cell.rstrip("%x"))
    except (AttributeError, ValueError):
        return None


def column(row, prefix):
    """The cell of `row` under the first header that starts with `prefix` (vLLM's headers go on
    to name what the time includes)."""
    return next((v for k, v in (row or {}).items() if k.startswith(prefix)), None)


def given(vllm, size, total, parts):
    """vLLM's layer with routing given, as (low, high): the low end less the torch stand-ins
    named in `parts`."""
    row = vllm.get(size)
    high = number(column(row, total))
    if high is None:
        return None
    low = high - sum(number(row.get(p)) or 0.0 for p in parts)
    return low, high


def verdict(ours, span):
    low, high = span
    if low >= ours:
        return "ahead"
    if high < ours:
        return "behind"
    return "level"


def ratio(span, ours):
    low, high = span
    a, b = low / ours, high / ours
    return f"{a:.2f}x" if f"{a:.2f}" == f"{b:.2f}" else f"{a:.2f}-{b:.2f}x"


def main(argv):
    if len(argv) < 2 or argv[0] not in LAYERS:
        sys.exit(__doc__)
    layer, dirs = argv[0], argv[1:]
    name = LAYERS[layer]
    ours = rows(find(dirs, f"bench-layer-{layer}.md"))
    if not ours:
        sys.exit(f"no bench-layer-{layer}.md in {' '.join(dirs)}")
    vllm = rows(find(dirs, f"bench-layer-{layer}-vllm.md"))
    vllm_fp8 = rows(find(dirs, f"bench-layer-{layer}-vllm-fp8.md"))
    vllm_blocks = rows(find(dirs, f"bench-layer-{layer}-vllm-fp8-blocks.md"))
    torch = rows(find(dirs, f"bench-layer-{layer}-torch.md"))
    candle = rows(find(dirs, "bench-candle.md"), heading=name)
    alignment = "of which alignment (torch stand-in) (us)"
    quantisations = "of which fp8 quantisations (torch stand-in) (us)"

    print(f"{name}, bf16:\n")
    print("| tokens | ours (us) | decode kernels (us) | GEMMs, best fixed (us) | vLLM, torch routing (us) "
          "| vLLM given (us) | vLLM given / ours | PyTorch (us) | PyTorch / ours | candle (us) "
          "| candle / ours | HBM use, ours |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    behind, level, ahead_by, candle_ratios = [], [], {}, {}
    for size, row in ours.items():
        t = number(row["capture off (us)"])
        span = given(vllm, size, "the two GEMMs", [alignment])
        total = number(column(vllm.get(size), "vLLM Triton layer incl"))
        pt = number(torch.get(size, {}).get("PyTorch layer (us)"))
        cd_cell = candle.get(size, {}).get("candle fused MoE (us)", "-")
        cd = number(cd_cell)
        if cd is None and cd_cell.startswith("fails"):
            cd_cell = "fails"
        if span:
            v = verdict(t, span)
            if v == "behind":
                behind.append(size)
            elif v == "level":
                level.append(size)
            ahead_by[size] = span[0] / t
        if cd is not None:
            # The weight-read bound's time: ours at its HBM use on the experts' weights.
            hbm = number(row["HBM use on their weights"])
            candle_ratios[size] = (cd / t, hbm is not None and cd / 3 < t * hbm / 100)
        print(f"| {size} | {t:.1f} | {row['decode kernels (us)']} | {row['best fixed tactics (us)']} "
              f"| {f'{total:.1f}' if total else '-'} "
              f"| {f'{span[0]:.1f}-{span[1]:.1f}' if span else '-'} | {ratio(span, t) if span else '-'} "
              f"| {f'{pt:.1f}' if pt else '-'} | {f'{pt / t:.2f}x' if pt else '-'} "
              f"| {cd_cell if cd is None else f'{cd:.1f}'} | {f'{cd / t:.2f}x' if cd else '-'} "
              f"| {row['HBM use on their weights']} |")

    print(f"\n{name}, fp8 (ours: per-tensor and block-scale layers, as `new_fp8` / `new_fp8_blocks` make them):\n")
    print("| tokens | ours fp8 (us) | vLLM fp8 given (us) | vLLM fp8 given / ours | ours block scale (us) "
          "| vLLM block fp8 given (us) | vLLM block given / ours |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size, row in ours.items():
        f8, bl = number(row["fp8 layer (us)"]), number(row["fp8 block-scale layer (us)"])
        s8 = given(vllm_fp8, size, "the two GEMMs", [alignment, quantisations])
        sb = given(vllm_blocks, size, "the two GEMMs", [alignment])
        print(f"| {size} | {row['fp8 layer (us)']} | {f'{s8[0]:.1f}-{s8[1]:.1f}' if s8 else '-'} "
              f"| {ratio(s8, f8) if s8 and f8 else '-'} | {row['fp8 block-scale layer (us)']} "
              f"| {f'{sb[0]:.1f}-{sb[1]:.1f}' if sb else '-'} | {ratio(sb, bl) if sb and bl else '-'} |")

    print()
    if vllm:
        print("- never slower than vLLM's Triton fused MoE (bf16, routing given): "
              + ("met at every size" if not behind and not level else
                 f"behind at {', '.join(behind) or 'none'}; level within the stand-in's range at "
                 f"{', '.join(level) or 'none'}"))
        sizes = [s for s in AHEAD_SIZES[layer] if s in ahead_by]
        print(f"- >= 1.25x vLLM's time at {', '.join(AHEAD_SIZES[layer])} tokens: "
              + "; ".join(f"{s}: {ahead_by[s]:.2f}x ({'met' if ahead_by[s] >= 1.25 else 'missed'})"
                          for s in sizes))
    if candle_ratios:
        short = [f"{s} ({r:.2f}x{', under the weight-read bound' if out else ''})"
                 for s, (r, out) in candle_ratios.items() if r < 3.0]
        all_r = [r for r, _ in candle_ratios.values()]
        print("- >= 3x ahead of candle's fused MoE where it runs: "
              + (f"missed at {', '.join(short)}" if short else
                 f"met ({min(all_r):.2f}-{max(all_r):.2f}x)"))
    for line in own_targets(layer, ours):
        print(line)


def own_targets(layer, ours):
    """Issue 29's targets on our layer alone, from its bench table: decode (>= 85% of the
    weight-read bound at 8 and 64 tokens; Qwen3 at one token <= 20 us), prefill (Qwen3 at 4096
    tokens >= 50% of dense bf16 peak, the DeepSeek-V3-sized layer at 4096 >= 75% of its
    weight-read bound) and capture on / off <= 1.01. The bounds are the GPU's the bench names."""
    def cell(size, name):
        return number(ours.get(size, {}).get(name))

    def met(ok):
        return "met" if ok else "missed"

    hbm = "HBM use on their weights"
    lines = []
    decode = [(s, cell(s, hbm)) for s in ("8", "64") if cell(s, hbm) is not None]
    if decode:
        lines.append("- decode >= 85% of the weight-read bound at 8 and 64 tokens: " + "; ".join(
            f"{s}: {v:.0f}% ({met(v >= 85)})" for s, v in decode))
    one = cell("1", "capture off (us)")
    if layer == "qwen3" and one is not None:
        lines.append(f"- one token <= 20 us: {one:.1f} us ({met(one <= 20)})")
    if layer == "qwen3" and cell("4096", "dense bf16 peak") is not None:
        v = cell("4096", "dense bf16 peak")
        lines.append(f"- prefill at 4096 tokens >= 50% of dense bf16 peak: {v:.1f}% ({met(v >= 50)})")
    if layer == "deepseek" and cell("4096", hbm) is not None:
        v = cell("4096", hbm)
        lines.append(f"- prefill at 4096 tokens >= 75% of the weight-read bound: {v:.0f}% ({met(v >= 75)})")
    ratios = [cell(s, "on / off") for s in ours]
    ratios = [r for r in ratios if r is not None]
    if ratios:
        lines.append(f"- capture on / off <= 1.01: {min(ratios):.3f}-{max(ratios):.3f} "
                     f"({met(max(ratios) <= 1.01)})")
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
