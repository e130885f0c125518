#!/usr/bin/env bash
# Issue 22, item 3: SBI synthesis per core, dfbench (`benches/sbi_speed.rs`: `data::sbi::self_blend`)
# against the original SBI code (mapooon/SelfBlendedImages: `self_blending` with its source
# transforms, then its post transforms on the fake and the real twin; albumentations 1.4.24 and
# OpenCV), on the same face crop with 81 landmarks, one thread and one core each (`taskset -c CPU`,
# RAYON/OMP/OPENBLAS/MKL threads 1, `cv2.setNumThreads(1)`), run back to back per size and
# repeated ROUNDS times, alternating which side goes first. Prints every run, then per size the
# range over the rounds of each side's img/s and of the per-round ratio dfbench / original, and
# the load average before and after (meaningful only on an otherwise idle machine).
#
#   benches/reference/sbi_original.sh SBI_REPO [ROUNDS] [SECONDS]     (defaults: 5 rounds, 3 s)
#
# SBI_REPO: a checkout of https://github.com/mapooon/SelfBlendedImages, or its bare git directory
# (then HEAD's src/ is extracted to a temporary directory). Its code is run, never copied here.
# SIZES (environment, default "256 380") picks the crop sizes; SBI_CPU (default 0) the core.
#
# Needs a Python with albumentations 1.4.24; made on first use in .venv-sbi (git-ignored):
#   python3 -m venv .venv-sbi && .venv-sbi/bin/pip install albumentations==1.4.24 \
#     opencv-python-headless numpy scipy scikit-image pandas pillow
# Builds the Rust side with `cargo bench --no-run` first.
set -euo pipefail
cd "$(dirname "$0")/../.."
usage="usage: benches/reference/sbi_original.sh SBI_REPO [ROUNDS] [SECONDS]"
[ $# -ge 1 ] && [ $# -le 3 ] || { echo "$usage" >&2; exit 2; }
repo=$1
rounds=${2:-5}
secs=${3:-3}
cpu=${SBI_CPU:-0}
sizes=${SIZES:-"256 380"}
[[ "$rounds" =~ ^[1-9][0-9]*$ ]] || { echo "sbi_original.sh: ROUNDS must be a positive integer, got '$rounds'" >&2; exit 2; }
{ [[ "$secs" =~ ^[0-9]+(\.[0-9]+)?$ ]] && [[ "$secs" =~ [1-9] ]]; } ||
  { echo "sbi_original.sh: SECONDS must be a positive number, got '$secs'" >&2; exit 2; }
[[ "$cpu" =~ ^[0-9]+$ ]] || { echo "sbi_original.sh: SBI_CPU must be a core number, got '$cpu'" >&2; exit 2; }
for s in $sizes; do
  [[ "$s" =~ ^[1-9][0-9]*$ ]] || { echo "sbi_original.sh: SIZES must be positive integers, got '$sizes'" >&2; exit 2; }
done
command -v taskset >/dev/null || { echo "sbi_original.sh: taskset (util-linux) not found" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -f "$repo/src/utils/sbi.py" ]; then
  src=$repo
elif git --git-dir="$repo" cat-file -e HEAD:src/utils/sbi.py 2>/dev/null; then
  git --git-dir="$repo" archive HEAD src | tar -x -C "$tmp"
  src=$tmp
else
  echo "sbi_original.sh: '$repo' is neither a checkout nor a git directory of mapooon/SelfBlendedImages (no src/utils/sbi.py)" >&2
  exit 2
fi

py=.venv-sbi/bin/python
if ! { [ -x "$py" ] && "$py" -c "import albumentations, cv2, scipy, skimage, pandas, PIL" 2>/dev/null; }; then
  echo "sbi_original.sh: setting up .venv-sbi (albumentations 1.4.24, OpenCV, ...)" >&2
  python3 -m venv .venv-sbi
  .venv-sbi/bin/pip install -q "albumentations==1.4.24" opencv-python-headless numpy scipy scikit-image pandas pillow ||
    { echo "sbi_original.sh: pip install into .venv-sbi failed (above)" >&2; exit 1; }
fi
export NO_ALBUMENTATIONS_UPDATE=1 RAYON_NUM_THREADS=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1

cargo bench --no-run -q -p harness --bench sbi_speed 2>/dev/null || cargo bench --no-run -p harness --bench sbi_speed
sizes_csv=$(echo $sizes | tr ' ' ',')
cargo bench -q -p harness --bench sbi_speed -- --write-input "$tmp/input" --sizes "$sizes_csv"

echo "machine: $(nproc --all) cpus, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(date -u '+%F %T') UTC, core $cpu"
echo "original: $("$py" -c 'import albumentations, cv2, numpy; print("albumentations", albumentations.__version__, "opencv", cv2.__version__, "numpy", numpy.__version__)' 2>/dev/null), SBI $(git --git-dir="$repo" rev-parse --short HEAD 2>/dev/null || git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '(commit unknown)')"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load before: $load_before"
log="$tmp/log"
ours() {
  taskset -c "$cpu" cargo bench -q -p harness --bench sbi_speed -- --sizes "$1" --seconds "$secs" | grep '^dfbench sbi ' ||
    { echo "sbi_original.sh: dfbench failed at $1 px (above)" >&2; exit 1; }
}
theirs() {
  taskset -c "$cpu" "$py" -W ignore benches/reference/sbi_original.py --repo "$src" --input "$tmp/input" \
    --sizes "$1" --seconds "$secs" | grep '^original sbi ' ||
    { echo "sbi_original.sh: the original SBI code failed at $1 px (above)" >&2; exit 1; }
}
for r in $(seq 1 "$rounds"); do
  echo "== round $r"
  for s in $sizes; do
    if [ $((r % 2)) -eq 1 ]; then a=$(ours "$s"); b=$(theirs "$s"); else b=$(theirs "$s"); a=$(ours "$s"); fi
    echo "  $a"
    echo "  $b"
    printf '%s %s\n%s %s\n' "$r" "$a" "$r" "$b" >>"$log"
  done
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
"$py" - "$log" "$load_before" "$load_after" <<'EOF'
import re, sys
from collections import defaultdict

pat = re.compile(r"^(\d+) (dfbench|original) sbi (\d+)px: ([\d.]+) img/s")
ips = defaultdict(dict)
for line in open(sys.argv[1]):
    m = pat.match(line)
    if not m:
        sys.exit(f"sbi_original.sh: a run printed no throughput line: {line.strip()!r}")
    r, side, px, v = m.groups()
    ips[int(px)][(int(r), side)] = float(v)
rng = lambda v: f"{min(v):.1f}-{max(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"
print()
print("| px | dfbench img/s | original img/s | ratio |")
print("|---|---|---|---|")
for px in sorted(ips):
    d = ips[px]
    rounds = sorted({r for r, _ in d})
    ours = [d[(r, "dfbench")] for r in rounds]
    theirs = [d[(r, "original")] for r in rounds]
    ratio = [o / t for o, t in zip(ours, theirs)]
    print(f"| {px} | {rng(ours)} | {rng(theirs)} | {min(ratio):.2f}-{max(ratio):.2f} |")
print(f"\nload average before {sys.argv[2]}, after {sys.argv[3]}")
EOF
