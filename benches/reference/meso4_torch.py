#!/usr/bin/env python3
"""Meso4 training throughput on the CPU with PyTorch: the reference dfbench's candle numbers are
compared against (BENCHMARKS.md). Never run by CI or the build.

Setup, outside git (the repository ignores .venv/):
    python3 -m venv .venv && .venv/bin/pip install torch
Run (2 threads, as on the 2-core benchmark machine):
    .venv/bin/python benches/reference/meso4_torch.py [--sizes 128 256] [--steps 10] [--threads 2]

The network follows DeepfakeBench's Meso4 (conv without bias -> ReLU -> BatchNorm -> max-pool,
four times, pools 2, 2, 2, 4; dropout 0.5, fc 16*s*s -> 16, LeakyReLU(0.1), dropout 0.5, fc -> 1)
with one BatchNorm per convolution (DeepfakeBench shares two of them; same cost) and a single
logit trained with BCE-with-logits. Inputs are random: only the speed is measured.
"""
import argparse
import time

import torch
import torch.nn as nn


class Meso4(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        chans = [(3, 8, 3), (8, 8, 5), (8, 16, 5), (16, 16, 5)]
        pools = [2, 2, 2, 4]
        blocks = []
        for (cin, cout, k), pool in zip(chans, pools):
            blocks += [
                nn.Conv2d(cin, cout, k, padding=k // 2, bias=False),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(cout),
                nn.MaxPool2d(pool),
            ]
        self.features = nn.Sequential(*blocks)
        side = size // 32
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(16 * side * side, 16),
            nn.LeakyReLU(0.1),
            nn.Dropout(0.5),
            nn.Linear(16, 1),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def images_per_second(size: int, batch: int, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    model = Meso4(size).train()
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1) < 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return batch * steps / elapsed


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    for size in args.sizes:
        ips = images_per_second(size, args.batch, args.steps, args.warmup)
        print(f"meso4 train {size}px: {ips:.1f} img/s ({args.batch / ips * 1000:.1f} ms/step)")


if __name__ == "__main__":
    main()
