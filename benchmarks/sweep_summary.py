#!/usr/bin/env python3
"""What a `bitnet-bench kernels --sweep` says about the automatic configuration choice.

    python3 benchmarks/sweep_summary.py SWEEP.csv [--table TABLE.csv] [--tolerance 0.05]
    python3 benchmarks/sweep_summary.py --table TABLE.csv

SWEEP.csv is the --sweep file (every configuration x split-K per shape and mode; split_k 0
is the planner's automatic split). TABLE.csv, the --csv file of the same run, gives what
AutoConfig chose for each shape. Prints, per (N, M, mode), the fastest entries, and flags

  * AUTO: the automatic choice is more than the tolerance slower than the fastest entry;
  * MORE ROWS FASTER: the fastest time at this M exceeds the fastest at a larger M of the same
    N and mode by more than --rows-tolerance (more rows should never cost less: a planner
    rule or a kernel to look at).

With TABLE.csv alone (a run without --sweep, e.g. over a dense list of M) only the second
check runs, on the automatic choices: the cheap way to find the batch sizes worth a sweep.

AutoConfig's rules (kernels/cuda/ternary_cuda.cc) are copied by hand from such sweeps; this
is the check that they still hold on the card at hand. Exit status 0 either way: the flags
are for reading.
"""
import argparse
import collections
import csv
import math
import sys


def read_sweep(path):
    best = collections.defaultdict(list)  # (n, m, mode) -> [(us, "config/split")]
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            us = float(r["us"])
            if math.isnan(us):
                continue
            key = (int(r["n"]), int(r["m"]), r["mode"])
            best[key].append((us, f'{r["config"]}/{r["split_k"]}'))
    for entries in best.values():
        entries.sort()
    return best


def read_table(path):
    auto = {}  # (n, m, mode) -> (us, "config/split")
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            for mode in ("fp16", "int8"):
                key = (int(r["n"]), int(r["m"]), mode)
                auto[key] = (float(r[f"{mode}_us"]), f'{r[f"{mode}_config"]}/{r[f"{mode}_split"]}')
    return auto


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", nargs="?", help="the --sweep file; without it, --table alone")
    ap.add_argument("--table", help="the --csv file of the same run (the automatic choices)")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="flag an automatic choice this much slower than the best (default 0.05)")
    ap.add_argument("--rows-tolerance", type=float, default=0.02,
                    help="flag a larger M only when it ran this much faster (default 0.02)")
    ap.add_argument("--top", type=int, default=3, help="entries to list per shape (default 3)")
    args = ap.parse_args()

    if args.sweep:
        best = read_sweep(args.sweep)
        auto = read_table(args.table) if args.table else {}
    elif args.table:
        # The automatic choices are the only entries; nothing to compare them with.
        best = {key: [entry] for key, entry in read_table(args.table).items()}
        auto = {}
    else:
        ap.error("give SWEEP.csv, --table TABLE.csv, or both")
    if not best:
        sys.exit(f"{args.sweep or args.table}: no timed entries")
    flags = 0
    for key in sorted(best, key=lambda k: (k[0], k[2], k[1])):
        n, m, mode = key
        entries = best[key]
        line = f"n={n:<6} m={m:<5} {mode}: " + " | ".join(
            f"{name} {us:.2f}" for us, name in entries[:args.top])
        if key in auto:
            us, name = auto[key]
            line += f"   auto {name} {us:.2f}"
            if us > entries[0][0] * (1 + args.tolerance):
                line += f"  AUTO {100 * (us / entries[0][0] - 1):.0f}% slower than the best"
                flags += 1
        larger = [(best[k][0][0], k[1]) for k in best if k[0] == n and k[2] == mode and k[1] > m]
        faster = [(us, mm) for us, mm in larger if us * (1 + args.rows_tolerance) < entries[0][0]]
        if faster:
            us, mm = min(faster)
            line += f"  MORE ROWS FASTER (m={mm}: {us:.2f})"
            flags += 1
        print(line)
    print(f"{flags} flag(s)")


if __name__ == "__main__":
    main()
