#!/usr/bin/env python3
"""Training throughput of the papers' backbones on the CPU with PyTorch + timm: the PyTorch side of
issue 22's table (BENCHMARKS.md, "CPU parity on the papers' backbones"), and with --profile the
same per-op-kind breakdown of a step that `benches/meso4_train.rs --profile` prints for dfbench.
Never run by CI or the build.

Setup, outside git (the repository ignores .venv/):
    python3 -m venv .venv && .venv/bin/pip install torch timm
Run (2 threads, as on the 2-core benchmark machine):
    .venv/bin/python benches/reference/cpu_backbones_torch.py --model resnet34 [--sizes 128 256]
        [--batch 16] [--steps 10] [--warmup 3] [--threads 2] [--profile] [--profile-steps 3]

One training step is what meso4_train.rs times: ERM, Adam (lr 2e-4), BCE-with-logits on one logit,
a fixed random batch, the model in training mode. Models, by dfbench's backbone name:
  meso4            meso4_torch.py's Meso4 (imported, dfbench classifier, no head)
  resnet34         timm `resnet34` (torchvision's layout, as detectors/src/backbones/resnet.rs)
  efficientnet-b4  timm `efficientnet_b4`: symmetric padding, BatchNorm eps 1e-5, what dfbench's
                   `efficientnet-b4` implements (`tf-efficientnet-b4` is timm's tf_ variant)
  xception         timm `legacy_xception` (Cadene's port, DeepfakeBench's layout, as xception.rs)
each with a one-logit classifier (timm `num_classes=1`, no dropout: timm's defaults for these
models), which is dfbench's `Detector` with `--head-layers 0`: both print their parameter count.
Default batches are issue 22's: meso4 32, resnet34 16, efficientnet-b4 8, xception 8.

--profile: after the timed steps, `--profile-steps` more steps under torch.profiler (shapes
recorded), grouped by op kind as dfbench groups its own: dense conv forward / backward-data /
backward-filter, depthwise conv (fwd+bwd), 1x1 conv (fwd+bwd), BatchNorm (fwd+bwd), pooling
(fwd+bwd), element-wise / activations, linear / loss, optimizer, other. Each top-level operator on
the step's thread counts whole (children included) for the group of its name and shapes; a
backward node counts for the group of the forward op that created it (autograd's sequence number),
so the global pool's MeanBackward is pooling and the SE block's is element-wise. "other" is the
profiled step's wall time minus the grouped operators (views, AccumulateGrad, Python). PyTorch's
convolution backward is one operator for both gradients; its time is split between backward-data
and backward-filter per group in proportion to oneDNN's own primitive times (one more step with
oneDNN's verbose log on). The profiler adds overhead per operator: shares are of the profiled
step, whose time is printed beside the unprofiled one.
"""
import argparse
import collections
import os
import re
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from meso4_torch import Meso4, erm_step, timed  # noqa: E402

MODELS = {
    "meso4": None,
    "resnet34": "resnet34",
    "efficientnet-b4": "efficientnet_b4",
    "xception": "legacy_xception",
}
DEFAULT_BATCH = {"meso4": 32, "resnet34": 16, "efficientnet-b4": 8, "xception": 8}

GROUPS = [
    "dense conv forward",
    "dense conv backward-data",
    "dense conv backward-filter",
    "depthwise conv (fwd+bwd)",
    "1x1 conv (fwd+bwd)",
    "BatchNorm (fwd+bwd)",
    "pooling (fwd+bwd)",
    "optimizer",
    "element-wise / activations",
    "linear / loss",
    "other",
]


def build(model: str, size: int):
    torch.manual_seed(0)
    if model == "meso4":
        return Meso4(size, "dfbench", 0).train()
    import timm

    # drop_rate / drop_path_rate 0 are timm's defaults for these models; explicit so that a
    # changed default cannot add dropout to one side only.
    kw = {} if model == "xception" else {"drop_rate": 0.0, "drop_path_rate": 0.0}
    return timm.create_model(MODELS[model], pretrained=False, num_classes=1, **kw).train()


# ---------------------------------------------------------------- profile grouping

CONV_FWD = {"aten::conv2d", "aten::convolution", "aten::_convolution", "aten::mkldnn_convolution",
            "aten::thnn_conv2d", "aten::_slow_conv2d_forward", "aten::_conv_depthwise2d"}
BN_FWD = {"aten::batch_norm", "aten::_batch_norm_impl_index", "aten::native_batch_norm",
          "aten::_native_batch_norm_legit", "aten::_native_batch_norm_legit_no_training"}
POOL_FWD = {"aten::max_pool2d", "aten::max_pool2d_with_indices", "aten::adaptive_avg_pool2d",
            "aten::_adaptive_avg_pool2d", "aten::avg_pool2d"}
