"""Times the original SBI synthesis (mapooon/SelfBlendedImages, `SBI_Dataset.self_blending` with
its `get_source_transforms`, then the post transforms `get_transforms` on the fake and its real
twin, as `SBI_Dataset.__getitem__` does) on the input `benches/sbi_speed.rs --write-input` writes,
one thread. The code is imported from a checkout of that repository, never copied: its module
imports torch/torchvision only for the dataset base class and the loader, so light stand-ins for
those two are registered first. Face cropping and the final resize are left out, as on the
dfbench side.

  python sbi_original.py --repo PATH --input DIR [--sizes 256,380] [--seconds 3]

Prints `original sbi {size}px: {img/s} img/s ({ms} ms/img, {n} images)` per size.
"""
import argparse
import os
import random
import sys
import time
import types

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def stub_torch():
    """Just enough of torch/torchvision for `src/utils/sbi.py` to import (none of it runs)."""

    class Dataset:  # the base class of SBI_Dataset
        pass

    def module(name, **attrs):
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m
        return m

    torch = module("torch", manual_seed=lambda *_: None)
    torch.utils = module("torch.utils")
    torch.utils.data = module("torch.utils.data", Dataset=Dataset, IterableDataset=Dataset)
    torch.nn = module("torch.nn")
    module("torchvision", datasets=None, transforms=None, utils=None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", required=True, help="checkout of mapooon/SelfBlendedImages")
    ap.add_argument("--input", required=True, help="directory with face_{size}.png and landmarks_{size}.txt")
    ap.add_argument("--sizes", default="256,380")
    ap.add_argument("--seconds", type=float, default=3.0)
    a = ap.parse_args()
    src = os.path.join(a.repo, "src")
    if not os.path.isfile(os.path.join(src, "utils", "sbi.py")):
        sys.exit(f"sbi_original.py: {a.repo} has no src/utils/sbi.py; pass a checkout of mapooon/SelfBlendedImages")
    try:
        sizes = [int(s) for s in a.sizes.split(",")]
    except ValueError:
        sys.exit(f"sbi_original.py: --sizes: expected comma-separated integers, got {a.sizes!r}")

    import cv2
    import numpy as np
    from PIL import Image

    cv2.setNumThreads(1)
    stub_torch()
    sys.path.insert(0, src)
    import warnings

    warnings.filterwarnings("ignore")
    from utils.sbi import SBI_Dataset  # noqa: E402  (the original code)

    ds = SBI_Dataset.__new__(SBI_Dataset)  # skip __init__: it indexes FaceForensics++ on disk
    ds.transforms = ds.get_transforms()
    ds.source_transforms = ds.get_source_transforms()
    np.random.seed(0)
    random.seed(0)

    for size in sizes:
        png = os.path.join(a.input, f"face_{size}.png")
        txt = os.path.join(a.input, f"landmarks_{size}.txt")
        if not (os.path.isfile(png) and os.path.isfile(txt)):
            sys.exit(f"sbi_original.py: {png} or {txt} missing; write them with sbi_speed --write-input")
        img = np.array(Image.open(png).convert("RGB"))
        # dlib gives integer landmarks; cv2.fillConvexPoly wants int32 points.
        landmark = np.rint(np.loadtxt(txt)).astype(np.int32)
        if landmark.shape != (81, 2):
            sys.exit(f"sbi_original.py: {txt}: expected 81 rows of 'x y', got shape {landmark.shape}")

        def one():
            img_r, img_f, _mask = ds.self_blending(img.copy(), landmark.copy())
            t = ds.transforms(image=img_f.astype("uint8"), image1=img_r.astype("uint8"))
            return t["image"], t["image1"]

        def run(secs):
            t0 = time.perf_counter()
            n = 0
            while n == 0 or time.perf_counter() - t0 < secs:
                one()
                n += 1
            return n, time.perf_counter() - t0

        run(0.5)
        n, secs = run(a.seconds)
        print(f"original sbi {size}px: {n / secs:.1f} img/s ({1e3 * secs / n:.3f} ms/img, {n} images)", flush=True)


if __name__ == "__main__":
    main()
