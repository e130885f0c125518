#!/usr/bin/env bash
# Training-step throughput on one GPU, dfbench against PyTorch + timm, in one call: for each
# model and method, 3 warm-up + 10 timed steps of each (issue 17's list), img/s and the ratio.
# Writes benches/results/gpu.csv (under $OUT when the device tool runs it) with columns
#   gpu, model, px, batch, method, precision, dfbench_img_s, torch_img_s, ratio
# Never run by CI or the build; needs a GPU, the machine's torch and timm, and the dfbench side:
# $DFB_BIN (default: gpu_train_step of the bundle scripts/build_cuda_bundle.sh makes, see
# cuda_env.sh).
#
#   benches/reference/gpu_side_by_side.sh [--quick]      (--quick: 1 warm-up + 3 steps)
#
# Each run is limited by $CASE_TIMEOUT seconds (default 90); a run that fails or times out is
# recorded as "fail"/"timeout" in the CSV rather than stopping the others. Cases not started
# before $DFB_DEADLINE (epoch seconds, optional) are recorded as "skipped".
set -uo pipefail
cd "$(dirname "$0")/../.."
. benches/reference/cuda_env.sh
bin=${DFB_BIN:-$DFB_BUNDLE/gpu_train_step}
warm=3 steps=10
[ "${1:-}" = "--quick" ] && warm=1 steps=3
limit=${CASE_TIMEOUT:-90}
out_dir=${OUT:+$OUT/}benches/results
mkdir -p "$out_dir"
csv=$out_dir/gpu.csv
[ -x "$bin" ] || { echo "gpu_side_by_side.sh: $bin not found; run scripts/build_cuda_bundle.sh" >&2; exit 2; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
echo "gpu: ${gpu:-unknown}; torch $(python3 -c 'import torch,timm;print(torch.__version__, "cudnn", torch.backends.cudnn.version(), "timm", timm.__version__)' 2>&1 | tail -1)"
echo "gpu,model,px,batch,method,precision,dfbench_img_s,torch_img_s,ratio" > "$csv"
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2" | head -1; }
run_case() {  # model px batch method
  local m=$1 px=$2 b=$3 meth=$4 d t r
  if [ -n "${DFB_DEADLINE:-}" ] && [ "$(date +%s)" -ge "$DFB_DEADLINE" ]; then
    echo "\"$gpu\",$m,$px,$b,$meth,fp32+tf32,skipped,skipped," >> "$csv"
    echo "  -> $m $meth: skipped (past DFB_DEADLINE)"
    return
  fi
  local args=(--model "$m" --px "$px" --batch "$b" --method "$meth" --warmup "$warm" --steps "$steps")
  d=$(timeout "$limit" "$bin" "${args[@]}" 2>/tmp/dfb_err.txt); local rc=$?
  echo "${d:-dfbench $m $meth rc=$rc: $(tail -2 /tmp/dfb_err.txt | tr '\n' ' ')}"
  t=$(timeout "$limit" python3 -W ignore benches/reference/gpu_torch_step.py "${args[@]}" 2>/tmp/dfb_terr.txt); local rt=$?
  echo "${t:-torch $m $meth rc=$rt: $(tail -2 /tmp/dfb_terr.txt | tr '\n' ' ')}"
  local di ti
  di=$(field img_s "$d"); ti=$(field img_s "$t")
  [ -z "$di" ] && di=$([ $rc = 124 ] && echo timeout || echo fail)
  [ -z "$ti" ] && ti=$([ $rt = 124 ] && echo timeout || echo fail)
  r=$(python3 -c "import sys
try: print(f'{float(sys.argv[1])/float(sys.argv[2]):.3f}')
except Exception: print('')" "$di" "$ti")
  echo "\"$gpu\",$m,$px,$b,$meth,fp32+tf32,$di,$ti,$r" >> "$csv"
  echo "  -> $m ${px}px b$b $meth: dfbench $di img/s, torch $ti img/s, ratio ${r:-n/a}"
}
for meth in erm-o+s cs-dfd; do
  run_case efficientnet-b4 256 16 "$meth"
  run_case xception 256 16 "$meth"
  run_case resnet34 256 16 "$meth"
  run_case vit-b16 224 16 "$meth"
  run_case meso4 256 16 "$meth"
done
echo "wrote $csv"
cat "$csv"
