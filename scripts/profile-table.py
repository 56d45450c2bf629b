#!/usr/bin/env python3
"""A layer profile's log (`scripts/layer-profile.sh`, `gpu-proof.sh layer-profile`) as one
markdown table per layer call: each kernel in launch order with its time and what ncu measured.

    python3 scripts/profile-table.py layer-profile-qwen3.log

The log holds ncu's CSV (a row per kernel and metric) for one eager call of the bf16, fp8
per-tensor and block-scale layers at each size, in that order; a call starts at its router
kernel. Kernel names are shortened: templates and arguments dropped, a CUTLASS grouped GEMM
named by its tile, element type and kernel schedule.
"""
import csv
import re
import sys

PRECISIONS = ("bf16", "fp8 per-tensor", "block scale")
COLUMNS = (
    ("us", "gpu__time_duration.sum", 1e-3),
    ("DRAM % of peak", "dram__throughput.avg.pct_of_peak_sustained_elapsed", 1),
    ("DRAM read (MB)", "dram__bytes_read.sum", 1e-6),
    ("DRAM written (MB)", "dram__bytes_write.sum", 1e-6),
    ("L2 hit %", "lts__t_sector_hit_rate.pct", 1),
    ("SM % of peak", "sm__throughput.avg.pct_of_peak_sustained_elapsed", 1),
    ("warps active %", "sm__warps_active.avg.pct_of_peak_sustained_active", 1),
    ("grid", "launch__grid_size", 1),
)
# ncu prints sizes in the unit it picks; the columns above want bytes and nanoseconds.
UNITS = {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "ns": 1, "us": 1e3, "usecond": 1e3,
         "ms": 1e6, "msecond": 1e6, "nsecond": 1}


def short(name):
    gemm = re.search(r"cute::tuple<cute::C<(\d+)>, cute::C<(\d+)>, cute::C<(\d+)>>, "
                     r"cutlass::(\w+)", name)
    if "GemmUniversal" in name and gemm:
        schedule = next((s for s in ("Pingpong", "Cooperative") if s in name), "")
        return f"GEMM {gemm[1]}x{gemm[2]}x{gemm[3]} {gemm[4]} {schedule}".rstrip()
    name = re.sub(r"^void ", "", name).replace("<unnamed>::", "").replace("(anonymous namespace)::", "")
    name = re.sub(r"\(.*", "", name)
    name = re.sub(r"<.*", "", name)
    return name.split("::")[-1]


def kernels(lines, path):
    """[(id, name, {metric: value in the columns' base units})] in launch order, from the log's
    lines (path names it in the error)."""
    by_id = {}
    reader = csv.reader(line for line in lines if line.startswith('"'))
    header = next(reader, None)
    if header is None:
        sys.exit(f"no ncu CSV in {path}")
    col = {name: i for i, name in enumerate(header)}
    for row in reader:
        kid = int(row[col["ID"]])
        entry = by_id.setdefault(kid, (row[col["Kernel Name"]], {}))
        value = row[col["Metric Value"]].replace(",", "")
        try:
            v = float(value) * UNITS.get(row[col["Metric Unit"]], 1)
        except ValueError:
            continue
        entry[1][row[col["Metric Name"]]] = v
    return [(k, name, m) for k, (name, m) in sorted(by_id.items())]


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    path = argv[0]
    lines = open(path).read().splitlines()
    sizes = [m[1] for m in (re.match(r"\| (\d+) \| profiled", line) for line in lines) if m]
    # A profile of some kernels only (layer-profile.sh's KERNELS) need not hold a router kernel
    # to start each call at: one table of them all, in launch order.
    only = next((m[1] for m in (re.search(r"kernels matching (.*)$", line) for line in lines)
                 if m), None)
    calls = []
    for kid, name, metrics in kernels(lines, path):
        if not calls or ("route" in name and not only):
            calls.append([])
        calls[-1].append((short(name), metrics))
    for n, call in enumerate(calls):
        total = sum(m.get("gpu__time_duration.sum", 0) for _, m in call) * 1e-3
        if only:
            print(f"{', '.join(sizes)} tokens: the {len(call)} kernels matching {only} of the "
                  f"{', '.join(PRECISIONS)} calls, in launch order, {total:.1f} us in all\n")
        else:
            size = sizes[n // len(PRECISIONS)] if n // len(PRECISIONS) < len(sizes) else "?"
            print(f"{PRECISIONS[n % len(PRECISIONS)]}, {size} tokens: {len(call)} kernels, "
                  f"{total:.1f} us in all\n")
        print("| kernel | " + " | ".join(c[0] for c in COLUMNS) + " |")
        print("|---|" + "---:|" * len(COLUMNS))
        for name, m in call:
            cells = []
            for _, metric, scale in COLUMNS:
                v = m.get(metric)
                whole = metric == "launch__grid_size"
                cells.append("-" if v is None else f"{v:.0f}" if whole else f"{v * scale:.1f}")
            print(f"| {name} | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main(sys.argv[1:])
