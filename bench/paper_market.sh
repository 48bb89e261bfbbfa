#!/usr/bin/env bash
# The paper's setting on Market-1501 (sec. 4, "Implementation Details"), for a machine with a GPU:
# IDE ResNet50 at 288 x 144 and PCB at 384 x 128, each as IDE alone and as CASN (ide,ia,sa); 40 epochs,
# batch 16 pairs, SGD momentum 0.9, lr 0.03, x0.1 at epoch 30; then `casn eval` with the feature, the
# paper's (w = 1, K = all) and the validated ranking (--val-ids 100: w and K chosen on 100 held-out
# training identities, never the test split).
#
#     bash bench/paper_market.sh /path/to/Market-1501 runs/paper     # RUNS="resnet50:ide,ia,sa" to pick
#
# Every run resumes from its last completed epoch when started again (a device call that ends mid-run
# loses at most the epoch in progress), so the same command can be repeated until every line says
# "done". ImageNet ResNet50 weights: torchvision's download when online, else
# PRETRAINED=/path/to/resnet50-0676ba61.pth. Results: OUT/<backbone>_<losses>/eval.json and one JSON
# line per finished run on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bash bench/paper_market.sh MARKET_ROOT OUT_DIR}
OUT=${2:?usage: bash bench/paper_market.sh MARKET_ROOT OUT_DIR}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
RUNS=${RUNS:-"resnet50:ide resnet50:ide,ia,sa pcb:ide pcb:ide,ia,sa"}
for run in $RUNS; do
  backbone=${run%%:*}; losses=${run#*:}
  dir="$OUT/${backbone}_${losses//,/-}"
  if [ -f "$dir/eval.json" ]; then echo "{\"run\": \"$dir\", \"status\": \"done\"}"; continue; fi
  resume=(); [ -f "$dir/last.pt" ] && resume=(--resume)
  # input size: the paper's per backbone (train's default: 288 x 144, PCB 384 x 128)
  "$PY" -m casn_core train --data "$DATA" --out "$dir" --backbone "$backbone" --losses "$losses" \
      --epochs 40 --batch-size 16 --lr 0.03 --pretrained "${PRETRAINED:-imagenet}" --device cuda \
      --amp bf16 --channels-last --workers 8 --val-ids 100 --seed 0 "${resume[@]}"
  "$PY" -m casn_core eval --checkpoint "$dir/last.pt" --data "$DATA" --device cuda \
      --store-dir "$OUT/store" --json "$dir/eval.json" > "$dir/eval.txt"
  "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print(json.dumps({"run": sys.argv[2], **{k: {m: round(100 * r[k][m], 2) for m in ("rank1", "mAP")}
                  for k in ("feature", "paper", "casn") if k in r}}))' "$dir/eval.json" "$dir"
done
