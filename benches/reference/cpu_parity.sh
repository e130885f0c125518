#!/usr/bin/env bash
# Issue 22's table: training throughput of Meso4, EfficientNet-B4, ResNet-34 and Xception at 128
# and 256 px, dfbench (`benches/meso4_train.rs --backbone NAME`) against PyTorch + timm
# (`cpu_backbones_torch.py --model NAME`), 2 threads each, run back to back per (model, size) and
# repeated ROUNDS times so that both sides see the same machine. Prints the table with the range
# over the rounds of each side's images/s and of the per-round ratio dfbench / PyTorch, and the load
# average before and after (the figures mean something only on an otherwise idle machine: PyTorch's
# OpenMP threads spin, and lose badly when the cores are shared). Never run by CI or the build.
#
#   benches/reference/cpu_parity.sh [ROUNDS] [STEPS]        (defaults: 3 rounds, 8 steps)
#
# STEPS timed steps for Meso4 (after 3 warm-up ones) and for the large models at 128 px (after 2);
# the large models at 256 px take max(2, STEPS / 4) timed steps after 1 warm-up (a step there is
# seconds long). With the defaults the whole run should take about 12 minutes on the idle 2-core
# machine (estimated from the step times; one round of 3 steps took 8 minutes under load 4).
#
# The environment passes through: on a shared machine `OMP_WAIT_POLICY=PASSIVE` stops PyTorch's
# threads from spinning (how BENCHMARKS.md's under-load runs were taken; not the target figures).
#
# Needs .venv with torch and timm:
#   python3 -m venv .venv && .venv/bin/pip install torch timm
# Builds the Rust side with `cargo bench --no-run` first.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-3}
steps=${2:-8}
threads=2
py=.venv/bin/python
[[ "$rounds" =~ ^[1-9][0-9]*$ && "$steps" =~ ^[1-9][0-9]*$ ]] || {
  echo "cpu_parity.sh: ROUNDS and STEPS must be positive integers, got '$rounds' '$steps'" >&2
  exit 2
}
[ -x "$py" ] || { echo "cpu_parity.sh: $py not found; python3 -m venv .venv && .venv/bin/pip install torch timm" >&2; exit 2; }
"$py" -c "import torch, timm" 2>/dev/null || { echo "cpu_parity.sh: $py lacks torch or timm; .venv/bin/pip install torch timm" >&2; exit 2; }
cargo bench --no-run -q -p harness --bench meso4_train 2>/dev/null || cargo bench --no-run -p harness --bench meso4_train
big_steps=$(( steps / 4 > 2 ? steps / 4 : 2 ))
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %T') UTC"
echo "torch $("$py" -c 'import torch, timm; print(torch.__version__, "timm", timm.__version__)'), $threads threads each side"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load before: $load_before"
# model:batch (CPU_PARITY_CONFIGS narrows it, e.g. "resnet34:16", for a quick check)
configs=${CPU_PARITY_CONFIGS:-"meso4:32 efficientnet-b4:8 resnet34:16 xception:8"}
for r in $(seq 1 "$rounds"); do
  echo "== round $r"
  for cfg in $configs; do
    model=${cfg%:*}
    batch=${cfg#*:}
    for size in 128 256; do
      if [ "$model" = meso4 ]; then n=$steps; w=3; elif [ "$size" -gt 128 ]; then n=$big_steps; w=1; else n=$steps; w=2; fi
      ours=$(RAYON_NUM_THREADS=$threads cargo bench -q -p harness --bench meso4_train -- --backbone "$model" \
        --batch "$batch" --sizes "$size" --steps "$n" --warmup "$w" --threads "$threads" | grep ' train ') ||
        { echo "cpu_parity.sh: dfbench failed on $model at $size px (above)" >&2; exit 1; }
      theirs=$(OMP_NUM_THREADS=$threads "$py" -W ignore benches/reference/cpu_backbones_torch.py --model "$model" \
        --batch "$batch" --sizes "$size" --steps "$n" --warmup "$w" --threads "$threads" | grep ' train ') ||
        { echo "cpu_parity.sh: PyTorch failed on $model at $size px (above)" >&2; exit 1; }
      echo "  dfbench  $ours"
      echo "  pytorch  $theirs"
      printf '%s %s %s %s %s\n' "$r" dfbench "$model" "$batch" "$ours" >>"$log"
      printf '%s %s %s %s %s\n' "$r" pytorch "$model" "$batch" "$theirs" >>"$log"
    done
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
"$py" - "$log" "$load_before" "$load_after" <<'EOF'
import re, sys
from collections import defaultdict

names = {"meso4": "Meso4", "efficientnet-b4": "EfficientNet-B4", "resnet34": "ResNet-34", "xception": "Xception"}
pat = re.compile(r"^(\d+) (dfbench|pytorch) (\S+) (\d+) \S+ train (\d+)px: ([\d.]+) img/s .*?(\d+) parameters")
ips = defaultdict(dict)  # (model, px, batch) -> {(round, side): img/s}
params = defaultdict(dict)
for line in open(sys.argv[1]):
    m = pat.match(line)
    if not m:
        sys.exit(f"cpu_parity.sh: a run printed no throughput line: {line.strip()!r}")
    r, side, model, batch, px, v, n = m.groups()
    key = (model, int(px), int(batch))
    ips[key][(int(r), side)] = float(v)
    params[key][side] = int(n)

def rng(vals, fmt):
    lo, hi = fmt.format(min(vals)), fmt.format(max(vals))
    return lo if lo == hi else f"{lo}-{hi}"

print()
print("| model | px | batch | dfbench img/s | PyTorch img/s | ratio |")
print("|---|---|---|---|---|---|")
for (model, px, batch), d in ips.items():
    rounds = sorted({r for r, _ in d})
    ours = [d[(r, "dfbench")] for r in rounds]
    theirs = [d[(r, "pytorch")] for r in rounds]
    ratio = [a / b for a, b in zip(ours, theirs)]
    fmt = "{:.0f}" if min(ours + theirs) >= 50 else "{:.1f}"
    print(f"| {names[model]} | {px} | {batch} | {rng(ours, fmt)} | {rng(theirs, fmt)} | {rng(ratio, '{:.2f}')} |")
mismatch = [(k, p) for k, p in params.items() if p.get("dfbench") != p.get("pytorch")]
for (model, px, _), p in mismatch:
    print(f"parameter counts differ for {model} at {px} px: dfbench {p.get('dfbench')}, PyTorch {p.get('pytorch')}")
print()
print(f"load average before: {sys.argv[2]}, after: {sys.argv[3]}")
EOF
