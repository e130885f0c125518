#!/usr/bin/env bash
# Issue 17's prepared device check, one call on a GPU machine (<= 8 minutes):
#   1. the GPU, driver, torch / cuDNN versions;
#   2. the CUDA op tests (detectors/tests/cuda_ops.rs) and the CPU-vs-CUDA model tests
#      (detectors/tests/cuda.rs), from the stripped binaries in cuda-bundle/;
#   3. benches/reference/gpu_side_by_side.sh (writes benches/results/gpu.csv);
#   4. if time is left, a per-op profile of EfficientNet-B4 and Xception steps, and
#      EfficientNet-B4 for 200 steps with the device memory every 10 steps.
# Logs go to $OUT/gpu_check/ (or /tmp/gpu_check). Build the bundle first, on any machine with the
# toolkit: scripts/build_cuda_bundle.sh; carry `cuda-bundle` (bundle.tar.xz, ~20 MB) to the GPU
# machine.
#
#   benches/reference/gpu_check.sh [--quick]     (--quick: side by side with 1 + 3 steps)
set -uo pipefail
cd "$(dirname "$0")/../.."
logs=${OUT:-/tmp}/gpu_check
mkdir -p "$logs"
. benches/reference/cuda_env.sh
B=$DFB_BUNDLE
start=$(date +%s)
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c 'import torch, timm; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "timm", timm.__version__)'
  ldd $B/cuda_ops | grep -E 'cudnn|cublas|nvrtc|cuda|curand' || true
} 2>&1 | tee "$logs/env.txt"
for t in cuda_ops cuda; do
  echo "== $t tests ($(( $(date +%s) - start )) s)"
  timeout 150 "$B/$t" --nocapture --test-threads=1 > "$logs/$t.log" 2>&1
  echo "exit $? (log $logs/$t.log)"
  grep -E '^test |test result|panicked|fraction of the bound|rel diff' "$logs/$t.log" | tail -60
done
echo "== side by side ($(( $(date +%s) - start )) s)"
# Cases not started by 360 s are skipped, so that the whole check stays within ~8 minutes.
DFB_DEADLINE=$((start + 360)) CASE_TIMEOUT=${CASE_TIMEOUT:-60} benches/reference/gpu_side_by_side.sh "$@" 2>&1 | tee "$logs/side_by_side.log"
# Which op holds a step back: the custom CUDA ops timed one by one (synchronised), the rest
# lumped together.
for m in efficientnet-b4 xception; do
  if [ $(( $(date +%s) - start )) -lt 400 ]; then
    echo "== profile $m ($(( $(date +%s) - start )) s)"
    timeout 45 $B/gpu_train_step --model $m --px 256 --batch 16 --method erm-o+s --warmup 2 --steps 5 \
      --profile 2>&1 | tee "$logs/profile_$m.log"
  fi
done
# Issue 17's memory target: EfficientNet-B4 ERM O+S for 200 steps, memory after every 10.
if [ $(( $(date +%s) - start )) -lt 410 ]; then
  echo "== memory over 200 steps ($(( $(date +%s) - start )) s)"
  timeout 60 $B/gpu_train_step --model efficientnet-b4 --px 256 --batch 16 --method erm-o+s \
    --warmup 3 --steps 200 --mem 2>&1 | tee "$logs/memory.log"
else
  echo "== memory run skipped: over 410 s used"
fi
echo "== done in $(( $(date +%s) - start )) s"
