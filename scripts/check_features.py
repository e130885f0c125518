#!/usr/bin/env python3
"""Acceptance check of `bench features` against PyTorch references (run by hand, never by CI).

For each backbone: a random-initialised reference with BatchNorm statistics set away from 0/1,
saved with `torch.save(model.state_dict())` (zip and legacy format) and with safetensors, an input `x.safetensors`, and
`bench features --backbone NAME --weights FILE --size S x.safetensors --out y.safetensors` for
both files; prints the largest |difference| over the largest |reference feature|.

    python scripts/check_features.py target/release/bench [CASE...]
"""
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from reference_fixtures import Pooled, cadene_names, lukemelas, timm_model, torchvision_resnet  # noqa: E402


def condition(net, model, size, gen):
    """Random weights with PyTorch's default initialisation and BatchNorm statistics measured on
    random images, then moved off them (random affine parameters, shifted means, scaled
    variances). timm's own EfficientNet initialisation with statistics far from the activations'
    makes deep networks chaotic: PyTorch's f32 and f64 then disagree by up to 20%, and no f32
    comparison means anything. Each line also prints PyTorch's own f32-vs-f64 gap."""
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.reset_parameters()
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        c = m.num_features
        m.reset_running_stats()
        m.momentum = None  # a plain average over the calibration batch
        m.weight.data.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
        m.bias.data.copy_(torch.randn(c, generator=gen) * 0.1)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, 3, size, size, generator=gen))
    for m in bns:
        c = m.num_features
        m.running_var.clamp_(min=1e-3)
        m.running_mean.add_(torch.randn(c, generator=gen) * 0.05 * m.running_var.sqrt())
        m.running_var.mul_(torch.rand(c, generator=gen) * 0.4 + 0.8)
        m.momentum = 0.1


def legacy_xception_pooled():
    m = timm_model("legacy_xception", num_classes=1000)
    return m, Pooled(m, lambda n, x: n.forward_head(n.forward_features(x), pre_logits=True))


CASES = [
    ("resnet18", "resnet18", 64, lambda: torchvision_resnet(18), None),
    ("resnet34", "resnet34", 64, lambda: torchvision_resnet(34), None),
    ("efficientnet_b0", "efficientnet-b0", 96, lambda: (m := timm_model("efficientnet_b0"), m), None),
    ("efficientnet_b4", "efficientnet-b4", 96, lambda: (m := timm_model("efficientnet_b4"), m), None),
    ("tf_efficientnet_b4", "tf-efficientnet-b4", 96, lambda: (m := timm_model("tf_efficientnet_b4"), m), None),
    ("lukemelas_efficientnet_b4", "tf-efficientnet-b4", 96, lambda: lukemelas("efficientnet-b4", 96), None),
    ("efficientnet_pytorch_b4", "efficientnet-pytorch-b4", 96, lambda: lukemelas("efficientnet-b4", None), None),
    ("xception_timm_legacy", "xception", 96, legacy_xception_pooled, None),
    ("xception_cadene", "xception", 96, legacy_xception_pooled, cadene_names),
    ("vit_b16", "vit-b16", 64, lambda: (m := timm_model("vit_base_patch16_224", img_size=64), m), None),
]


def main():
    bench = sys.argv[1]
    only = set(sys.argv[2:])
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    with tempfile.TemporaryDirectory() as d:
        for case, backbone, size, build, rename in CASES:
            if only and case not in only:
                continue
            torch.manual_seed(1)
            net, model = build()
            condition(net, model, size, gen)
            model.eval()
            x = torch.randn(2, 3, size, size, generator=gen)
            with torch.no_grad():
                ref = model(x).reshape(2, -1)
                ref64 = model.double()(x.double()).reshape(2, -1)
                model.float()
            own = ((ref.double() - ref64).abs().max() / ref64.abs().max()).item()
            sd = {k: v.contiguous() for k, v in net.state_dict().items()}
            if rename:
                sd = rename(sd)
            xp = os.path.join(d, "x.safetensors")
            save_file({"x": x}, xp)
            files = {
                "pth": os.path.join(d, f"{case}.pth"),
                "pth-legacy": os.path.join(d, f"{case}-legacy.pth"),
                "safetensors": os.path.join(d, f"{case}.safetensors"),
            }
            torch.save(sd, files["pth"])
            torch.save(sd, files["pth-legacy"], _use_new_zipfile_serialization=False)
            save_file(sd, files["safetensors"])
            for kind, w in files.items():
                out = os.path.join(d, "y.safetensors")
                cmd = [bench, "-q", "features", "--backbone", backbone, "--weights", w, "--size", str(size), xp, "--out", out]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{case} {kind}: bench failed ({r.returncode}): {r.stderr.strip()}")
                    worst = float("inf")
                    continue
                y = load_file(out)["features"]
                rel = ((y - ref).abs().max() / ref.abs().max()).item()
                worst = max(worst, rel)
                print(f"{case:28s} {kind:12s} {backbone:20s} {size:4d} px  D={y.shape[1]:5d}  rel {rel:.2e}"
                      f"  (PyTorch f32 vs f64: {own:.1e})")
    print(f"worst relative difference: {worst:.2e}")
    sys.exit(0 if worst <= 1e-4 else 1)


if __name__ == "__main__":
    main()
