#!/usr/bin/env bash
# Issue #18's GPU check in one call (never run by CI or the build): the device-vs-host method
# tests, then step timings (3 untimed + 10 timed steps per case) of ERM O+S, CS-DFD and RoGA on the
# device path, the pre-#18 host path for a before/after, and bf16 against f32. Every figure goes
# under OUT; each command has its own time limit, so a slow case (EfficientNet-B4 without issue
# #17's depthwise/BatchNorm CUDA ops) costs its limit, not the whole call; the limits add up to
# 7.5 minutes.
#
#   benches/reference/gpu_methods_check.sh BIN_DIR OUT [B4_LIMIT_S]
#
# BIN_DIR holds three binaries built on the build machine with `--features cuda` (docs/cuda.md),
# copied from target/release/deps/ and renamed: methods_device, precision_bf16 (the test
# binaries of `cargo test --release --features cuda -p detectors --test methods_device --test
# precision_bf16 --no-run`) and methods_step (`cargo bench --features cuda -p harness --bench
# methods_step --no-run`). The GPU machine needs libcuda and the CUDA 13 libraries on
# LD_LIBRARY_PATH (docs/cuda.md). OUT gets summary.txt, the tests' output and gpu_steps.csv.
set -uo pipefail
bin=${1:?BIN_DIR}
out=${2:?OUT}
b4_limit=${3:-120}
mkdir -p "$out"
summary="$out/summary.txt"
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u '+%F %T UTC'; } > "$summary" 2>&1

run() {  # run LIMIT_S NAME COMMAND...: output to OUT/NAME.txt, exit status to the summary
  local limit=$1 name=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" > "$out/$name.txt" 2>&1
  echo "$name: exit $? in $((SECONDS - t0)) s" >> "$summary"
}

# The device path against the host path and the spec's values, every method kind (a missing GPU
# fails these binaries).
run 90 methods_device "$bin/methods_device" --test-threads 1 --nocapture
run 45 precision_bf16 "$bin/precision_bf16" --test-threads 1 --nocapture

step() {  # step LIMIT_S NAME ARGS...: timing rows appended to gpu_steps.csv
  local limit=$1 name=$2
  shift 2
  run "$limit" "$name" "$bin/methods_step" --device cuda:0 --warmup 3 --steps 10 \
    --methods erm_os,cs_dfd,roga_4dom --csv "$out/gpu_steps.csv" "$@"
}
# Small and quick first, so that some ratios arrive whatever happens below.
step 60 steps_meso4_128 --backbone meso4 --size 128 --batch 32 --precision f32,bf16
step 45 steps_meso4_128_host --backbone meso4 --size 128 --batch 32 --precision f32 --grad-path host
step 90 steps_resnet18_256 --backbone resnet18 --size 256 --batch 16 --precision f32,bf16
# The targets' configuration (EfficientNet-B4, 256 px, batch 16 per stream).
step "$b4_limit" steps_b4_256 --backbone efficientnet-pytorch-b4 --size 256 --batch 16 --precision f32,bf16
cat "$summary"
