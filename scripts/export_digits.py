#!/usr/bin/env python3
"""Exports the 8x8 handwritten digits data set into a test fixture.

Source: sklearn/datasets/data/digits.csv.gz as shipped by Debian's
python3-sklearn (a copy of the test set of the UCI "Optical Recognition of
Handwritten Digits" data set: 1797 images, 64 pixels each in 0..16, the label
in the 65th column). Only the standard library is used (gzip, csv), so
neither sklearn nor numpy has to be importable.

Output: a safetensors file (default tests/fixtures/digits.safetensors) with
  train.x       F32 [1437, 64]  pixels / 16, so every value lies in [0, 1]
  train.labels  I32 [1437]      digit 0..9
  test.x        F32 [360, 64]
  test.labels   I32 [360]
and __metadata__ naming the source file (with its SHA-256), the permutation
seed and the split sizes. The split is a fixed pseudo-random permutation
(splitmix64 + Fisher-Yates, defined here, not Python's `random`, so the same
seed gives the same split on every Python version): the first 1437 permuted
rows train, the last 360 test.

Run once; the output is committed and tests read it. Re-running on the same
source file reproduces the fixture byte for byte.

  apt-get install -y python3-sklearn   # or: apt-get download python3-sklearn
                                       #     && dpkg-deb -x python3-sklearn_*.deb root
  python3 scripts/export_digits.py [--source PATH] [--output PATH]
"""

import argparse
import csv
import gzip
import hashlib
import io
import json
import struct
import sys

DEFAULT_SOURCE = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"
DEFAULT_OUTPUT = "tests/fixtures/digits.safetensors"
NUM_ROWS = 1797
NUM_PIXELS = 64
NUM_TEST = 360
SEED = 20250105
MASK64 = (1 << 64) - 1


class SplitMix64:
    """splitmix64 (Steele, Lea, Flood 2014); the same generator as
    server/model/demo_model.h's DemoRandom."""

    def __init__(self, seed):
        self.state = seed & MASK64

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n):
        """Uniform integer in [0, n) by rejection (no modulo bias)."""
        limit = MASK64 - (MASK64 + 1) % n
        while True:
            v = self.next_u64()
            if v <= limit:
                return v % n


def permutation(n, seed):
    rng = SplitMix64(seed)
    p = list(range(n))
    for i in range(n - 1, 0, -1):  # Fisher-Yates
        j = rng.below(i + 1)
        p[i], p[j] = p[j], p[i]
    return p


def read_digits(path):
    with open(path, "rb") as f:
        raw = f.read()
    text = gzip.decompress(raw).decode("ascii")
    images, labels = [], []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row:
            continue
        if len(row) != NUM_PIXELS + 1:
            sys.exit(f"{path}: line {line_no} has {len(row)} fields, expected {NUM_PIXELS + 1}")
        values = [float(v) for v in row]
        if any(v != int(v) or not 0 <= v <= 16 for v in values[:NUM_PIXELS]):
            sys.exit(f"{path}: line {line_no}: pixels must be integers in 0..16")
        label = values[NUM_PIXELS]
        if label != int(label) or not 0 <= label <= 9:
            sys.exit(f"{path}: line {line_no}: label {label} is not a digit 0..9")
        images.append([int(v) for v in values[:NUM_PIXELS]])
        labels.append(int(label))
    if len(images) != NUM_ROWS:
        sys.exit(f"{path}: {len(images)} rows, expected {NUM_ROWS}")
    return images, labels, hashlib.sha256(raw).hexdigest()


def safetensors_bytes(tensors, metadata):
    """tensors: list of (name, dtype, shape, bytes). Same layout rules as the
    Python safetensors library: data in the given order without gaps, header
    padded with spaces to a multiple of 8."""
    header = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    blob = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob + b"".join(t[3] for t in tensors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=DEFAULT_SOURCE)
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    images, labels, source_sha = read_digits(args.source)
    order = permutation(NUM_ROWS, SEED)
    train_rows, test_rows = order[:NUM_ROWS - NUM_TEST], order[NUM_ROWS - NUM_TEST:]

    def pixels(rows):
        # v / 16 is exact in binary floating point.
        flat = [v / 16.0 for r in rows for v in images[r]]
        return struct.pack(f"<{len(flat)}f", *flat)

    def label_bytes(rows):
        return struct.pack(f"<{len(rows)}i", *[labels[r] for r in rows])

    tensors = [
        ("test.x", "F32", [len(test_rows), NUM_PIXELS], pixels(test_rows)),
        ("test.labels", "I32", [len(test_rows)], label_bytes(test_rows)),
        ("train.x", "F32", [len(train_rows), NUM_PIXELS], pixels(train_rows)),
        ("train.labels", "I32", [len(train_rows)], label_bytes(train_rows)),
    ]
    metadata = {
        "source": "sklearn/datasets/data/digits.csv.gz (Debian python3-sklearn; "
                  "UCI Optical Recognition of Handwritten Digits, test set)",
        "source_sha256": source_sha,
        "pixel_scale": "x = pixel / 16",
        "split": "splitmix64 Fisher-Yates permutation; first train_rows train, rest test",
        "permutation_seed": str(SEED),
        "train_rows": str(len(train_rows)),
        "test_rows": str(len(test_rows)),
    }
    out = safetensors_bytes(tensors, metadata)
    with open(args.output, "wb") as f:
        f.write(out)
    counts = [sum(1 for r in test_rows if labels[r] == d) for d in range(10)]
    print(f"wrote {args.output}: {len(out)} bytes, {len(train_rows)} train / "
          f"{len(test_rows)} test rows; test labels per digit {counts}")


if __name__ == "__main__":
    main()
