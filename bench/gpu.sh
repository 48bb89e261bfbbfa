#!/usr/bin/env bash
# GPU checks and benchmarks of the project, in two device calls of under 10 minutes each:
#
#     SKIP_SCALE=1 bash bench/gpu.sh     # 0-4 below (about 6 minutes on one H200)
#     SCALE_ONLY=1 bash bench/gpu.sh     # 5 below (about 8 minutes)
#     MARKET=/path/to/Market-1501 bash bench/gpu.sh   # 6 below only: the paper's training on the real data
#
#   0. the CUDA tests (tests/test_cuda.py: re-ranking, eval, explanations and training on CUDA against
#      the CPU, with their stated tolerances); a JSON summary line, the whole log in $OUT/cuda_tests.log;
#   1. ResNet50 CASN training throughput, images/s: IDE and CASN (ide,ia,sa), fp32 vs bf16 autocast,
#      with and without channels_last (inline below: bench/train_step.py has no --amp/--channels-last
#      flags), plus bench/train_step.py itself (fp32, CASN/IDE step ratio);
#   2. extraction throughput: bench/extract.py --device cuda (fp32 vs bf16 + channels_last);
#   3. the pair-attention fast path on CUDA (inline below: bench/pair_attention.py has no --device flag
#      and times the oracle on the CPU), with its max abs difference to the CPU float32 result (a few
#      indicator bits may flip between the devices: then the difference is above float rounding);
#   4. the exact similarity decomposition on CUDA (bench/similarity_speed.py --device cuda);
#   5. eval on the map store at Market size in the paper's setting (bench/scale.py, ResNet50 288x144);
#   6. with MARKET set (and nothing else run): the paper's setting on Market-1501 (sec. 4.2): CASN(IDE)
#      with ResNet50 at 288 x 144 and CASN(PCB) at 384 x 128, 40 epochs, batch 16 pairs, SGD lr 0.03, x0.1
#      after epoch 30 (three quarters), from ImageNet weights (PRETRAINED=imagenet, torchvision's: they
#      download once where there is a network; PRETRAINED=none otherwise), bf16 autocast, channels-last,
#      100 training identities held out to choose w and K; then `casn eval` of each on the full test split
#      (the paper's ranking with K = all on the GPU). Runs write last.pt every 200 steps and the same command
#      resumes them, so the work can be split over several calls (MARKET_OUT holds the runs, default
#      runs/market_gpu). The dataset must be on that machine: the lent one cannot fetch it, and the three
#      folders used (145 MB of JPEGs) are more than a device call carries.
# Every measurement is one JSON line on stdout and in $OUT/gpu_bench.jsonl when $OUT is set.
# The interpreter is $PYTHON, else python3 (the lent machine's, with PyTorch), else python; the
# repository root goes on PYTHONPATH, so nothing needs installing there (the machine has no network).
set -uo pipefail
cd "$(dirname "$0")/.."
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PYTHON:-$(command -v python3 || command -v python)}"
OUT_DIR="${OUT:-}"
LOG=/dev/null
if [ -n "$OUT_DIR" ]; then mkdir -p "$OUT_DIR"; LOG="$OUT_DIR/gpu_bench.jsonl"; : >> "$LOG"; fi
emit() { tee -a "$LOG"; }
started=$(date +%s)
SCALE_WORK="${SCALE_WORK:-/tmp/casn-scale-gpu}"