LINEAR_LOSS_FWD = {"aten::linear", "aten::addmm", "aten::mm", "aten::matmul",
                   "aten::binary_cross_entropy_with_logits", "aten::ones_like"}
# Bookkeeping without arithmetic: shape views and gradient accumulation.
OTHER = {"aten::view", "aten::flatten", "aten::reshape", "aten::t", "aten::transpose", "aten::expand",
         "aten::as_strided", "aten::detach", "aten::empty", "aten::empty_like", "aten::zeros",
         "aten::select", "aten::slice", "aten::unsqueeze", "aten::squeeze", "aten::permute",
         "aten::contiguous", "aten::lift_fresh", "aten::alias",
         "torch::autograd::AccumulateGrad", "AccumulateGrad", "ViewBackward0", "TBackward0",
         "ReshapeAliasBackward0", "UnsafeViewBackward0", "ExpandBackward0"}


def conv_kind(input_shape, weight_shape) -> str:
    """dense, depthwise or pointwise, from the input's channels and the weight's shape (groups =
    C_in / weight dim 1)."""
    c_in = input_shape[1] if len(input_shape) == 4 else 0
    if len(weight_shape) == 4 and weight_shape[1] == 1 and c_in > 1:
        return "depthwise"
    if len(weight_shape) == 4 and weight_shape[2] == 1 and weight_shape[3] == 1:
        return "pointwise"
    return "dense"


def forward_group(e):
    """Group of a top-level forward operator, and for convolutions its kind."""
    name = e.name
    if name in CONV_FWD:
        shapes = e.input_shapes
        return "conv", conv_kind(shapes[0], shapes[1])
    if name in BN_FWD:
        return "BatchNorm (fwd+bwd)", None
    if name in POOL_FWD:
        return "pooling (fwd+bwd)", None
    if name in LINEAR_LOSS_FWD:
        return "linear / loss", None
    if name.startswith("Optimizer."):
        return "optimizer", None
    if name in OTHER:
        return "other", None
    if name.startswith("aten::"):
        return "element-wise / activations", None
    return "other", None


def backward_group(e, by_seq):
    """Group of a top-level autograd event (`autograd::engine::evaluate_function: XBackward`)."""
    node = e.name.split(": ", 1)[-1]
    g = by_seq.get(e.sequence_nr)
    if g is not None:
        return g
    if node in OTHER:
        return "other", None
    if node.startswith("ConvolutionBackward"):
        # No forward seen (should not happen): shapes of the backward op inside.
        for c in walk(e):
            if c.name == "aten::convolution_backward":
                return "conv", conv_kind(c.input_shapes[1], c.input_shapes[2])
        return "conv", "dense"
    return "element-wise / activations", None


def walk(e):
    yield e
    for c in e.cpu_children:
        yield from walk(c)


