#!/usr/bin/env bash
# Meso4 training throughput, dfbench against PyTorch, back to back in one session and repeated,
# so that both see the same (shared, noisy) machine. Same shapes, batch, steps, warm-up, threads
# and parameter count on both sides. Never run by CI or the build.
#
#   benches/reference/side_by_side.sh [ROUNDS] [STEPS]      (defaults: 2 rounds, 10 steps)
#
# Needs .venv with torch (see meso4_torch.py). Builds the Rust side with `cargo bench --no-run`.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-2}
steps=${2:-10}
threads=2
py=.venv/bin/python
[ -x "$py" ] || { echo "side_by_side.sh: $py not found; python3 -m venv .venv && .venv/bin/pip install torch" >&2; exit 2; }
cargo bench --no-run -p harness --bench meso4_train 2>/dev/null
echo "machine: $(nproc) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load: $(cut -d' ' -f1-3 /proc/loadavg), $(date -u '+%F %T') UTC"
for r in $(seq 1 "$rounds"); do
  echo "== round $r"
  RAYON_NUM_THREADS=$threads cargo bench -q -p harness --bench meso4_train -- \
    --sizes 128 256 --steps "$steps" --threads "$threads" 2>/dev/null
  OMP_NUM_THREADS=$threads "$py" -W ignore benches/reference/meso4_torch.py \
    --sizes 128 256 --steps "$steps" --threads "$threads"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