if [ -n "${MARKET:-}" ]; then
  MARKET_OUT=${MARKET_OUT:-runs/market_gpu}
  mkdir -p "$MARKET_OUT"
  for setting in "resnet50 288 144" "pcb 384 128"; do
    read -r backbone height width <<< "$setting"
    dir="$MARKET_OUT/$backbone"
    resume=(); [ -f "$dir/last.pt" ] && resume=(--resume)
    [ -f "$dir/eval.json" ] && { echo "{\"bench\": \"market_paper\", \"run\": \"$dir\", \"status\": \"done\"}" | emit; continue; }
    "$PY" -m casn_core train --data "$MARKET" --out "$dir" --backbone "$backbone" --losses ide,ia,sa \
        --epochs 40 --batch-size 16 --height "$height" --width "$width" \
        --pretrained "${PRETRAINED:-imagenet}" --lr 0.03 --amp bf16 --channels-last --seed 0 --device cuda \
        --workers 8 --val-ids 100 --save-every 200 "${resume[@]}" > "$dir.train.log" 2>&1 || exit 1
    "$PY" -m casn_core eval --checkpoint "$dir/last.pt" --data "$MARKET" --device cuda --amp bf16 \
        --store-dir "$MARKET_OUT/store-$backbone" --json "$dir/eval.json" > "$dir.eval.txt" 2>&1 || exit 1
    "$PY" -c 'import json, sys; r = json.load(open(sys.argv[1]))
print(json.dumps({"bench": "market_paper", "run": sys.argv[2], **{k: {m: round(100 * r[k][m], 2)
      for m in ("rank1", "mAP")} for k in ("feature", "paper", "tuned") if k in r}}))' "$dir/eval.json" "$dir" | emit
  done
  echo "{\"bench\": \"gpu_sh\", \"wall_s\": $(( $(date +%s) - started ))}" | emit
  exit 0
fi