def onednn_conv_split(step) -> dict:
    """oneDNN's own time per (conv kind, pass) over one step: {(kind, 'backward_data'): ms, ...},
    from its verbose log (written to fd 1, captured through a temporary file)."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as f:
        os.dup2(f.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                step()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        f.seek(0)
        lines = f.read().splitlines()
    out = collections.defaultdict(float)
    desc = re.compile(r"(?:g(\d+))?mb\d+_ic(\d+)oc(\d+)_.*?kh(\d+).*?kw(\d+)")
    for line in lines:
        p = line.split(",")
        if "exec" not in p or "convolution" not in p:
            continue
        try:
            ms = float(p[-1])
        except ValueError:
            continue
        prop = next((f for f in p if f in ("forward_training", "forward_inference", "backward_data",
                                            "backward_weights", "backward")), None)
        m = next((desc.search(f) for f in p if desc.search(f)), None)
        if prop is None or m is None:
            continue
        g, ic, _oc, kh, kw = (int(v) if v else 1 for v in m.groups())
        kind = "depthwise" if g > 1 and g == ic else "pointwise" if kh == 1 and kw == 1 else "dense"
        out[(kind, prop)] += ms
    return out


def profile_step(step, steps: int):
    """Per-group milliseconds per step and the profiled step's wall time (ms)."""
    from torch.profiler import ProfilerActivity, profile

    # One profiled step thrown away first: the profiler's first use pays its start-up.
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall_ms = (time.perf_counter() - t0) * 1000 / steps
    events = prof.events()
    main = collections.Counter(e.thread for e in events if e.cpu_parent is None).most_common(1)[0][0]
    tops = [e for e in events if e.cpu_parent is None and e.thread == main]
    # Forward ops first: every sequence number inside a top-level forward op maps to its group.
    by_seq = {}
    ms = collections.defaultdict(float)
    conv = collections.defaultdict(float)  # (kind, "fwd" | "bwd") -> ms
    for e in tops:
        if e.name.startswith("autograd::engine::evaluate_function"):
            continue
        g = forward_group(e)
        for c in walk(e):
            if c.sequence_nr is not None and c.sequence_nr >= 0:
                by_seq.setdefault(c.sequence_nr, g)
        t = e.cpu_time_total / 1000 / steps
        if g[0] == "conv":
            conv[(g[1], "fwd")] += t
        else:
            ms[g[0]] += t
    for e in tops:
        if not e.name.startswith("autograd::engine::evaluate_function"):
            continue
        g = backward_group(e, by_seq)
        t = e.cpu_time_total / 1000 / steps
        if g[0] == "conv":
            conv[(g[1], "bwd")] += t
        else:
            ms[g[0]] += t
    split = onednn_conv_split(step)
    ms["dense conv forward"] += conv[("dense", "fwd")]
    data, weights = split[("dense", "backward_data")], split[("dense", "backward_weights")]
    frac = data / (data + weights) if data + weights > 0 else 0.5
    ms["dense conv backward-data"] += conv[("dense", "bwd")] * frac
    ms["dense conv backward-filter"] += conv[("dense", "bwd")] * (1 - frac)
    ms["depthwise conv (fwd+bwd)"] += conv[("depthwise", "fwd")] + conv[("depthwise", "bwd")]
    ms["1x1 conv (fwd+bwd)"] += conv[("pointwise", "fwd")] + conv[("pointwise", "bwd")]
    ms["other"] += wall_ms - sum(ms.values())
    sub = {
        "depthwise conv forward": conv[("depthwise", "fwd")],
        "depthwise conv backward (data+filter)": conv[("depthwise", "bwd")],
        "1x1 conv forward": conv[("pointwise", "fwd")],
    }
    pdata, pweights = split[("pointwise", "backward_data")], split[("pointwise", "backward_weights")]
    pfrac = pdata / (pdata + pweights) if pdata + pweights > 0 else 0.5
    sub["1x1 conv backward-data"] = conv[("pointwise", "bwd")] * pfrac
    sub["1x1 conv backward-filter"] = conv[("pointwise", "bwd")] * (1 - pfrac)
    return ms, sub, wall_ms


def print_profile(label: str, ms, sub, wall_ms, steps: int, unprofiled_ms: float):
    print(f"profile {label}: per step, mean of {steps} profiled steps "
          f"({wall_ms:.1f} ms/step profiled, {unprofiled_ms:.1f} unprofiled)")
    print(f"  {'op kind':<44} {'ms':>9} {'share':>7}")
    children = {
        "depthwise conv (fwd+bwd)": ["depthwise conv forward", "depthwise conv backward (data+filter)"],
        "1x1 conv (fwd+bwd)": ["1x1 conv forward", "1x1 conv backward-data", "1x1 conv backward-filter"],
    }
    for g in GROUPS:
        print(f"  {g:<44} {ms[g]:>9.2f} {100 * ms[g] / wall_ms:>6.1f}%")
        if ms[g] > 0:
            for c in children.get(g, []):
                print(f"  {'  ' + c:<44} {sub[c]:>9.2f} {100 * sub[c] / wall_ms:>6.1f}%")
    rest = ms["element-wise / activations"] + ms["linear / loss"] + ms["other"]
    print(f"  {'element-wise, linear/loss, other (rest)':<44} {rest:>9.2f} {100 * rest / wall_ms:>6.1f}%")
    print(f"  {'step':<44} {wall_ms:>9.2f} {100.0:>6.1f}%")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(MODELS), required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batch", type=int, default=None, help="default: issue 22's batch for the model")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="per-op-kind breakdown (see above)")
    ap.add_argument("--profile-steps", type=int, default=3)
    args = ap.parse_args()
    if min(args.steps, args.threads, args.profile_steps) < 1 or args.warmup < 0 or min(args.sizes) < 32:
        ap.error("--steps, --threads and --profile-steps must be >= 1, --warmup >= 0, sizes >= 32")
    batch = args.batch or DEFAULT_BATCH[args.model]
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__} ({MODELS[args.model] or 'meso4_torch.Meso4'}), {torch.get_num_threads()} "
          f"threads, batch {batch}, {args.steps} timed steps after {args.warmup} warm-up")
    for size in args.sizes:
        model = build(args.model, size)
        n_params = sum(p.numel() for p in model.parameters())
        step = erm_step(model, size, batch)
        elapsed = timed(step, args.steps, args.warmup)
        ips = batch * args.steps / elapsed
        label = f"{args.model} train {size}px"
        print(f"{label}: {ips:.1f} img/s ({elapsed / args.steps * 1000:.1f} ms/step), {n_params} parameters",
              flush=True)
        if args.profile:
            ms, sub, wall_ms = profile_step(step, args.profile_steps)
            print_profile(label, ms, sub, wall_ms, args.profile_steps, elapsed / args.steps * 1000)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
