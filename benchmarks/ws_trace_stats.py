#!/usr/bin/env python3
"""Summarizes ws kernel timer traces: FILE.ws.csv of BITNET_GEMV_TRACE=FILE bitnet-bench kernels.

Usage: ws_trace_stats.py FILE.ws.csv [FILE.ws.csv ...]

Prints one line per file: the blocks of the traced launch, the final ones
among them (that ran the epilogue: all, or each tile's last with split-K), the
k-tiles traced per block (the first 40 at most), and the median over the
blocks, in microseconds, of
  tile      per k-tile in the steady state: consumer thread 0's full-barrier
            returns from k-tile 2 to the block's last traced one, per step
  issue     decode and wgmma issue of a k-tile (k-tiles 2 on)
  wait      the wgmma.wait_group 1 that follows it (k-tiles 2 on)
  loop      the main loop: producer's PDL wait returned -> consumers' loop done
  reduce    split-K reduction, in the tiles' last blocks: synced -> reduced
  epilogue  reduced (or synced, without split-K) -> end, in those blocks
and pdl_end: from the first producer's PDL return to the last block's end.
Only relative times mean anything: the trace itself costs about 1-2 us per
launch (kernels/cuda/ws_trace.h). Reads files with or without a header line
(the session 25 experiment wrote none).

The buffer keeps every slot's latest value: slots a block did not store in the
last launch (k-tiles past its own, the reduction and epilogue of split-K blocks
that are not their tile's last) hold an earlier launch's times, which are older
than the record's own PDL return and are skipped as such. Records of an
earlier launch with more blocks cannot be told apart: trace one shape per run.
"""
import argparse
import statistics
import sys

# Slots of kernels/cuda/ws_trace.h.
SM = 1
PREREQUISITES = 2
LOOP_DONE = 3
SYNCED = 4
END = 5
FULL = 48
TILE_WAITED = 88
TILE_ISSUED = 168
REDUCED = 210
TRACE_TILES = 40
SLOTS = 256
RECORDS = 4096  # kWsTraceRecords: blocks past it are not traced

COLUMNS = ["blocks", "final", "tiles", "tile", "issue", "wait", "loop", "reduce", "epilogue",
           "pdl_end"]


def load(path):
    """Returns the records of `path` as lists of SLOTS ints."""
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            fields = line.strip().split(",")
            if number == 1 and not fields[0].isdigit():
                continue  # the header line
            if len(fields) != SLOTS + 1:
                sys.exit(f"{path}:{number}: {len(fields)} fields, not a ws trace "
                         f"(record + {SLOTS} slots)")
            records.append([int(v) for v in fields[1:]])
    return records


def traced_tiles(r):
    """The k-tiles of record r traced in its last launch (full waits after its PDL return)."""
    n = 0
    while n < TRACE_TILES and r[FULL + n] > r[PREREQUISITES]:
        n += 1
    return n


def median_us(values):
    return f"{statistics.median_high(values) / 1000:.3f}" if values else "-"


def summarize(path):
    records = load(path)
    # A block of the last launch finished its main loop after its producer's
    # PDL wait returned; only the split-K / epilogue slots may be stale.
    current = [r for r in records if r[LOOP_DONE] > r[PREREQUISITES]]
    if not current:
        return None
    tiles = {id(r): traced_tiles(r) for r in current}
    per_tile, issue, wait = [], [], []
    for r in current:
        n = tiles[id(r)]
        if n >= 4:
            per_tile.append((r[FULL + n - 1] - r[FULL + 2]) / (n - 3))
        for i in range(2, n):
            if r[TILE_ISSUED + i] > r[FULL + i]:
                issue.append(r[TILE_ISSUED + i] - r[FULL + i])
            if r[TILE_WAITED + i] > r[TILE_ISSUED + i]:
                wait.append(r[TILE_WAITED + i] - r[TILE_ISSUED + i])
    # Blocks that ran the epilogue: every block without split-K, the last
    # block of each tile with it.
    final = [r for r in current if r[END] > r[SYNCED] > r[LOOP_DONE]]
    reduce = [r[REDUCED] - r[SYNCED] for r in final if r[REDUCED] > r[SYNCED]]
    epilogue = [r[END] - max(r[REDUCED], r[SYNCED]) for r in final]
    pdl_end = (max(r[END] for r in final) - min(r[PREREQUISITES] for r in current)
               if final else None)
    return {
        "blocks": str(len(current)),
        "final": str(len(final)),
        "tiles": str(max(tiles.values())),
        "tile": median_us(per_tile),
        "issue": median_us(issue),
        "wait": median_us(wait),
        "loop": median_us([r[LOOP_DONE] - r[PREREQUISITES] for r in current]),
        "reduce": median_us(reduce),
        "epilogue": median_us(epilogue),
        "pdl_end": f"{pdl_end / 1000:.3f}" if pdl_end is not None else "-",
        "full": len(records) >= RECORDS,
        "sms": len({r[SM] for r in current}),
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="FILE.ws.csv")
    args = parser.parse_args()
    print("medians over the blocks of each file's traced launch, us")
    print(" ".join(f"{c:>8s}" for c in COLUMNS), " file")
    for path in args.files:
        s = summarize(path)
        if s is None:
            print(" ".join(f"{'-':>8s}" for c in COLUMNS), f" {path} (no ws blocks traced)")
            continue
        note = f"{s['sms']} SMs"
        if s["full"]:
            note += f"; only the first {RECORDS} blocks traced"
        print(" ".join(f"{s[c]:>8s}" for c in COLUMNS), f" {path} ({note})")


if __name__ == "__main__":
    main()
