#!/usr/bin/env python3
"""Speedup of the CUDA ternary kernels over cuBLAS fp16 against batch rows M.

Reads the CSV written by `bitnet-bench kernels --csv FILE` and writes a PNG:
    python3 benchmarks/plot_kernels.py kernels.csv kernels_speedup.png
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print("plot_kernels: no rows in", sys.argv[1], file=sys.stderr)
        return 1
    card = rows[0]["card"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for n in sorted({int(r["n"]) for r in rows}):
        sel = sorted((r for r in rows if int(r["n"]) == n), key=lambda r: int(r["m"]))
        ms = [int(r["m"]) for r in sel]
        for col, style, label in (("speedup_fp16", "--", "fp16 act"),
                                  ("speedup_int8", ":", "int8 act"),
                                  ("speedup_best", "-", "best")):
            ax.plot(ms, [float(r[col]) for r in sel], style, marker="o",
                    label=f"N={n} {label}")
    # Acceptance targets: 4x at M<=16, 2x at 128, 1.3x at 512 and 2048, >=1x.
    ax.plot([1, 16], [4, 4], "k_", markersize=20)
    ax.plot([128], [2], "k_", markersize=20)
    ax.plot([512, 2048], [1.3, 1.3], "k_", markersize=20, label="targets")
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch rows M (K = %s)" % rows[0]["k"])
    ax.set_ylabel("speedup over cuBLAS fp16 (x)")
    ax.set_title("Ternary kernels vs cuBLAS fp16 on " + card)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
