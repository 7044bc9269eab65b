#!/usr/bin/env python3
"""The STE training step of `bitnet-bench train` in PyTorch, for comparison.

Same model and step as benchmarks/train_bench.cc: in -> hidden (ReLU) -> out
BitNet b1.58 layers (per-row absmean ternary weights, per-row absmax int8
activations, both with the straight-through estimator), biases, MSE against
random targets, AdamW (lr 1e-4). Fresh random inputs every step.

Variants (one table row each):
  ste fp32         fp32 latent weights, fp32 matmuls (TF32 off)
  ste fp16 (amp)   fp32 master weights, matmuls under torch.autocast(fp16)
  dense fp32       plain nn.Linear layers, no quantization (the cost floor
  dense fp16 (amp) of the matmuls themselves)

Timing: CUDA events around whole steps (forward, backward, optimizer step),
after warm-up; median and mean of --steps steps. Prints a Markdown table with
the GPU's name. Needs a CUDA GPU and PyTorch.

  python3 benchmarks/train_bench_torch.py [--rows 256] [--in 4096]
      [--hidden 11008] [--out 4096] [--steps 50] [--warmup 5]
"""

import argparse
import statistics
import sys

import torch
import torch.nn.functional as F


def ternary_ste(w: torch.Tensor) -> torch.Tensor:
    """Per-row absmean ternary quantization; identity gradient (STE)."""
    scale = w.abs().mean(dim=1, keepdim=True).clamp(min=1e-5)
    q = torch.round(w / scale).clamp(-1, 1)
    return w + (q * scale - w).detach()


def int8_ste(x: torch.Tensor) -> torch.Tensor:
    """Per-row absmax int8 quantization; identity gradient (STE)."""
    s = 127.0 / x.abs().amax(dim=1, keepdim=True).clamp(min=1e-5)
    xq = torch.round(x * s).clamp(-128, 127) / s
    return x + (xq - x).detach()


class BitLinear(torch.nn.Module):
    def __init__(self, n_in: int, n_out: int, quantize: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_out, n_in) / n_in ** 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(n_out))
        self.quantize = quantize

    def forward(self, x):
        if not self.quantize:
            return F.linear(x, self.weight, self.bias)
        # Quantizers in fp32 (as the C++ trainer), the matmul in the autocast
        # dtype when autocast is on.
        return F.linear(int8_ste(x.float()), ternary_ste(self.weight), self.bias)


def run(args, quantize: bool, half: bool):
    torch.manual_seed(0)
    layers = torch.nn.ModuleList([
        BitLinear(args.in_features, args.hidden, quantize),
        BitLinear(args.hidden, args.out, quantize),
    ]).cuda()
    optimizer = torch.optim.AdamW(layers.parameters(), lr=1e-4, weight_decay=0.0)
    scaler = torch.cuda.amp.GradScaler(enabled=half)

    def step():
        x = torch.randn(args.rows, args.in_features, device="cuda")
        t = torch.randn(args.rows, args.out, device="cuda") * 0.1
        with torch.autocast("cuda", dtype=torch.float16, enabled=half):
            y = layers[1](F.relu(layers[0](x)))
            loss = F.mse_loss(y.float(), t)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(args.steps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), statistics.mean(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--in", dest="in_features", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=11008)
    parser.add_argument("--out", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("train_bench_torch: no CUDA device", file=sys.stderr)
        return 1
    # Plain fp32 for the fp32 rows (the C++ backend uses no TF32 either).
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    params = args.in_features * args.hidden + args.hidden * args.out
    flops = 2.0 * args.rows * params * 5  # as bitnet-bench train counts
    print(f"train_bench_torch: {torch.cuda.get_device_name()}, torch "
          f"{torch.__version__}; {args.in_features} -> {args.hidden} -> "
          f"{args.out} ({params / 1e6:.1f}M weights), {args.rows} rows, MSE, "
          f"AdamW, {args.steps} timed steps after {args.warmup} warm-up\n")
    print("| variant | ms/step (median) | ms/step (mean) | steps/s | rows/s | "
          "GFLOP/s (5 products) |")
    print("|---|---|---|---|---|---|")
    for name, quantize, half in [("ste fp32", True, False),
                                 ("ste fp16 (amp)", True, True),
                                 ("dense fp32", False, False),
                                 ("dense fp16 (amp)", False, True)]:
        median, mean = run(args, quantize, half)
        print(f"| {name} | {median:.2f} | {mean:.2f} | {1e3 / median:.2f} | "
              f"{args.rows * 1e3 / median:.0f} | {flops / (median * 1e6):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
