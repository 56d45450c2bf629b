#!/usr/bin/env python3
"""The MoE layer bench's markdown tables as one PNG per layer: time per layer call (us) against
tokens, log-log, for our layer, each peer and the weight-read bound, from the output of
flashinfer-rs/benches/moe_layer.rs, scripts/bench_vllm_moe.py and scripts/bench_torch_moe.py, or
from BENCHMARKS.md's sections 7-7e. Run through scripts/plot-layer.sh (which brings matplotlib):

    bash scripts/plot-layer.sh --out DIR FILE.md [FILE.md ...]   # DIR/<layer>.png, one per layer
    bash scripts/plot-layer.sh --out DIR --section '## 7c.' BENCHMARKS.md   # one run's tables
    bash scripts/plot-layer.sh --check                           # the parser's self-test

A `###` heading or a line opening with a bold `**...layer...**` names the layer of the tables
below it, up to the next heading; `(N experts, top-K, hidden H, intermediate I` in it gives the
shape, which a later mention of the same layer may leave out. Names are merged case-blind without
", bf16" and "layer", so a layer's rows from several tables and files make one plot; where two
tables time the same series at the same size, the later one is plotted. The GPU comes from a
`GPU: <name>` line (the Rust bench), an `... on NVIDIA <name>; ...` line (the Python benches) or a
`##` heading naming H100 or H200 (BENCHMARKS.md), and gives the bandwidth of the bound unless
--bandwidth does.

Series, where a table has their columns (times are the columns whose header ends in "(us)";
headers are compared case-blind, without backticks and bold):
  ours                     `capture off (us)` (or `layer, capture off (us)`), `ours, as new makes it
                           now (us)`, `ours bf16 (us)`, `bf16 layer (us)`
  ours fp8 per-tensor      `fp8 layer (us)`, `ours fp8 (us)`, `ours fp8 per-tensor (us)`,
                           `fp8 per-tensor (us)`
  ours fp8 block-scale     `fp8 block-scale layer (us)`, `ours fp8 block (us)`, `block GEMM (us)`
  vLLM Triton fused MoE    `vLLM ... torch routing (us)` and `vLLM ... routing given (us)`, per
                           precision (bf16, fp8 per-tensor, block fp8): from the column, else from
                           the vLLM column before it, else bf16; in the vLLM script's own tables
                           (`### vLLM Triton, <precision>: <layer> ...`) from the heading
  candle fused MoE         any column containing "candle"
  PyTorch                  any other column containing "torch"
  weight-read bound        from `experts read`: experts x 3 x hidden x intermediate x 2 bytes /
                           bandwidth (bf16), and with 1 byte (fp8) where an fp8 series is drawn
The decode-kernel, fixed-tactic and "less the stand-in" columns are variants of these and are left
out.
"""

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# HBM bytes/s, as flashinfer-rs/benches/moe_layer.rs's `limits` takes them.
BANDWIDTH = {"H200": 4.8e12, "H100": 3.35e12}
SHAPE = re.compile(r"\((\d+) experts, top-(\d+), hidden (\d+), intermediate (\d+)")
HEADING = re.compile(r"^(#{1,6})\s+(.*)")
BOLD = re.compile(r"^\*\*(.+?)\*\*")
GPU_LINE = re.compile(r"^GPU:\s*([^;(]+)")
# "vLLM 0.26.0 Triton fused MoE (...) on NVIDIA H100 80GB HBM3; PyTorch ..." (and bench_torch_moe's)
GPU_ON = re.compile(r"\bon (NVIDIA [^;(]+?)\s*;")
SEPARATOR = re.compile(r"^:?-+:?$")

