#!/usr/bin/env python3
"""Writes the reference fixtures of `detectors/tests/reference_backbones.rs` (never run by CI).

Needs torch, timm and efficientnet_pytorch (see docs/pretrained.md, "Regenerating the fixtures"):

    python scripts/reference_fixtures.py detectors/tests/fixtures/reference

Two kinds of fixture, both small:

* `formula/<case>.json`: a full-size reference network (torchvision ResNet, timm EfficientNet /
  TF-EfficientNet / legacy_xception / ViT, efficientnet_pytorch, Cadene Xception names) whose
  every state-dict entry is filled by `formula_values` below, an input filled the same way, and
  the reference's pooled features. Only the names, shapes and features are committed; the Rust
  test regenerates the same bits from integer arithmetic, writes them under the reference's
  names, loads them through dfbench's loaders and compares.
* `pth/*.pth` + `pth/*.json`: reduced-width EfficientNets (random init, BatchNorm statistics set
  away from 0/1) saved with `torch.save` - plain, nested under `state_dict` with `module.`
  prefixes, in the legacy pre-1.6 format, and as a DeepfakeBench detector checkpoint - with the
  features of a formula input.
"""
import json
import math
import os
import sys

import numpy as np
import torch

INPUT_TENSOR_INDEX = 100_000


def formula_raw(tensor_index, n):
    """Integers in [-2048, 2048): a 32-bit hash of (tensor index, element index)."""
    m = 0xFFFFFFFF
    i = np.arange(n, dtype=np.uint64)
    x = (np.uint64((tensor_index * 0x9E3779B1) & m) + i * np.uint64(0x85EBCA77) + np.uint64(0x165667B1)) & np.uint64(m)
    x ^= x >> np.uint64(15)
    x = (x * np.uint64(0x2C1B3C6D)) & np.uint64(m)
    x ^= x >> np.uint64(12)
    return ((x >> np.uint64(8)) & np.uint64(0xFFF)).astype(np.int64) - 2048


def formula_values(tensor_index, name, shape):
    """float32 values, exact in binary: multiples of 2^-12 scaled by a power of two."""
    n = int(np.prod(shape)) if len(shape) else 1
    v = formula_raw(tensor_index, n).astype(np.float64) / 4096.0  # [-0.5, 0.5)
    if name.endswith("running_var") or (len(shape) == 1 and name.endswith("weight")):
        v = 1.0 + v  # BatchNorm / LayerNorm scale and variance in [0.5, 1.5)
    elif len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        k = (fan_in.bit_length() - 1) // 2  # 2^-k ~ 1 / sqrt(fan_in)
        v = v * 2.0 ** -k
    return v.astype(np.float32).reshape(shape)


def formula_input(size, batch=1):
    return formula_values(INPUT_TENSOR_INDEX, "input", [batch, 3, size, size]) * np.float32(4.0)


def formula_state(sd):
    """Fills a reference state dict (sorted-name order) in place; returns [(name, shape)]."""
    names = sorted(k for k in sd if not k.endswith("num_batches_tracked"))
    out = []
    for t, name in enumerate(names):
        shape = list(sd[name].shape)
        sd[name] = torch.from_numpy(formula_values(t, name, shape))
        out.append((name, shape))
    return out


def features(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).reshape(-1).double().tolist()


def timm_model(name, **kw):
    import timm
    return timm.create_model(name, pretrained=False, num_classes=kw.pop("num_classes", 0), **kw)


def timm_efficientnet_reduced(tf, width):
    """timm's efficientnet_b0 / tf_efficientnet_b0 generator at another channel multiplier."""
    from timm.models.efficientnet import _gen_efficientnet
    kw = dict(bn_eps=1e-3, pad_type="same") if tf else {}
    variant = "tf_efficientnet_b0" if tf else "efficientnet_b0"
    return _gen_efficientnet(variant, channel_multiplier=width, depth_multiplier=1.0, pretrained=False,
                             num_classes=0, **kw)


class Pooled(torch.nn.Module):
    """A classifier-free network as a pooled-feature function."""

    def __init__(self, net, fn):
        super().__init__()
        self.net, self.fn = net, fn

    def forward(self, x):
        return self.fn(self.net, x)


def lukemelas(name, size, **kw):
    """size: the image size efficientnet_pytorch fixes its static "SAME" padding for; None keeps
    the model's nominal size (224 for B0, 380 for B4), as `from_pretrained` does."""
    from efficientnet_pytorch import EfficientNet
    if size is not None:
        kw["image_size"] = size
    net = EfficientNet.from_name(name, **kw)
    return net, Pooled(net, lambda n, x: n._avg_pooling(n.extract_features(x)).flatten(1))


def torchvision_resnet(depth):
    import torchvision
    net = getattr(torchvision.models, f"resnet{depth}")()
    net.fc = torch.nn.Identity()
    return net, net


def cadene_names(sd):
    """timm legacy_xception -> Cadene pretrainedmodels' file: `last_linear`, pointwise `[out, in]`."""
    out = {}
    for k, v in sd.items():
        if k.startswith("fc."):
            k = "last_linear." + k[3:]
        if "pointwise" in k and v.dim() == 4:
            v = v[:, :, 0, 0].clone()
        out[k] = v
    return out


