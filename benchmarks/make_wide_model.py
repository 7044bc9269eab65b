#!/usr/bin/env python3
"""Writes a bitnet-serve model file with random ternary weights and given
layer widths (int8 activations, per-row scales, bias; ReLU between layers),
for measuring the serving path's per-element host work without the large
demo model's compute: e.g. 4096 -> 16 -> 4096 has the large demo model's
input and output width but almost no forward cost on the CPU.

  benchmarks/make_wide_model.py OUT.safetensors [4096,16,4096]
  bitnet-server --device=cpu --models=demo=OUT.safetensors ...

Standard library only; the file format is docs/model-format.md (safetensors +
__metadata__ format "bitnet-serve", format_version "1").
"""
import json
import random
import struct
import sys


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    widths = [int(w) for w in (sys.argv[2] if len(sys.argv) == 3 else "4096,16,4096").split(",")]
    if len(widths) < 2 or min(widths) < 1:
        sys.exit("widths: at least two positive integers, e.g. 4096,16,4096")
    rng = random.Random(9)
    layers, tensors = [], {}
    for i, (k, n) in enumerate(zip(widths, widths[1:])):
        last = i == len(widths) - 2
        layers.append({"act_quant": "int8", "activation": "identity" if last else "relu",
                       "bias": True, "in_features": k, "out_features": n, "scale": "per-row"})
        words = (k + 15) // 16
        # Codes q + 1 in {0, 1, 2}, 16 per little-endian int32; padding codes are 1 (zero).
        packed = bytearray()
        for _ in range(n):
            for w in range(words):
                word = 0
                for j in range(16):
                    code = rng.randint(0, 2) if w * 16 + j < k else 1
                    word |= code << (2 * j)
                packed += struct.pack("<I", word)
        tensors[f"layers.{i}.weight.packed"] = ("I32", [n, words], bytes(packed))
        tensors[f"layers.{i}.weight.scale"] = ("F32", [n], struct.pack(f"<{n}f", *[k ** -0.5] * n))
        tensors[f"layers.{i}.bias"] = (
            "F32", [n], struct.pack(f"<{n}f", *[rng.uniform(-0.1, 0.1) for _ in range(n)]))
    header = {"__metadata__": {"format": "bitnet-serve", "format_version": "1",
                               "layers": json.dumps(layers, separators=(",", ":"))}}
    offset, data = 0, bytearray()
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        data += raw
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(sys.argv[1], "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


if __name__ == "__main__":
    main()