OURS = {
    "layer, capture off (us)",
    "capture off (us)",
    "ours, as new makes it now (us)",
    "ours bf16 (us)",
    "bf16 layer (us)",
}
OURS_FP8 = {"fp8 layer (us)", "ours fp8 (us)", "ours fp8 per-tensor (us)", "fp8 per-tensor (us)"}
# 7e's "block GEMM" is what 7d's "ours fp8 block" timed: the block-scale layer on the GEMM.
OURS_BLOCK = {"fp8 block-scale layer (us)", "ours fp8 block (us)", "block gemm (us)"}
VLLM = "vLLM Triton fused MoE"
BOUND = "weight-read bound"

# Colour and marker per series family (the longest that opens a label), in the legend's order.
STYLES = {
    "ours": ("tab:blue", "o"),
    "ours fp8 per-tensor": ("tab:cyan", "s"),
    "ours fp8 block-scale": ("tab:purple", "D"),
    VLLM: ("tab:orange", "^"),
    f"{VLLM} fp8 per-tensor": ("tab:red", "v"),
    f"{VLLM} block fp8": ("tab:brown", "<"),
    "candle": ("tab:green", "P"),
    "PyTorch": ("tab:gray", "X"),
    BOUND: ("black", ""),
}


@dataclass(frozen=True)
class Shape:
    experts: int
    top_k: int
    hidden: int
    inter: int


@dataclass
class Layer:
    name: str
    gpus: list[str | None] = field(default_factory=list)  # None: a table with no GPU named
    series: dict[str, dict[int, float]] = field(default_factory=dict)
    # bandwidth -> tokens -> experts read; turned into bounds once every file is read, since a
    # heading may name the layer without its shape (BENCHMARKS.md 7e).
    reads: dict[float, dict[int, int]] = field(default_factory=dict)
    replaced: int = 0  # values a later table gave again


@dataclass
class Inputs:
    layers: dict[str, Layer] = field(default_factory=dict)
    shapes: dict[str, Shape] = field(default_factory=dict)
    tables: int = 0  # tables with a `tokens` column that were plotted
    stray: list[str] = field(default_factory=list)  # file:line of those under no layer heading
    notes: list[str] = field(default_factory=list)


def layer_key(name: str) -> str:
    name = re.sub(r",\s*bf16", "", name.lower())
    name = re.sub(r"\blayer\b", "", name)
    return re.sub(r"\s+", " ", name).strip(" ,")