def formula_case(out_dir, case, backbone, size, build, rename=None, note=""):
    net, model = build()
    sd = net.state_dict()
    if rename is None:
        names = formula_state(sd)
        net.load_state_dict(sd)
    else:
        # Fill in the file's naming, then load it back through the reverse of `rename`.
        file_sd = rename({k: v for k, v in sd.items()})
        names = formula_state(file_sd)
        back = {}
        for k, v in file_sd.items():
            k2 = "fc." + k[len("last_linear."):] if k.startswith("last_linear.") else k
            back[k2] = v.reshape(sd[k2].shape)
        for k in sd:
            if k.endswith("num_batches_tracked"):
                back[k] = sd[k]
        net.load_state_dict(back)
    x = formula_input(size)
    feats = features(model, x)
    doc = {"case": case, "backbone": backbone, "size": size, "note": note, "names": names, "features": feats}
    with open(os.path.join(out_dir, "formula", f"{case}.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
    print(f"formula/{case}: {len(names)} tensors, {len(feats)} features")


def randomise_bn(net, gen):
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=gen) * 0.2)


def pth_cases(out_dir, size=40, width=0.1):
    gen = torch.Generator().manual_seed(15)
    torch.manual_seed(15)
    x = formula_input(size, batch=2)
    for case, build, backbone, save in [
        ("timm_tf_efficientnet_w010", lambda: timm_efficientnet_reduced(True, width),
         "tf-efficientnet-b0", "plain"),
        ("timm_efficientnet_w010", lambda: timm_efficientnet_reduced(False, width),
         "efficientnet-b0", "plain"),
        ("lukemelas_w010_nested", lambda: lukemelas("efficientnet-b0", size, width_coefficient=width, num_classes=2)[0],
         "tf-efficientnet-b0", "nested"),
        ("deepfakebench_w010", lambda: lukemelas("efficientnet-b0", size, width_coefficient=width, num_classes=2)[0],
         "tf-efficientnet-b0", "deepfakebench"),
        ("lukemelas_w010_legacy", lambda: lukemelas("efficientnet-b0", size, width_coefficient=width, num_classes=2)[0],
         "tf-efficientnet-b0", "legacy"),
        # Padding fixed for the nominal 224 px, as `from_pretrained` builds it, run at 40 px.
        ("lukemelas_w010_static224", lambda: lukemelas("efficientnet-b0", None, width_coefficient=width, num_classes=2)[0],
         "efficientnet-pytorch-b0", "plain"),
    ]:
        net = build()
        randomise_bn(net, gen)
        if case.startswith("timm"):
            model = net
        else:
            model = Pooled(net, lambda n, x: n._avg_pooling(n.extract_features(x)).flatten(1))
        feats = features(model, x)
        sd = net.state_dict()
        if save == "nested":
            obj = {"epoch": 3, "state_dict": {"module." + k: v for k, v in sd.items()}}
        elif save == "deepfakebench":
            obj = {"backbone.efficientnet." + k: v for k, v in sd.items()}
            obj["backbone.last_layer.weight"] = torch.zeros(2, 128)
            obj["head.weight"] = torch.zeros(2, 128)
        else:
            obj = sd
        # "legacy": the pre-1.6 stream that 2017-2019 checkpoints (Cadene, efficientnet_pytorch) use.
        torch.save(obj, os.path.join(out_dir, "pth", f"{case}.pth"), _use_new_zipfile_serialization=save != "legacy")
        doc = {"case": case, "backbone": backbone, "width": width, "size": size, "input_shape": list(x.shape),
               "nominal_size": 224 if "static" in case else None,
               "features": feats, "feature_shape": [x.shape[0], len(feats) // x.shape[0]]}
        with open(os.path.join(out_dir, "pth", f"{case}.json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        print(f"pth/{case}: {sum(v.numel() for v in sd.values())} values")


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else "detectors/tests/fixtures/reference"
    os.makedirs(os.path.join(out_dir, "formula"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "pth"), exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    only = set(sys.argv[2:])

    cases = [
        ("resnet18_torchvision", "resnet18", 64, lambda: torchvision_resnet(18), None),
        ("resnet34_torchvision", "resnet34", 64, lambda: torchvision_resnet(34), None),
        ("efficientnet_b0_timm", "efficientnet-b0", 72, lambda: (m := timm_model("efficientnet_b0"), m), None),
        ("efficientnet_b4_timm", "efficientnet-b4", 72, lambda: (m := timm_model("efficientnet_b4"), m), None),
        ("tf_efficientnet_b0_timm", "tf-efficientnet-b0", 72, lambda: (m := timm_model("tf_efficientnet_b0"), m), None),
        ("tf_efficientnet_b4_timm", "tf-efficientnet-b4", 72, lambda: (m := timm_model("tf_efficientnet_b4"), m), None),
        ("tf_efficientnet_b4_lukemelas", "tf-efficientnet-b4", 72, lambda: lukemelas("efficientnet-b4", 72), None),
        ("efficientnet_pytorch_b4_nominal380", "efficientnet-pytorch-b4", 64, lambda: lukemelas("efficientnet-b4", None), None),
        ("xception_timm_legacy", "xception", 64, lambda: (m := timm_model("legacy_xception"), m), None),
        ("xception_cadene", "xception", 64, lambda: (m := timm_model("legacy_xception", num_classes=1000), Pooled(m, lambda n, x: n.forward_head(n.forward_features(x), pre_logits=True))), cadene_names),
        ("vit_b16_timm", "vit-b16", 64, lambda: (m := timm_model("vit_base_patch16_224", img_size=64), m), None),
    ]
    for case, backbone, size, build, rename in cases:
        if only and case not in only:
            continue
        formula_case(out_dir, case, backbone, size, build, rename)
    if not only or "pth" in only:
        pth_cases(out_dir)


if __name__ == "__main__":
    main()
