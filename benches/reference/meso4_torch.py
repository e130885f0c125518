#!/usr/bin/env python3
"""Meso4 training throughput on the CPU with PyTorch: the reference dfbench's candle numbers are
compared against (BENCHMARKS.md). Never run by CI or the build.

Setup, outside git (the repository ignores .venv/):
    python3 -m venv .venv && .venv/bin/pip install torch
Run (2 threads, as on the 2-core benchmark machine):
    .venv/bin/python benches/reference/meso4_torch.py [--sizes 128 256] [--steps 10] [--threads 2]

The network is DeepfakeBench's Meso4 features (conv without bias -> ReLU -> BatchNorm -> max-pool,
four times, pools 2, 2, 2, 4; one BatchNorm per convolution as in dfbench's meso.rs and Afchar et
al. -- DeepfakeBench shares one BatchNorm between two convolutions, `--shared-bn` reproduces that)
followed by one of two classifiers:
  --classifier dfbench (default): what dfbench's `Detector` builds and `benches/meso4_train.rs`
      times: `--head-layers` Linear(d, d) layers with ReLU between them, then Linear(d, 1); no
      dropout. Same parameter count as dfbench (printed by both).
  --classifier deepfakebench: DeepfakeBench's dropout 0.5, Linear(d, 16), LeakyReLU(0.1),
      dropout 0.5, Linear(16, 1).
A single logit is trained with BCE-with-logits. Inputs are random: only the speed is measured.
"""
import argparse
import time

import torch
import torch.nn as nn


class Meso4(nn.Module):
    def __init__(self, size: int, classifier: str, head_layers: int, shared_bn: bool = False):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)
            for cin, cout, k in [(3, 8, 3), (8, 8, 5), (8, 16, 5), (16, 16, 5)]
        )
        if shared_bn:
            bn1, bn2 = nn.BatchNorm2d(8), nn.BatchNorm2d(16)
            self.bns = nn.ModuleList([bn1, bn2])
            self.order = [bn1, bn1, bn2, bn2]
        else:
            self.bns = nn.ModuleList(nn.BatchNorm2d(c) for c in [8, 8, 16, 16])
            self.order = list(self.bns)
        self.pools = [2, 2, 2, 4]
        d = 16 * (size // 32) ** 2
        if classifier == "dfbench":
            layers = []
            for i in range(head_layers):
                if i > 0:
                    layers.append(nn.ReLU())
                layers.append(nn.Linear(d, d))
            layers.append(nn.Linear(d, 1))
        else:
            layers = [nn.Dropout(0.5), nn.Linear(d, 16), nn.LeakyReLU(0.1), nn.Dropout(0.5), nn.Linear(16, 1)]
        self.classifier = nn.Sequential(*layers)

    def forward(self, x):
        for conv, bn, pool in zip(self.convs, self.order, self.pools):
            x = nn.functional.max_pool2d(bn(torch.relu(conv(x))), pool)
        return self.classifier(torch.flatten(x, 1))


def erm_step(model: nn.Module, size: int, batch: int):
    """One ERM training step of `model` (Adam, lr 2e-4, BCE-with-logits on one logit) on a fixed
    random batch, as a closure; also shared by cpu_backbones_torch.py."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.randn(batch, 3, size, size)
    y = (torch.rand(batch, 1) < 0.5).float()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step


def timed(step, steps: int, warmup: int) -> float:
    """Seconds taken by `steps` calls of `step` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return time.perf_counter() - start


def images_per_second(size: int, batch: int, steps: int, warmup: int, classifier: str, head_layers: int,
                      shared_bn: bool = False):
    torch.manual_seed(0)
    model = Meso4(size, classifier, head_layers, shared_bn).train()
    n_params = sum(p.numel() for p in model.parameters())
    elapsed = timed(erm_step(model, size, batch), steps, warmup)
    return batch * steps / elapsed, n_params


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--classifier", choices=["dfbench", "deepfakebench"], default="dfbench")
    ap.add_argument("--head-layers", type=int, default=0)
    ap.add_argument("--shared-bn", action="store_true", help="DeepfakeBench's shared BatchNorms")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({args.classifier} classifier), {torch.get_num_threads()} threads, batch {args.batch}, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    for size in args.sizes:
        ips, n = images_per_second(size, args.batch, args.steps, args.warmup, args.classifier, args.head_layers,
                                   args.shared_bn)
        print(f"meso4 train {size}px: {ips:.1f} img/s ({args.batch / ips * 1000:.1f} ms/step), {n} parameters")


if __name__ == "__main__":
    main()