def slug(key: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", key).strip("-")


def split_heading(text: str) -> tuple[str, str]:
    """(prefix, layer name) of a heading: the name ends where the shape starts and begins after the
    last ": " before it (`### vLLM Triton, block fp8 (DeepSeek-V3's: ...): DeepSeek-V3-sized layer,
    bf16 (256 experts, ...`: prefix `vLLM Triton, block fp8 (...)`)."""
    shape = SHAPE.search(text)
    head = text[: shape.start()] if shape else text
    prefix, _, name = head.rpartition(": ")
    return prefix.strip(), name.strip()


def normalise(header: str) -> str:
    return re.sub(r"\s+", " ", header.replace("`", "").replace("*", "")).strip().lower()


def vllm_precision(text: str) -> str | None:
    if "fp8" in text:
        return "block fp8" if "block" in text else "fp8 per-tensor"
    return "bf16" if "bf16" in text else None


def column_labels(columns: list[str], prefix: str) -> list[str | None]:
    """The series each column (header as `normalise` makes it) of a table gives; None: not plotted.
    `prefix` is the heading's text before the layer name: it names the Python benches' tables."""
    prefix = prefix.lower()
    vllm_table = prefix.startswith("vllm")
    precision = vllm_precision(prefix) if vllm_table else None
    timed = [c for c in columns if c.endswith("(us)")]  # the rest: ratios, percentages, counts
    peers = {
        "candle fused MoE": [c for c in timed if "candle" in c],
        "PyTorch": [c for c in timed if "torch" in c and "vllm" not in c and not vllm_table],
    }
    labels: list[str | None] = []
    for c in columns:
        if c not in timed:
            labels.append(None)
            continue
        label = None
        if vllm_table or c.startswith("vllm"):
            # In the vLLM script's tables every column is vLLM's at the heading's precision; in
            # BENCHMARKS.md a column without one (7d's "vLLM, routing given") has the one before it.
            if not vllm_table:
                precision = vllm_precision(c) or precision
            series = VLLM if precision in (None, "bf16") else f"{VLLM} {precision}"
            if "routing given" in c:
                label = f"{series}, routing given"
            elif "torch routing" in c:
                label = f"{series}, torch routing"
        elif c in OURS:
            label = "ours"
        elif c in OURS_FP8:
            label = "ours fp8 per-tensor"
        elif c in OURS_BLOCK:
            label = "ours fp8 block-scale"
        else:
            for peer, matches in peers.items():
                if c in matches:
                    # Two such columns in one table keep their own headers apart.
                    label = peer if len(matches) == 1 else f"{peer} ({c.removesuffix(' (us)')})"
        labels.append(label)
    return labels


def number(cell: str) -> float | None:
    """A cell's value; None for `-`, `n/a`, empty, `(not reached)` and other text."""
    try:
        return float(cell.replace("*", "").replace("`", "").strip())
    except ValueError:
        return None


def parse(text: str, source: str, inputs: Inputs, section: str | None, bandwidth: float | None):
    """Adds the layer tables of one markdown text to `inputs`. `section`: keep only the tables
    under a `#`/`##` heading line containing it (case-blind)."""
    lines = text.splitlines()
    heading_line = ""
    gpu: str | None = None
    key: str | None = None
    prefix = ""
    fenced = False
    n = 0
    while n < len(lines):
        line = lines[n].strip()
        # Code blocks hold shell comments, which would read as headings.
        if line.startswith("```"):
            fenced = not fenced
        if fenced or line.startswith("```"):
            n += 1
            continue
        if line.startswith("|"):
            start = n
            while n < len(lines) and lines[n].strip().startswith("|"):
                n += 1
            table = [[c.strip() for c in row.strip().strip("|").split("|")] for row in lines[start:n]]
            where = f"{source}:{start + 1}"
            if len(table) < 2 or not all(SEPARATOR.match(c) for c in table[1]):
                continue  # not a table
            headers = [normalise(h) for h in table[0]]
            if "tokens" not in headers:
                continue
            if section is not None and section.lower() not in heading_line.lower():
                continue
            if key is None:
                inputs.stray.append(where)
                continue
            add_table(inputs.layers[key], table, headers, prefix, gpu, bandwidth, where, inputs)
            inputs.tables += 1
            continue
        n += 1
        if heading := HEADING.match(line):
            level, title = len(heading.group(1)), heading.group(2)
            if level <= 2:
                heading_line, key, prefix = line, None, ""
                gpu = next((g for g in BANDWIDTH if g in title), None)
                continue
            if "layer" not in title.lower():
                key = None
                continue
            prefix, name = split_heading(title)
        elif (bold := BOLD.match(line)) and "layer" in bold.group(1).lower():
            prefix, name = "", split_heading(bold.group(1))[1]
        else:
            if found := GPU_LINE.match(line) or GPU_ON.search(line):
                gpu = found.group(1).strip()
            continue
        key = layer_key(name)
        inputs.layers.setdefault(key, Layer(re.sub(r",\s*bf16", "", name, flags=re.I)))
        if shape := SHAPE.search(line):
            inputs.shapes[key] = Shape(*map(int, shape.groups()))


def add_table(
    layer: Layer,
    table: list[list[str]],
    headers: list[str],
    prefix: str,
    gpu: str | None,
    bandwidth: float | None,
    where: str,
    inputs: Inputs,
):
    labels = column_labels(headers, prefix)
    tokens_at = headers.index("tokens")
    reads_at = headers.index("experts read") if "experts read" in headers else None
    bw = bandwidth or next((b for g, b in BANDWIDTH.items() if gpu and g in gpu), None)
    if reads_at is not None and bw is None:
        inputs.notes.append(f"{where}: no GPU named (GPU: line) and no --bandwidth: no bound")
    if gpu not in layer.gpus:
        layer.gpus.append(gpu)
    for row in table[2:]:
        tokens = number(row[tokens_at]) if tokens_at < len(row) else None
        if tokens is None:
            continue
        tokens = int(tokens)
        for label, cell in zip(labels, row):
            value = number(cell)
            if label is None or value is None:
                continue
            points = layer.series.setdefault(label, {})
            layer.replaced += tokens in points
            points[tokens] = value
        if reads_at is not None and bw is not None and reads_at < len(row):
            experts = number(row[reads_at])
            if experts is not None:
                layer.reads.setdefault(bw, {})[tokens] = int(experts)


def add_bounds(inputs: Inputs):
    """The weight-read bound of each layer at each bandwidth its tables were timed at: the bytes of
    the experts the step's tokens hit (gate, up and down projections) over the bandwidth."""
    for key, layer in inputs.layers.items():
        if not layer.reads:
            continue
        shape = inputs.shapes.get(key)
        if shape is None:
            inputs.notes.append(f"{layer.name}: no (N experts, top-K, hidden H, intermediate I) heading: no bound")
            continue
        fp8 = any("fp8" in label for label in layer.series)
        for bw, reads in layer.reads.items():
            for precision, bytes_per_weight in [("bf16", 2), ("fp8", 1)][: 1 + fp8]:
                label = f"{BOUND}, {precision} ({bw / 1e12:.2f} TB/s)"
                layer.series[label] = {
                    t: e * 3 * shape.hidden * shape.inter * bytes_per_weight / bw * 1e6
                    for t, e in reads.items()
                }


def family(label: str) -> str:
    return max((f for f in STYLES if label.startswith(f)), key=len)


def legend_order(label: str) -> tuple[int, bool, str]:
    return list(STYLES).index(family(label)), label.endswith("routing given"), label


def plot(layer: Layer, shape: Shape | None, path: Path):
    # Imported here so that --check needs the standard library alone.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    fig, ax = plt.subplots(figsize=(12, 6))
    bandwidths = sorted({label.rpartition("(")[2] for label in layer.series if label.startswith(BOUND)})
    for label in sorted(layer.series, key=legend_order):
        points = sorted(layer.series[label].items())
        x, y = [p[0] for p in points], [p[1] for p in points]
        colour, marker = STYLES[family(label)]
        if label.startswith(BOUND):
            # Bounds: no markers; fp8 dotted; a second bandwidth (merged runs) in grey.
            colour = ["black", "dimgray"][bandwidths.index(label.rpartition("(")[2]) % 2]
            ax.plot(x, y, color=colour, linestyle=":" if ", fp8" in label else "-", linewidth=1.3, label=label)
            continue
        given = label.endswith("routing given")  # vLLM's kernels alone: dashed, open markers
        ax.plot(
            x,
            y,
            color=colour,
            marker=marker,
            markersize=6,
            markerfacecolor="none" if given else colour,
            linestyle="--" if given else "-",
            linewidth=2.2 if label == "ours" else 1.4,
            label=label,
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    tokens = sorted({t for points in layer.series.values() for t in points})
    ax.xaxis.set_major_locator(ticker.FixedLocator(tokens))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", axis="y", alpha=0.15)
    ax.set_xlabel("tokens per layer call")
    ax.set_ylabel("time per layer call (us)")
    gpus = " + ".join(g or "GPU not named" for g in layer.gpus)
    shape_text = (
        f" ({shape.experts} experts, top-{shape.top_k}, hidden {shape.hidden}, intermediate {shape.inter})"
        if shape
        else ""
    )
    ax.set_title(f"{layer.name}{shape_text}\n{gpus}", fontsize=11)
    # Outside the axes: the curves climb from the lower left and a dozen series fill the rest.
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


SAMPLE = """\
## 7. The MoE layer on Hopper (`cutlass::CutlassMoe`)

GPU: NVIDIA H200; limits used: 4.80 TB/s HBM, 989 TFLOP/s dense bf16.

### Qwen3-30B-A3B layer (128 experts, top-8, hidden 2048, intermediate 768; 2 x 2 tactics)

| tokens | layer, capture on (us) | capture off (us) | on / off | fp8 layer (us) | fp8 block-scale layer (us) | decode kernels (us) | experts read |
|---:|---:|---:|---:|---:|---:|---:|---:|
| 1 | 46.0 | 45.9 | 1.002 | 24.9 | - | 36.0 | 8 |
| 4096 | 952.9 | 953.7 | 0.999 | 674.2 | 1579.9 | n/a | 128 |

### 3b. Readback hidden behind the next step

| tokens | steps without readback (us/step) |
|---:|---:|
| 1 | 9.9 |

vLLM 0.26.0 Triton fused MoE (vllm.whl, sha256 0) on NVIDIA H200; PyTorch 2.11, Triton 3.6.0.

### vLLM Triton, block fp8 (DeepSeek-V3's: 128x128 weight blocks; UE8M0 scales): Qwen3-30B-A3B layer (128 experts, top-8, hidden 2048, intermediate 768; config default)

| tokens | vLLM Triton layer incl. torch routing (us) | of which routing (us) | the two GEMMs + alignment + activation + fp8 quantisations + sum, routing given (us) | config (BM/BN/BK, group, warps, stages) |
|---:|---:|---:|---:|---|
| 1 | 50.2 | 18.4 | 31.8 | default, naive: 16/64/128 g1 w4 s3 |

## 7d. fp8 block scale on Hopper (H100, one device call)

```sh
# a shell comment, not a heading
```

**DeepSeek-V3-sized layer, bf16** (256 experts, top-8, hidden 7168, intermediate 2048)

| tokens | ours bf16 (us) | vLLM block fp8 layer, torch routing (us) | vLLM, routing given (us) | PyTorch, graphed (us) | PyTorch / ours | experts read |
|---:|---:|---:|---:|---:|---:|---:|
| 1 | **270.9** | 156.4 | 138.0 | 355.5 | 1.31x | 8 |
| 4096 | (not reached) | 7709.3 | 7632.9 | 13334.3 | | |
"""


def check():
    """Parses SAMPLE and compares what it derives with figures worked out by hand."""

    def expect(what, got, want):
        if isinstance(want, dict):
            ok = got.keys() == want.keys() and all(abs(got[k] - v) <= 1e-3 * v for k, v in want.items())
        else:
            ok = got == want
        if not ok:
            sys.exit(f"plot_layer --check: {what}: got {got!r}, want {want!r}")

    inputs = Inputs()
    parse(SAMPLE, "sample", inputs, None, None)
    add_bounds(inputs)
    expect("layers", sorted(slug(k) for k in inputs.layers), ["deepseek-v3-sized", "qwen3-30b-a3b"])
    expect("tables", inputs.tables, 3)
    expect("skipped", inputs.stray, ["sample:14"])
    expect("notes", inputs.notes, [])
    qwen, deepseek = inputs.layers["qwen3-30b-a3b"], inputs.layers["deepseek-v3-sized"]
    expect("Qwen3 shape", inputs.shapes["qwen3-30b-a3b"], Shape(128, 8, 2048, 768))
    expect("Qwen3 GPUs", qwen.gpus, ["NVIDIA H200"])
    expect("DeepSeek GPUs", deepseek.gpus, ["H100"])
    expect("DeepSeek name", deepseek.name, "DeepSeek-V3-sized layer")
    # 8 experts x 3 x 2048 x 768 x 2 B = 75,497,472 B: 15.729 us at 4.8 TB/s; all 128: 16 times it.
    want = {
        "ours": {1: 45.9, 4096: 953.7},
        "ours fp8 per-tensor": {1: 24.9, 4096: 674.2},
        "ours fp8 block-scale": {4096: 1579.9},
        f"{VLLM} block fp8, torch routing": {1: 50.2},
        f"{VLLM} block fp8, routing given": {1: 31.8},
        f"{BOUND}, bf16 (4.80 TB/s)": {1: 15.7286, 4096: 251.658},
        f"{BOUND}, fp8 (4.80 TB/s)": {1: 7.8643, 4096: 125.829},
    }
    expect("Qwen3 series", sorted(qwen.series), sorted(want))
    for label, points in want.items():
        expect(f"Qwen3 {label}", qwen.series[label], points)
    # 8 x 3 x 7168 x 2048 x 2 B = 704,643,072 B: 210.341 us at 3.35 TB/s (the H100 of the heading).
    want = {
        "ours": {1: 270.9},
        f"{VLLM} block fp8, torch routing": {1: 156.4, 4096: 7709.3},
        f"{VLLM} block fp8, routing given": {1: 138.0, 4096: 7632.9},
        "PyTorch": {1: 355.5, 4096: 13334.3},
        f"{BOUND}, bf16 (3.35 TB/s)": {1: 210.341},
        f"{BOUND}, fp8 (3.35 TB/s)": {1: 105.170},
    }
    expect("DeepSeek series", sorted(deepseek.series), sorted(want))
    for label, points in want.items():
        expect(f"DeepSeek {label}", deepseek.series[label], points)
    # --section keeps one run: 7d's table alone, bound at --bandwidth.
    inputs = Inputs()
    parse(SAMPLE, "sample", inputs, "## 7d.", 2e12)
    add_bounds(inputs)
    expect("--section tables", inputs.tables, 1)
    expect("--section series", sorted(inputs.layers["qwen3-30b-a3b"].series), [])
    expect("--bandwidth", inputs.layers["deepseek-v3-sized"].series[f"{BOUND}, bf16 (2.00 TB/s)"], {1: 352.3215})
    print("plot_layer --check: parser and bounds as expected (2 layers, 3 tables plotted, 1 skipped)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="markdown files with the bench's tables")
    parser.add_argument("--out", type=Path, help="folder for <layer>.png")
    parser.add_argument("--section", help="keep only tables under a #/## heading line containing this text")
    parser.add_argument("--bandwidth", type=float, help="HBM bytes/s for the bound (default: from the GPU's name)")
    parser.add_argument("--check", action="store_true", help="self-test of the parser on a built-in sample")
    args = parser.parse_args()
    if args.check:
        check()
        return
    if not args.files or args.out is None:
        parser.error("give --out DIR and at least one markdown file (or --check)")
    inputs = Inputs()
    for path in args.files:
        try:
            text = path.read_text()
        except OSError as e:
            sys.exit(f"plot_layer: {e}")
        parse(text, str(path), inputs, args.section, args.bandwidth)
    add_bounds(inputs)
    if inputs.stray:
        print(f"note: {len(inputs.stray)} tables with a tokens column under no layer heading, skipped: "
              f"{', '.join(inputs.stray)}", file=sys.stderr)
    for note in inputs.notes:
        print(f"note: {note}", file=sys.stderr)
    if inputs.tables == 0:
        where = f" under a heading line containing {args.section!r}" if args.section else ""
        sys.exit(f"plot_layer: no table with a `tokens` column below a layer heading{where} in "
                 f"{', '.join(map(str, args.files))}")
    args.out.mkdir(parents=True, exist_ok=True)
    for key, layer in inputs.layers.items():
        if not layer.series:
            continue
        if layer.replaced:
            print(f"note: {layer.name}: {layer.replaced} values given again by later tables, the later "
                  "plotted (several runs merged: --section picks one)", file=sys.stderr)
        path = args.out / f"{slug(key)}.png"
        plot(layer, inputs.shapes.get(key), path)
        print(f"{path}: {len(layer.series)} series, {' + '.join(g or 'GPU not named' for g in layer.gpus)}")


if __name__ == "__main__":
    main()
