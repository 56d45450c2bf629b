#!/usr/bin/env python3
"""The layer A B A B (`scripts/gpu-proof.sh variant-ab`) as one markdown table per layer.

    python3 scripts/ab-table.py LOGDIR PACK [LAYER]

LOGDIR holds the call's ab-LAYER-PACK-main-{1,2}.md (main's rounds) and ab-LAYER-PACK-{1,2}.md
(the candidate's; a round the call's limit cut is left out); LAYER is qwen3 (the default) or
deepseek. Per size:
main's and the candidate's layer (capture off) in each round, their ratio of means, the decode
kernels and the best fixed tactic pair (main / candidate, with the candidate's pair), and the fp8
per-tensor and block-scale layers (main / candidate, first rounds). Ratios within the one call.
Under the table, from the rounds' .log files: whether each format's output has the same bits in
every round of both packs at each size (the bench's output digests), or where it differs; and
which kernels each side's per-call rule takes at each size (`CutlassMoe::kernels_for`, logged by
the bench from the commit that added it).
"""
import os
import re
import sys

from md_tables import nonempty, size_table


def round_files(logdir, stem, ext):
    """The rounds' files of one side (stem: ab-LAYER-PACK or ab-LAYER-PACK-main) with this
    extension (.md tables, .log output), in round order; a round the call's limit cut (no file,
    or an empty one) is left out."""
    paths = (os.path.join(logdir, f"{stem}-{r}.{ext}") for r in (1, 2))
    return [path for path in paths if nonempty(path)]


def rounds(logdir, stem):
    """One side's layer-bench tables, a round each (`md_tables.size_table`: its `which` cell is
    the last such column's, the bf16 GEMMs' pair)."""
    return [size_table(path) for path in round_files(logdir, stem, "md")]


DIGEST = re.compile(r"output digest, \w+ at (\d+) tokens: bf16 (\S+), fp8 (\S+), block scale (\S+)")
FORMATS = ("bf16", "fp8 per-tensor", "block scale")


def digests(logdir, stem):
    """{(tokens, format): {digest, ...}} over one side's rounds' logs."""
    seen = {}
    for path in round_files(logdir, stem, "log"):
        for line in open(path):
            if m := DIGEST.search(line):
                for fmt, value in zip(FORMATS, m.groups()[1:]):
                    seen.setdefault((m.group(1), fmt), set()).add(value)
    return seen


RULE = re.compile(r"per-call rule, \w+ at (\d+) tokens: (bf16 .*)$")
TACTICS = re.compile(r"tactics \d+/\d+ ")


def rules(logdir, stem):
    """{tokens: "bf16 ..., fp8 ..., block scale ..."} from one side's first round that logged
    its rule (the rule depends on the size alone)."""
    for path in round_files(logdir, stem, "log"):
        found = {m.group(1): m.group(2) for line in open(path) if (m := RULE.search(line.rstrip()))}
        if found:
            return found
    return {}


def rule_lines(logdir, stem, pack):
    """A line per size: the kernels main's and the candidate's rules take there."""
    a, b = rules(logdir, f"{stem}-main"), rules(logdir, stem)
    lines = []
    for tokens in sorted(set(a) | set(b), key=int):
        ra, rb = a.get(tokens, "not logged"), b.get(tokens, "not logged")
        # Alike when they name the same tiles: a candidate's added tactics may renumber them.
        alike = TACTICS.sub("", ra) == TACTICS.sub("", rb)
        lines.append(f"- the per-call rule at {tokens} tokens: " +
                     (f"main and {pack} alike, {ra}" if ra == rb else
                      f"the same tiles, main {ra}; {pack} {rb}" if alike else
                      f"main {ra}; {pack} {rb}"))
    return lines


def same_bits(logdir, stem, pack):
    """A line per format: the sizes where every round of both packs gave one digest, and
    where they did not."""
    a, b = digests(logdir, f"{stem}-main"), digests(logdir, stem)
    lines = []
    for fmt in FORMATS:
        same, differ = [], []
        for tokens, f in sorted(a, key=lambda k: int(k[0])):
            if f != fmt or (tokens, f) not in b or a[tokens, f] == {"-"}:
                continue
            (same if len(a[tokens, f] | b[tokens, f]) == 1 else differ).append(tokens)
        if same or differ:
            lines.append(f"- {fmt}: the same output bits in every round of main and {pack} at "
                         f"{', '.join(same) or 'no size'}" +
                         (f"; **different at {', '.join(differ)}**" if differ else ""))
    return lines


def main(argv):
    if len(argv) not in (2, 3):
        sys.exit(__doc__)
    logdir, pack = argv[:2]
    stem = f"ab-{argv[2] if len(argv) == 3 else 'qwen3'}-{pack}"
    main_rounds, cand = rounds(logdir, f"{stem}-main"), rounds(logdir, stem)
    if not main_rounds or not cand:
        sys.exit(f"no rounds of {stem}-main and {stem} in {logdir}")
    print(f"| tokens | main, each round (us) | {pack} | {pack} / main | decode kernels, forced (us) "
          f"| best fixed tactics, main / {pack} (us) | {pack}'s best pair "
          f"| fp8 per-tensor, main / {pack} (us) | block scale, main / {pack} (us) |")
    print("|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    key = "capture off (us)"
    for size in main_rounds[0]:
        if size not in cand[0]:
            continue
        a = [float(t[size][key]) for t in main_rounds if size in t]
        b = [float(t[size][key]) for t in cand if size in t]
        m, c = main_rounds[0][size], cand[0][size]
        print(f"| {size} | {' / '.join(f'{x:.1f}' for x in a)} | {' / '.join(f'{x:.1f}' for x in b)} "
              f"| {(sum(b) / len(b)) / (sum(a) / len(a)):.3f} | {m['decode kernels (us)']} "
              f"| {m['best fixed tactics (us)']} / {c['best fixed tactics (us)']} | {c['which']} "
              f"| {m['fp8 layer (us)']} / {c['fp8 layer (us)']} "
              f"| {m['fp8 block-scale layer (us)']} / {c['fp8 block-scale layer (us)']} |")
    lines = same_bits(logdir, stem, pack) + rule_lines(logdir, stem, pack)
    if lines:
        print()
        print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
