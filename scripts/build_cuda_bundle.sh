#!/usr/bin/env bash
# Builds the CUDA binaries that issue 17's device check (benches/reference/gpu_check.sh) runs,
# strips them and packs them into cuda-bundle/bundle.tar.xz (git-ignored; carry `cuda-bundle` to
# the GPU machine, where benches/reference/cuda_env.sh unpacks it). Stripped, each binary is
# ~50 MB (candle's embedded PTX); xz brings the four to under 15 MB, within the device tool's
# 64 MiB.
#   cuda_ops, cuda        detectors' GPU test binaries (tests/cuda_ops.rs, tests/cuda.rs)
#   gpu_train_step        the dfbench side of gpu_side_by_side.sh (detectors/examples)
#   bench                 the CLI (harness), for `bench run ... --device cuda` on the GPU machine
# Needs the CUDA toolkit (nvcc, NVRTC, cuBLAS, cuDNN 9) as docs/cuda.md describes, e.g.
# `source /path/to/cudatk/env.sh`. Builds into $CARGO_TARGET_DIR (default target-cuda/, so the
# CPU build in target/ stays incremental) for CUDA_COMPUTE_CAP (default 90 = H100/H200).
set -euo pipefail
cd "$(dirname "$0")/.."
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-cuda}
command -v nvcc >/dev/null || { echo "build_cuda_bundle.sh: nvcc not on PATH (docs/cuda.md)" >&2; exit 2; }
msgs=$(mktemp)
# One cargo invocation: the same feature unification as the background `--tests` build, so
# candle-kernels' 13-minute nvcc step is not redone (docs/cuda.md).
cargo build --release -p detectors -p harness --features detectors/cuda,harness/cuda \
  --test cuda_ops --test cuda --example gpu_train_step --bin bench --message-format=json > "$msgs"
rm -rf cuda-bundle && mkdir -p cuda-bundle/bin
python3 - "$msgs" <<'PY'
import json, shutil, subprocess, sys
want = {"cuda_ops", "cuda", "gpu_train_step", "bench"}
found = {}
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in want:
        found[m["target"]["name"]] = m["executable"]
missing = want - set(found)
if missing:
    sys.exit(f"build_cuda_bundle.sh: no executable for {sorted(missing)}")
for name, exe in sorted(found.items()):
    dst = f"cuda-bundle/bin/{name}"
    shutil.copy2(exe, dst)
    subprocess.run(["strip", dst], check=True)
    print(f"{dst} <- {exe}")
PY
rm -f "$msgs"
git rev-parse HEAD > cuda-bundle/bin/BUILD_COMMIT 2>/dev/null || true
git status --short --untracked-files=no | sed 's/^/dirty: /' >> cuda-bundle/bin/BUILD_COMMIT || true
tar -C cuda-bundle/bin -cf - . | xz -T0 -9 > cuda-bundle/bundle.tar.xz
rm -rf cuda-bundle/bin
du -sh cuda-bundle/bundle.tar.xz
