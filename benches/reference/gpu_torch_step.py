#!/usr/bin/env python3
"""Training-step throughput of PyTorch + timm on a GPU: the reference side of
benches/reference/gpu_side_by_side.sh (dfbench side: detectors/examples/gpu_train_step.rs).
Never run by CI or the build; uses the machine's torch and timm, no network (pretrained=False).

    python3 benches/reference/gpu_torch_step.py --model efficientnet-b4 --px 256 --batch 16 \
        --method erm-o+s [--steps 10] [--warmup 3] [--head-layers 2] [--no-tf32]

Prints one line: torch model=.. px=.. batch=.. method=.. precision=.. img_s=.. step_ms=.. params=.. device=".."

The detector mirrors dfbench's: backbone features (timm, num_classes=0: pooled features; Meso4:
flattened features as benches/reference/meso4_torch.py builds them), `--head-layers` Linear(d, d)
with ReLU between, Linear(d, 1), BCE-with-logits, Adam (lr 2e-4). Random inputs, two batches of
`--batch` per step (streams O and S); img/s counts both.

Methods:
  erm-o+s  loss = BCE(O) + BCE(S), one backward, Adam step.
  cs-dfd   the same two losses, each with its own backward pass (torch.autograd.grad), the two
           flat gradients combined on the GPU by the two-task min-norm (UVS-like) closed form,
           then Adam. dfbench's CS-DFD adds CGR on the projection head and host-side bookkeeping;
           this counts the same passes (2 forward, 2 backward) and a comparable combination.
Eager mode, fp32; TF32 on for matmuls and cuDNN unless --no-tf32 (the papers' PyTorch default on
Ampere and later).
"""
import argparse
import os
import sys
import time

import torch
import torch.nn as nn

TIMM_NAMES = {
    "efficientnet-b4": ["efficientnet_b4"],
    "efficientnet-b0": ["efficientnet_b0"],
    "tf-efficientnet-b4": ["tf_efficientnet_b4"],
    "xception": ["legacy_xception", "xception"],
    "resnet34": ["resnet34"],
    "resnet18": ["resnet18"],
    "vit-b16": ["vit_base_patch16_224"],
}


class Meso4Features(nn.Module):
    """meso4_torch.Meso4 without its classifier: the flattened features dfbench's Meso4 gives."""

    def __init__(self, m):
        super().__init__()
        m.classifier = nn.Identity()  # the detector adds its own head and classifier
        self.m = m

    def forward(self, x):
        for conv, bn, pool in zip(self.m.convs, self.m.order, self.m.pools):
            x = nn.functional.max_pool2d(bn(torch.relu(conv(x))), pool)
        return torch.flatten(x, 1)


def backbone(name: str, px: int):
    """(module, feature width)."""
    if name == "meso4":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from meso4_torch import Meso4  # noqa: E402

        return Meso4Features(Meso4(px, "dfbench", 0)), 16 * (px // 32) ** 2
    import timm

    last = None
    for t in TIMM_NAMES[name]:
        try:
            kw = {"img_size": px} if t.startswith("vit_") else {}
            m = timm.create_model(t, pretrained=False, num_classes=0, **kw)
            return m, m.num_features
        except Exception as e:  # an older/newer timm may name the model differently
            last = e
    raise SystemExit(f"gpu_torch_step: no timm model for {name}: {last}")


class Detector(nn.Module):
    def __init__(self, name, px, head_layers):
        super().__init__()
        self.backbone, d = backbone(name, px)
        layers = []
        for i in range(head_layers):
            if i > 0:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(d, d))
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(d, 1)

    def forward(self, x):
        return self.classifier(self.head(self.backbone(x))).squeeze(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--method", choices=["erm-o+s", "cs-dfd"], default="erm-o+s")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--head-layers", type=int, default=2)
    ap.add_argument("--no-tf32", action="store_true")
    a = ap.parse_args()
    tf32 = not a.no_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = Detector(a.model, a.px, a.head_layers).to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    opt = torch.optim.Adam(params, lr=2e-4)
    bce = nn.BCEWithLogitsLoss()
    xo = torch.rand(a.batch, 3, a.px, a.px, device=dev) * 4 - 2
    xs = torch.rand(a.batch, 3, a.px, a.px, device=dev) * 4 - 2
    y = (torch.arange(a.batch, device=dev) % 2).float()

    def step():
        opt.zero_grad(set_to_none=True)
        l1 = bce(model(xo), y)
        l2 = bce(model(xs), y)
        if a.method == "erm-o+s":
            (l1 + l2).backward()
        else:
            g1 = torch.autograd.grad(l1, params, retain_graph=True)
            g2 = torch.autograd.grad(l2, params)
            f1 = torch.cat([g.reshape(-1) for g in g1])
            f2 = torch.cat([g.reshape(-1) for g in g2])
            diff = f1 - f2
            w = torch.clamp(torch.dot(f2, -diff) / torch.dot(diff, diff).clamp_min(1e-20), 0, 1)
            d = w * f1 + (1 - w) * f2
            off = 0
            for p in params:
                n = p.numel()
                p.grad = d[off : off + n].view_as(p)
                off += n
        opt.step()

    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    torch.cuda.synchronize()
    el = time.perf_counter() - t0
    prec = "fp32+tf32" if tf32 else "fp32"
    print(
        f"torch model={a.model} px={a.px} batch={a.batch} method={a.method} precision={prec} "
        f"img_s={2 * a.batch * a.steps / el:.2f} step_ms={1e3 * el / a.steps:.2f} params={n_params} "
        f'device="{torch.cuda.get_device_name(0)}"'
    )


if __name__ == "__main__":
    main()
