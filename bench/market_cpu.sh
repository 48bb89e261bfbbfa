#!/usr/bin/env bash
# The CPU ablation on Market-1501: IDE and CASN (the paper's objective, eq. 6, with eq. 4 per pair)
# under one identical budget that fits two CPU cores, and ours on top of CASN, each evaluated on the
# full test split.
#
#     bash bench/market_cpu.sh /path/to/Market-1501 runs/market      # RUNS="ide,ia,sa" to pick one
#
# Budget (every run): mobilenet_v2 from ImageNet (the offline wheel), HEIGHT x WIDTH (default 256 x 128),
# EPOCHS (default 20) epochs of 6,468 pairs (12,936 images, one pass over the training images per epoch),
# batch 16 pairs, SGD momentum 0.9, lr 0.03, x0.1 after three quarters of the epochs, AMP (default: bf16
# autocast where the CPU has bf16 kernels, float32 where it has not: emulated bf16 was 7-15x slower),
# channels-last; 100 training identities held out to choose w and K (--val-ids). Each run resumes where
# it stopped (--save-every 40: a stopped process loses at most 40 steps), so the same command is repeated
# until every line says "done". The run "ours" continues the finished CASN run for one more epoch at the
# lr it ended with (0.003) with the options of ours that made d_a separate pairs on generated people
# (checkpoints/README.md): L_bce on weight 1, lambda2 = 1 on the consistency, negatives' d_a pushed above
# 0.5; then HEAD_STEPS (default 3000) steps of the BCE head alone on frozen features, and w and K chosen
# again. It is one epoch more than the other two: its rows say so.
# Evaluation: `casn eval` rows feature, paper (w = 1; K = all unless PAPER_TOPK bounds it, and the row
# says so) and tuned, with the pair signals; OUT/<run>/eval.json, one JSON line per run on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:?usage: bash bench/market_cpu.sh MARKET_ROOT OUT_DIR}
OUT=${2:?usage: bash bench/market_cpu.sh MARKET_ROOT OUT_DIR}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 OMP_WAIT_POLICY=PASSIVE
PY="${PYTHON:-$(command -v python3 || command -v python)}"
RUNS=${RUNS:-"ide,ia,sa ours ide"}
HEIGHT=${HEIGHT:-256} WIDTH=${WIDTH:-128} EPOCHS=${EPOCHS:-20} HEAD_STEPS=${HEAD_STEPS:-3000}
AMP=${AMP:-$("$PY" -c "from casn_core.engine.extraction import cpu_has_fast_bf16 as fast; print('bf16' if fast() else 'none')")}
paper=(); [ -n "${PAPER_TOPK:-}" ] && paper=(--paper-topk "$PAPER_TOPK")
common=(--data "$DATA" --backbone mobilenet_v2 --batch-size 16 --height "$HEIGHT" --width "$WIDTH"
        --pretrained imagenet --lr 0.03 --amp "$AMP" --channels-last --seed 0 --device cpu --val-ids 100
        --decode-cache "$OUT/decoded")
for run in $RUNS; do
  dir="$OUT/${run//,/-}"
  if [ -f "$dir/eval.json" ]; then echo "{\"run\": \"$dir\", \"status\": \"done\"}"; continue; fi
  resume=(); [ -f "$dir/last.pt" ] && resume=(--resume)
  if [ "$run" = ours ]; then
    "$PY" -m casn_core train "${common[@]}" --out "$dir" --losses ide,ia,sa --epochs 1 --pairs-per-epoch 6468 \
        --init-checkpoint "$OUT/ide-ia-sa/last.pt" --lr 0.003 --bce-weight 1 --lambda2 1 \
        --consistency-margin 0.5 --head-steps "$HEAD_STEPS" --save-every 40 "${resume[@]}"
  else
    "$PY" -m casn_core train "${common[@]}" --out "$dir" --losses "$run" --epochs "$EPOCHS" \
        --pairs-per-epoch 6468 --save-every 40 "${resume[@]}"
  fi
  "$PY" -m casn_core eval --checkpoint "$dir/last.pt" --data "$DATA" --device cpu --amp "$AMP" \
      --store-dir "$OUT/store" "${paper[@]}" --json "$dir/eval.json.tmp" > "$dir/eval.txt"
  mv "$dir/eval.json.tmp" "$dir/eval.json"
  "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print(json.dumps({"run": sys.argv[2], **{k: {m: round(100 * r[k][m], 2) for m in ("rank1", "mAP")}
                  for k in ("feature", "paper", "tuned") if k in r}}))' "$dir/eval.json" "$dir"
done