if [ "${SCALE_ONLY:-0}" != 1 ]; then
"$PY" - <<'EOF' | emit
import json, torch
assert torch.cuda.is_available(), "bench/gpu.sh needs CUDA"
p = torch.cuda.get_device_properties(0)
print(json.dumps({"bench": "gpu_info", "device": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                  "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()}))
EOF

# 0. the CUDA tests against the CPU
cuda_log="${OUT_DIR:-/tmp}/cuda_tests.log"
timeout 180 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$cuda_log" 2>&1
rc=$?
"$PY" -c 'import json, sys; lines = open(sys.argv[1]).read().strip().splitlines() or [""]
print(json.dumps({"bench": "cuda_tests", "rc": int(sys.argv[2]), "summary": lines[-1]}))' "$cuda_log" "$rc" | emit

# 1. training throughput (synthetic batches, same as bench/train_step.py; SGD momentum 0.9)
timeout 240 "$PY" - <<'EOF' | emit
import json, statistics, time
import torch
from casn_core.losses import LossConfig, casn_loss
from casn_core.models import build_model
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
B, H, W, C = 32, 256, 128, 751          # 32 pairs = 64 images per step, Market-1501 identity count
gen = torch.Generator().manual_seed(0)
x1, x2 = torch.randn(B, 3, H, W, generator=gen), torch.randn(B, 3, H, W, generator=gen)
l1 = torch.randint(0, C, (B,), generator=gen); same = (torch.arange(B) % 2 == 0).float()
l2 = torch.where(same > 0, l1, (l1 + 1) % C)
batch = [t.to(dev) for t in (x1, x2, l1, l2, same)]
for losses in ("ide", "ide,ia,sa"):
    for amp, cl in (("none", False), ("bf16", False), ("bf16", True), ("none", True)):
        torch.manual_seed(0)
        model = build_model("resnet50", num_classes=C, pretrained="none").to(dev).train()
        data = list(batch)
        if cl:
            model = model.to(memory_format=torch.channels_last)
            data[0] = data[0].contiguous(memory_format=torch.channels_last)
            data[1] = data[1].contiguous(memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        cfg = LossConfig.from_names(losses)
        times = []
        for step in range(3 + 10):
            torch.cuda.synchronize(); t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp == "bf16"):
                terms = casn_loss(model, *data, cfg)
            terms.total.backward(); opt.step()
            torch.cuda.synchronize()
            if step >= 3:
                times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
        print(json.dumps({"bench": "gpu_train_step", "backbone": "resnet50", "losses": losses, "amp": amp,
                          "channels_last": cl, "pairs_per_step": B, "size": [H, W], "step_s": round(step_s, 4),
                          "images_per_s": round(2 * B / step_s, 1),
                          "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}), flush=True)
        del model, opt; torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
EOF
timeout 120 "$PY" bench/train_step.py --backbone resnet50 --device cuda --batch-size 16 --height 256 --width 128 \
  --num-classes 751 --steps 10 --warmup 3 --profile | emit

# 2. extraction throughput (eval, no_grad): fp32 vs bf16 autocast + channels_last
for bs in 64 256; do
  timeout 90 "$PY" bench/extract.py --backbone resnet50 --device cuda --batch-size "$bs" --height 256 --width 128 \
    --repeats 10 | emit
done

# 3. pair-attention fast path on CUDA (cached maps, resnet50 CASN in eval mode, maps 2048 x 16 x 8)
timeout 120 "$PY" - <<'EOF' | emit
import json, statistics, time
import torch
from casn_core.attention import pair_attention_grid
from casn_core.models import build_model
from casn_core.models.casn import randomise_bce_head

from bench.pair_attention import random_maps  # the repository is on PYTHONPATH

dev = torch.device("cuda")
torch.manual_seed(0)
model = build_model("resnet50", num_classes=751, pretrained="none").eval()
randomise_bce_head(model)
queries_cpu, gallery_cpu = random_maps(32, 2048, 16, 8, 1), random_maps(4096, 2048, 16, 8, 2)
# CPU float32 reference of a small grid for the correctness check
ref = pair_attention_grid(model, queries_cpu[:2].contiguous(memory_format=torch.channels_last),
                          gallery_cpu[:64].contiguous(memory_format=torch.channels_last), keep_maps=False)
model = model.to(dev)
for (n, m) in ((32, 256), (1, 1024), (1, 4096), (32, 4096)):
    for name in ("float32", "bfloat16"):
        dtype = getattr(torch, name)
        q = queries_cpu[:n].to(dev, dtype).contiguous(memory_format=torch.channels_last)
        g = gallery_cpu[:m].to(dev, dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            fq, fg = model.pool(q.float()), model.pool(g.float())
        run = lambda: pair_attention_grid(model, q, g, query_features=fq, gallery_features=fg, keep_maps=False)
        out = run(); torch.cuda.synchronize()
        times = []
        for _ in range(10):
            t = time.perf_counter(); run(); torch.cuda.synchronize(); times.append(time.perf_counter() - t)
        record = {"bench": "gpu_pair_attention", "queries": n, "gallery": m, "dtype": name, "map": [2048, 16, 8],
                  "pairs_per_s": round(n * m / statistics.median(times), 1), "median_s": round(statistics.median(times), 5)}
        if n >= 2 and m >= 64:
            small = pair_attention_grid(model, q[:2], g[:64], keep_maps=False)
            record["max_abs_diff_distance_vs_cpu_fp32"] = float((small.distance.float().cpu() - ref.distance).abs().max())
        print(json.dumps(record), flush=True)
        del q, g; torch.cuda.empty_cache()
EOF

# 4. the exact similarity decomposition vs pair_attention_grid on CUDA, one query x 1,024 maps
timeout 120 "$PY" bench/similarity_speed.py --device cuda --repeats 10 | emit

fi  # SCALE_ONLY

# 5. the paper's setting at Market size: ResNet50 288x144, eval on the map store, on a
#    generated Market-sized set (about 8 minutes; its own device call: SCALE_ONLY=1). float32 maps:
#    26 GB of gallery maps, held on the GPU for the re-ranking (maps_on_device), 31 GB of disk.
if [ "${SKIP_SCALE:-0}" != 1 ]; then
  timeout 560 "$PY" bench/scale.py --backbone resnet50 --height 288 --width 144 --device cuda \
    --map-dtype float32 --batch-size 128 --threads 16 --render-workers 16 --eval-workers 8 \
    --work "$SCALE_WORK" | emit
fi

echo "{\"bench\": \"gpu_sh\", \"wall_s\": $(( $(date +%s) - started ))}" | emit
