#!/usr/bin/env python3
"""Summarizes a gemv timer trace (bitnet-bench kernels with BITNET_GEMV_TRACE=FILE).

Usage: gemv_trace_stats.py FILE

Prints, in microseconds from the launch's first warp start, the spread of each
trace point over the warps, the median time per warp between consecutive
phases, and when the last warp of each SM ended, grouped by warps per SM (SMs
holding fewer blocks finish earlier). Only relative times mean anything: the
trace points themselves cost 0.6-0.9 us per launch (kernels/cuda/gemv_trace.h).
"""
import csv
import sys

POINTS = ["start", "weights_issued", "prerequisites", "x_issued", "x_landed", "ktile0",
          "ktile1", "ktile2", "ktile3", "reduced", "end"]


def quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def main(path):
    rows = [{k: int(v) for k, v in r.items()} for r in csv.DictReader(open(path))]
    if not rows:
        sys.exit(f"{path}: no warp records")
    origin = min(r["start"] for r in rows)
    print(f"{len(rows)} warps; us after the first warp's start")
    print(f"{'point':15s} {'min':>7s} {'p10':>7s} {'p50':>7s} {'p90':>7s} {'max':>7s}")
    for p in POINTS:
        v = sorted((r[p] - origin) / 1000 for r in rows if r[p])
        if v:
            print(f"{p:15s} " + " ".join(f"{quantile(v, q):7.2f}" for q in (0, .1, .5, .9, 1)))
    print("median per warp between consecutive recorded points:")
    steps = {}  # (a, b) -> durations; points a configuration does not record are skipped
    for r in rows:
        present = [p for p in POINTS if r[p]]
        for a, b in zip(present, present[1:]):
            steps.setdefault((a, b), []).append((r[b] - r[a]) / 1000)
    for (a, b), d in sorted(steps.items(), key=lambda kv: POINTS.index(kv[0][0])):
        d.sort()
        print(f"  {a} -> {b}: {quantile(d, .5):.2f} ({len(d)} warps)")
    by_sm = {}
    for r in rows:
        by_sm.setdefault(r["sm"], []).append(r)
    ends = {}
    for warps in by_sm.values():
        ends.setdefault(len(warps), []).append(max(w["end"] for w in warps) - origin)
    for n, e in sorted(ends.items()):
        e.sort()
        print(f"SMs with {n} warps: {len(e)}; last end p50 {quantile(e, .5) / 1000:.2f}, "
              f"max {e[-1] / 1000:.2f}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
