#!/usr/bin/env python3
"""Table 6 beside the peers' routers, and issue 29's router targets, from one router-bench call.

    python3 scripts/router-table.py bench-topk.md bench-topk-peers.md [LABEL=bench-topk-PACK.md ...]

The files are what `scripts/gpu-proof.sh router-bench [PACK...]` leaves in its logs: our table 6
(`gpu-pack/bench.sh topk`: top-k time, replay cost, floor, D2D-copy fraction), the peers' table
(`scripts/bench_peer_routers.py`: SGLang's and vLLM's Triton routers) and each candidate pack's
table 6. Prints one markdown row per model and size: ours, each candidate, the fastest peer, ours
over it, over the floor and the copy fraction (the first candidate's where one is given: the
code that would go to main), then the targets' verdicts (BENCHMARKS.md, issue 29): faster than
the fastest peer at every shape, within 2x of the launch floor up to 128 tokens, at least half a
D2D copy's bandwidth from 32768 tokens. Ratios within the one call only.
"""
import sys

from md_tables import read_tables


def rows(path):
    """Our table 6: (model, tokens) -> the row's cells, by the header's names."""
    return {
        (cells[0].split()[0], int(cells[1])): dict(zip(header, cells))
        for header, body in read_tables(path)
        if header[0] == "model"
        for cells in body
    }


def fastest_peers(path):
    """The peers' table: (model, tokens) -> (us, which), the fastest router (no floors)."""
    out = {}
    for header, body in read_tables(path):
        if header[0] != "model":
            continue
        for c in body:
            if c[1] == "-" or c[2].startswith("floor") or c[3] == "-":
                continue
            key, us = (c[0].split()[0], int(c[1])), float(c[3])
            which = ("vLLM" if c[2].startswith("vLLM")
                     else "SGLang PDL" if "(Triton, PDL)" in c[2] else "SGLang")
            if key not in out or us < out[key][0]:
                out[key] = (us, which)
    return out


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    ours, peers = rows(argv[0]), fastest_peers(argv[1])
    candidates = [(a.split("=", 1)[0], rows(a.split("=", 1)[1])) for a in argv[2:]]
    now = candidates[0][1] if candidates else ours
    names = " | ".join(f"{label} (us) | {label} / main" for label, _ in candidates)
    print(f"| model | tokens | main (us) | {names + ' | ' if names else ''}replay cost "
          "| fastest peer (us) | / peer | / floor | / D2D copy |")
    print("|---|---:|---:|" + "---:|---:|" * len(candidates) + "---:|---:|---:|---:|---:|")
    missed = {"peer": [], "floor": [], "copy": []}
    for key in ours:
        model, tokens = key
        base = float(ours[key]["top-k (us)"])
        t = float(now[key]["top-k (us)"])
        cells = [model, str(tokens), f"{base:.2f}"]
        for _, table in candidates:
            c = float(table[key]["top-k (us)"])
            cells += [f"{c:.2f}", f"{c / base:.2f}"]
        peer = peers.get(key)
        cells.append(now[key]["replay cost"])
        cells.append(f"{peer[0]:.2f} ({peer[1]})" if peer else "-")
        cells.append(f"{t / peer[0]:.2f}" if peer else "-")
        cells += [now[key]["top-k / floor"], now[key]["/ D2D copy"]]
        print("| " + " | ".join(cells) + " |")
        if peer and t >= peer[0]:
            missed["peer"].append(f"{model} {tokens} ({t / peer[0]:.2f}x)")
        if tokens <= 128 and float(now[key]["top-k / floor"]) > 2:
            missed["floor"].append(f"{model} {tokens} ({now[key]['top-k / floor']}x)")
        if tokens >= 32768 and float(now[key]["/ D2D copy"]) < 0.5:
            missed["copy"].append(f"{model} {tokens} ({now[key]['/ D2D copy']})")
    print()
    targets = {
        "peer": "faster than the fastest peer at every shape",
        "floor": "within 2x of the launch floor up to 128 tokens",
        "copy": ">= 50% of a D2D copy's bandwidth from 32768 tokens",
    }
    for name, text in targets.items():
        verdict = "met" if not missed[name] else "missed at " + ", ".join(missed[name])
        print(f"- {text}: {verdict}")


if __name__ == "__main__":
    main(sys.argv[1:])
