"""The paper's ablation (CVPR 2019, sec. 4.2, Table 3) at small scale, repeated over seeds.

Trains the four loss settings ``ide``, ``ide,ia``, ``ide,sa``, ``ide,ia,sa`` (= CASN) with the same
backbone, input size, batch, number of steps (epochs x pairs per epoch), learning-rate schedule,
data and seeds, evaluates each by feature ranking and by the paper's CASN ranking (feature +
Siamese-attention distance on the top K), and reports mean and sample standard deviation over the
seeds, plus the paired difference to ``ide`` (same seed = same initialisation of the heads, same
pair order and augmentation).

Datasets:

- ``synth``: a generated pedestrian benchmark (``casn_core.data.synth``; default 400 identities,
  4 cameras, 8 images each, seed 11, 128x64), the first half of the identities for training, the
  other half held out for query/gallery. Generated once into ``--cache`` (gitignored). After each
  run the attention quality is measured on it (``bench/attention_quality.py``).
- ``mars``: real images; train on ``../shared/data/mini_mars_train`` (1,719 MARS frames of 16 ids),
  test on ``../shared/data/mini_market1501`` query/gallery (32 / 32). Skipped with a message when
  ``../shared`` is absent. The data is read in place, never copied.

Writes ``--out/ablation.json`` (settings, machine, every run, summaries) and ``--out/ablation.md``
(the tables); every run prints one JSON line. ``--reuse`` keeps the finished runs found in the
cache (same settings) and trains only the missing ones; ``--table-only`` rewrites the Markdown
from the JSON.

    MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736 python bench/ablation.py
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from casn_core.atomic import write_text_atomic
from casn_core.attention import DEFAULT_THRESHOLD

REPO = Path(__file__).resolve().parents[1]

ROWS = ("ide", "ide,ia", "ide,sa", "ide,ia,sa")
ROW_NAMES = {"ide": "IDE", "ide,ia": "IDE + IA", "ide,sa": "IDE + SA", "ide,ia,sa": "CASN (IDE + IA + SA)"}
METRICS = ("rank1", "rank5", "rank10", "mAP", "mINP")
QUALITY = ("ia_mass_in_mask", "sa_mass_in_mask", "uniform_mass_in_mask", "consistency_positive",
           "consistency_negative", "same_probability_positive", "same_probability_negative",
           "deletion_auc", "deletion_auc_random", "deletion_auc_gap", "deletion_both_auc",
           "deletion_both_auc_random", "deletion_both_auc_gap")
SHARED = REPO.parent / "shared" / "data"

# The paper's Table 3 (Market-1501 single query, ResNet50 IDE and PCB baselines) and published baselines.
PAPER_TABLE3 = {
    "columns": ["CUHK03-NP R-1", "CUHK03-NP mAP", "Duke R-1", "Duke mAP", "Market R-1", "Market mAP"],
    "rows": {
        "IDE": [43.8, 38.9, 73.2, 52.8, 85.3, 68.5],
        "IDE + IA": [54.8, 48.1, 83.2, 66.0, 91.0, 76.9],
        "IDE + SA": [55.2, 49.1, 83.5, 66.0, 91.6, 77.7],
        "CASN(IDE)": [57.4, 50.7, 84.5, 67.0, 92.0, 78.0],
        "PCB": [61.3, 54.2, 81.7, 66.1, 92.4, 77.3],
        "PCB + IA": [68.5, 62.4, 87.3, 73.4, 93.9, 81.8],
        "PCB + SA": [69.9, 64.2, 86.8, 73.5, 94.1, 82.6],
        "CASN(PCB)": [71.5, 64.4, 87.7, 73.7, 94.4, 82.8],
    },
}
PUBLISHED = {"torchreid ResNet50 (Market-1501)": [87.9, 70.4], "PCB, layumi baseline (Market-1501)": [92.6, 77.5]}


# ----------------------------------------------------------------------------------------- data
def synth_root(args) -> Path:
    name = f"synth_ids{args.synth_ids}_cam{args.synth_cameras}_per{args.synth_images_per_id}_seed{args.synth_seed}" \
           f"_{args.height}x{args.width}"
    return Path(args.cache) / "data" / name


def prepare_synth(args) -> tuple[Path, float]:
    """Generate the synthetic benchmark once (reused when its manifest matches); returns (root, seconds)."""
    from casn_core.data import SynthSpec, generate_dataset

    root = synth_root(args)
    manifest = root / "manifest.json"
    want = {"num_ids": args.synth_ids, "num_cameras": args.synth_cameras, "images_per_id": args.synth_images_per_id,
            "seed": args.synth_seed}
    if manifest.is_file():
        found = json.loads(manifest.read_text())
        if all(found.get(k) == v for k, v in want.items()) and found.get("image_size") == \
                {"height": args.height, "width": args.width}:
            return root, 0.0
    started = time.perf_counter()
    spec = SynthSpec(args.synth_ids, args.synth_cameras, args.synth_images_per_id, args.synth_seed,
                     height=args.height, width=args.width)
    generate_dataset(root, spec, workers=args.synth_workers, overwrite=True)
    return root, time.perf_counter() - started


def dataset_specs(args) -> tuple[list[dict], list[str]]:
    """The datasets to run and the messages of those skipped."""
    specs, skipped = [], []
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    for name in names:
        if name == "synth":
            root, seconds = prepare_synth(args)
            specs.append({"name": "synth", "train": str(root), "test": str(root), "masks": True,
                          "generate_seconds": round(seconds, 1),
                          "description": f"generated: {args.synth_ids} ids ({args.synth_ids // 2} train, "
                                         f"{args.synth_ids - args.synth_ids // 2} held out), {args.synth_cameras} "
                                         f"cameras, {args.synth_images_per_id} images/id, seed {args.synth_seed}, "
                                         f"{args.height}x{args.width}"})
        elif name == "mars":
            train, test = Path(args.mars_train), Path(args.market_test)
            missing = [str(p) for p in (train / "bounding_box_train", test / "query", test / "bounding_box_test")
                       if not p.is_dir()]
            if missing:
                message = f"skipping dataset 'mars': real samples not found ({', '.join(missing)}); they exist only " \
                          f"beside the dev checkout (../shared/data)"
                print(message, file=sys.stderr, flush=True)
                skipped.append(message)
                continue
            specs.append({"name": "mars", "train": str(train), "test": str(test), "masks": False,
                          "description": "train: mini_mars_train (1,719 MARS frames, 16 ids); test: mini_market1501 "
                                         "query/gallery (32 / 32 images, 16 ids)"})
        else:
            raise SystemExit(f"unknown dataset {name!r} (synth, mars)")
    return specs, skipped


# ----------------------------------------------------------------------------------------- runs
def settings(args, dataset: str = "synth") -> dict:
    """Everything a run's numbers depend on (besides dataset, losses and seed).

    The training budget (epochs x pairs per epoch) is the same for every row and seed of a dataset;
    ``mars`` has its own (``--mars-epochs``, ``--mars-pairs-per-epoch``).
    """
    out = {k: getattr(args, k) for k in (
        "backbone", "pretrained", "height", "width", "batch_size", "epochs", "pairs_per_epoch", "lr", "amp",
        "topk", "threshold", "quality_pairs", "deletion_pairs", "deletion_steps", "deletion_max")}
    # the options of ours enter the settings only when set, so the paper-default runs keep their cache
    for key, paper in (("lambda2", 0.05), ("bce_weight", None), ("consistency_margin", None), ("hard_negatives", 0.0),
                       ("head_steps", 0), ("attention_weight", 1.0)):
        if getattr(args, key) != paper:
            out[key] = getattr(args, key)
    if dataset == "mars":
        out["epochs"], out["pairs_per_epoch"] = args.mars_epochs, args.mars_pairs_per_epoch
    return out


def run_dir(args, dataset: str, losses: str, seed: int) -> Path:
    return Path(args.cache) / "runs" / dataset / losses.replace(",", "+") / f"seed{seed}"


def run_one(args, spec: dict, losses: str, seed: int) -> dict:
    """Train one row with one seed, evaluate it, measure attention quality (synth); returns the run record."""
    from casn_core.data import load_market
    from casn_core.engine.evaluator import evaluate_rankings
    from casn_core.engine.extraction import ExtractionConfig, extract_split
    from casn_core.engine.train import TrainConfig, train
    from casn_core.attention.quality import QualitySettings, attention_quality
    from casn_core.rankings import RankingSpec

    out = run_dir(args, spec["name"], losses, seed)
    topk = None if str(args.topk).lower() == "all" else int(args.topk)
    budget = settings(args, spec["name"])
    config = TrainConfig(
        data=spec["train"], out=str(out), backbone=args.backbone, losses=losses, epochs=budget["epochs"],
        batch_size=args.batch_size, height=args.height, width=args.width, pretrained=args.pretrained, seed=seed,
        lr=args.lr, threshold=args.threshold, pairs_per_epoch=budget["pairs_per_epoch"], device="cpu", amp=args.amp,
        eval_every=0, eval_topk=topk, lambda2=args.lambda2, bce_weight=args.bce_weight,
        consistency_margin=args.consistency_margin, hard_negatives=args.hard_negatives, head_steps=args.head_steps,
    )
    started = time.perf_counter()
    result = train(config, resume=False, progress=False)
    train_s = time.perf_counter() - started
    model = result.model.eval()

    started = time.perf_counter()
    data = load_market(spec["test"], splits=("query", "gallery"))
    extraction = ExtractionConfig((args.height, args.width), amp=args.amp, progress=False)
    query = extract_split(model, list(data.query), extraction, "query")
    gallery = extract_split(model, list(data.gallery), extraction, "gallery")
    evaluation = evaluate_rankings(model, query, gallery, [RankingSpec("casn", args.attention_weight, topk, args.threshold)])
    eval_s = time.perf_counter() - started

    quality, quality_s = None, 0.0
    if spec["masks"] and not args.no_quality:
        started = time.perf_counter()
        quality_settings = QualitySettings(args.threshold, args.amp, args.quality_pairs, args.deletion_pairs,
                                           args.deletion_steps, args.deletion_max, seed=0)
        quality = attention_quality(model, spec["test"], (args.height, args.width), quality_settings, query, gallery)
        quality_s = time.perf_counter() - started
    record = {
        "bench": "ablation_run", "dataset": spec["name"], "losses": losses, "seed": seed,
        "feature": evaluation["feature"], "casn": evaluation["casn"],
        "num_query": evaluation["num_query"], "num_gallery": evaluation["num_gallery"],
        "train_last_epoch": {k: v for k, v in result.record.items() if k != "eval"},
        "train_s": round(train_s, 1), "eval_s": round(eval_s, 1), "quality_s": round(quality_s, 1),
        "elapsed_s": round(train_s + eval_s + quality_s, 1),
        "quality": quality, "settings": budget, "checkpoint": str(out / "last.pt"),
    }
    write_text_atomic(out / "result.json", json.dumps(record, indent=1) + "\n")  # the resume marker: whole or absent
    del model, result, query, gallery
    gc.collect()
    return record


def cached_run(args, dataset: str, losses: str, seed: int) -> dict | None:
    path = run_dir(args, dataset, losses, seed) / "result.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("settings") == settings(args, dataset) else None


# ----------------------------------------------------------------------------------------- stats
def mean_std(values: list[float]) -> dict:
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "n": int(arr.size)}


def summarise(runs: list[dict]) -> dict:
    """Per dataset and row: mean/std of every metric over seeds; paired differences to ``ide``."""
    summary: dict = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rows: dict = {}
        by_row = {losses: {r["seed"]: r for r in runs if r["dataset"] == dataset and r["losses"] == losses}
                  for losses in ROWS}
        for losses, seeds in by_row.items():
            if not seeds:
                continue
            entry: dict = {"seeds": sorted(seeds)}
            for ranking in ("feature", "casn"):
                entry[ranking] = {m: mean_std([s[ranking][m] for s in seeds.values()]) for m in METRICS}
            entry["train_s"] = mean_std([s["train_s"] for s in seeds.values()])
            entry["elapsed_s"] = mean_std([s["elapsed_s"] for s in seeds.values()])
            if all(s.get("quality") for s in seeds.values()):
                entry["quality"] = {q: mean_std([s["quality"][q] for s in seeds.values()]) for q in QUALITY}
            base = by_row.get("ide", {})
            common = sorted(set(seeds) & set(base))
            if losses != "ide" and common:
                delta: dict = {}
                for ranking in ("feature", "casn"):
                    for m in ("rank1", "mAP"):
                        diffs = [seeds[s][ranking][m] - base[s][ranking][m] for s in common]
                        delta[f"{ranking}_{m}"] = {**mean_std(diffs), "better": sum(d > 0 for d in diffs),
                                                   "worse": sum(d < 0 for d in diffs)}
                entry["delta_vs_ide"] = delta
            rows[losses] = entry
        summary[dataset] = rows
    return summary


# ----------------------------------------------------------------------------------------- output
def _pct(stat: dict, digits: int = 1) -> str:
    if not stat or stat.get("n", 0) == 0 or math.isnan(stat["mean"]):
        return "n/a"
    return f"{100 * stat['mean']:.{digits}f} ± {100 * stat['std']:.{digits}f}"


def _num(stat: dict, digits: int = 3) -> str:
    if not stat or stat.get("n", 0) == 0 or math.isnan(stat["mean"]):
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _delta(stat: dict) -> str:
    if not stat or stat.get("n", 0) == 0:
        return "n/a"
    inside = abs(stat["mean"]) <= stat["std"] or (stat["better"] and stat["worse"])
    return f"{100 * stat['mean']:+.1f} ± {100 * stat['std']:.1f} ({stat['better']}/{stat['n']} up)" + \
        (" ~" if inside else "")


def markdown(payload: dict) -> str:
    s = payload["settings"]
    lines = ["# Ablation (small scale)", "",
             "Generated by `bench/ablation.py` (re-running it regenerates this file and `ablation.json`).", "",
             f"Command: `{payload['command']}`", "",
             f"Machine: {payload['machine']['cpu']}, {payload['machine']['cores']} CPU cores, "
             f"torch {payload['machine']['torch']}, {payload['machine']['threads']} threads, no GPU.", "",
             f"Every row: backbone `{s['backbone']}` (pretrained `{s['pretrained']}`), input {s['height']}x{s['width']}, "
             f"batch {s['batch_size']} pairs, the same number of steps (budget below, per dataset), lr {s['lr']} "
             f"(x0.1 after 3/4 of the epochs), "
             f"amp `{s['amp']}`, CASN ranking K = {s['topk']}, threshold {s['threshold']}; "
             f"seeds {', '.join(str(x) for x in payload['seeds'])}. Values: mean ± sample std over the seeds, in %.", ""]
    for message in payload.get("skipped", []):
        lines += [f"**Skipped:** {message}", ""]
    for spec in payload["datasets"]:
        name = spec["name"]
        rows = payload["summary"].get(name, {})
        if not rows:
            continue
        b = spec.get("settings", s)
        lines += [f"## {name}: {spec['description']}", "",
                  f"Budget of every row: {b['epochs']} epochs x {b['pairs_per_epoch']} pairs = "
                  f"{b['epochs'] * (b['pairs_per_epoch'] // b['batch_size'])} steps of {b['batch_size']} pairs.", "",
                  "| row | feature R-1 | feature mAP | feature mINP | CASN R-1 | CASN mAP | CASN mINP | train s |",
                  "|---|---|---|---|---|---|---|---|"]
        for losses, entry in rows.items():
            f, c = entry["feature"], entry["casn"]
            lines.append(f"| {ROW_NAMES[losses]} | {_pct(f['rank1'])} | {_pct(f['mAP'])} | {_pct(f['mINP'])} | "
                         f"{_pct(c['rank1'])} | {_pct(c['mAP'])} | {_pct(c['mINP'])} | "
                         f"{entry['train_s']['mean']:.0f} |")
        lines += ["", "Paired difference to IDE (same seed), percentage points, mean ± std over seeds "
                      "(k/n up = seeds where the row beats IDE; `~` = inside the seed spread: |mean| <= std "
                      "or the seeds disagree in sign):", "",
                  "| row | Δ feature R-1 | Δ feature mAP | Δ CASN R-1 | Δ CASN mAP |", "|---|---|---|---|---|"]
        for losses, entry in rows.items():
            d = entry.get("delta_vs_ide")
            if d:
                lines.append(f"| {ROW_NAMES[losses]} | {_delta(d['feature_rank1'])} | {_delta(d['feature_mAP'])} | "
                             f"{_delta(d['casn_rank1'])} | {_delta(d['casn_mAP'])} |")
        lines.append("")
        if any("quality" in e for e in rows.values()):
            lines += [f"### Attention quality ({name})", "",
                      "Mass in mask: share of the (upsampled) attention inside the person mask; IA = Grad-CAM of the "
                      "top predicted identity (test identities are unseen); SA = Siamese maps of positive pairs; "
                      "uniform = mean mask area (what a map without preference gets). Consistency: distance of the "
                      "aligned row vectors (eq. 5), positive vs negative pairs. Deletion AUC: mean same-person "
                      "probability of positive pairs while 0..50% of each image's most-attended pixels are blanked "
                      "(lower = faster fall); random = random map of the same resolution; gap = random - SA "
                      "(> 0: the SA map is more faithful than random). Rows marked † train no BCE head "
                      "(L_bce belongs to L_sa), so their SA maps and probabilities come from a random head.", "",
                      "| row | IA mass in mask | SA mass in mask | uniform | consistency pos | consistency neg | "
                      "p(same) pos | deletion AUC SA | deletion AUC random | gap |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for losses, entry in rows.items():
                q = entry.get("quality")
                if not q:
                    continue
                mark = "" if "sa" in losses.split(",") else " †"
                lines.append(f"| {ROW_NAMES[losses]}{mark} | {_pct(q['ia_mass_in_mask'])} | "
                             f"{_pct(q['sa_mass_in_mask'])} | {_pct(q['uniform_mass_in_mask'])} | "
                             f"{_num(q['consistency_positive'])} | {_num(q['consistency_negative'])} | "
                             f"{_num(q['same_probability_positive'])} | {_num(q['deletion_auc'])} | "
                             f"{_num(q['deletion_auc_random'])} | {_num(q['deletion_auc_gap'])} |")
            lines.append("")
    lines += ["## Runs", "", "| dataset | row | seed | feature R-1 | feature mAP | CASN R-1 | CASN mAP | train s | "
                            "eval s | quality s | total s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["runs"]:
        lines.append(f"| {r['dataset']} | {r['losses']} | {r['seed']} | {100 * r['feature']['rank1']:.1f} | "
                     f"{100 * r['feature']['mAP']:.1f} | {100 * r['casn']['rank1']:.1f} | {100 * r['casn']['mAP']:.1f} | "
                     f"{r['train_s']:.0f} | {r['eval_s']:.0f} | {r['quality_s']:.0f} | {r['elapsed_s']:.0f} |")
    for failure in payload.get("failed", []):
        lines.append(f"\n**Failed:** {failure['dataset']} {failure['losses']} seed {failure['seed']}: {failure['error']}")
    lines += ["", f"Total wall time of the runs: {sum(r['elapsed_s'] for r in payload['runs']) / 60:.1f} min.", "",
              "## Reference: the paper's Table 3 (ResNet50, full datasets, GPU) and published baselines", "",
              "| loss type | " + " | ".join(PAPER_TABLE3["columns"]) + " |",
              "|---|" + "---|" * len(PAPER_TABLE3["columns"])]
    for row, values in PAPER_TABLE3["rows"].items():
        lines.append(f"| {row} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", "| published baseline | R-1 | mAP |", "|---|---|---|"]
    for row, (r1, m) in PUBLISHED.items():
        lines.append(f"| {row} | {r1:.1f} | {m:.1f} |")
    return "\n".join(lines) + "\n"


def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available()}


def write_outputs(payload: dict, out_dir: Path) -> None:
    write_text_atomic(out_dir / "ablation.json", json.dumps(payload, indent=1) + "\n")
    write_text_atomic(out_dir / "ablation.md", markdown(payload))


# ----------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="synth,mars", help="comma-separated: synth, mars")
    parser.add_argument("--rows", default=";".join(ROWS), help="semicolon-separated loss settings")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--pretrained", default="imagenet")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pairs-per-epoch", type=int, default=480)
    parser.add_argument("--mars-epochs", type=int, default=3, help="epochs of the mars runs")
    parser.add_argument("--mars-pairs-per-epoch", type=int, default=320)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--amp", choices=("none", "bf16"), default="bf16")
    parser.add_argument("--topk", default="100", help="CASN re-ranking depth K, or 'all'")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    # options of ours (defaults: the paper's), see python -m casn_core train --help
    parser.add_argument("--lambda2", type=float, default=0.05)
    parser.add_argument("--bce-weight", type=float, default=None)
    parser.add_argument("--consistency-margin", type=float, default=None)
    parser.add_argument("--hard-negatives", type=float, default=0.0)
    parser.add_argument("--head-steps", type=int, default=0)
    parser.add_argument("--attention-weight", type=float, default=1.0, help="w of the CASN ranking (paper: 1)")
    parser.add_argument("--synth-ids", type=int, default=400)
    parser.add_argument("--synth-cameras", type=int, default=4)
    parser.add_argument("--synth-images-per-id", type=int, default=8)
    parser.add_argument("--synth-seed", type=int, default=11)
    parser.add_argument("--synth-workers", type=int, default=0)
    parser.add_argument("--mars-train", default=str(SHARED / "mini_mars_train"))
    parser.add_argument("--market-test", default=str(SHARED / "mini_market1501"))
    parser.add_argument("--quality-pairs", type=int, default=128)
    parser.add_argument("--deletion-pairs", type=int, default=48)
    parser.add_argument("--deletion-steps", type=int, default=10)
    parser.add_argument("--deletion-max", type=float, default=0.5)
    parser.add_argument("--no-quality", action="store_true", help="skip the attention-quality measurements")
    parser.add_argument("--cache", default=str(REPO / ".cache" / "ablation"), help="generated data and run folders")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="where ablation.json/.md go")
    parser.add_argument("--reuse", action="store_true", help="keep finished runs of the cache with the same settings")
    parser.add_argument("--table-only", action="store_true", help="rewrite ablation.md from ablation.json")
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out_dir = Path(args.out)
    if args.table_only:
        payload = json.loads((out_dir / "ablation.json").read_text())
        write_text_atomic(out_dir / "ablation.md", markdown(payload))
        return payload
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("casn_core").setLevel(logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = [r.strip() for r in args.rows.split(";") if r.strip()]
    for row in rows:
        if row not in ROWS:
            raise SystemExit(f"unknown row {row!r}; choose from {', '.join(ROWS)}")
    specs, skipped = dataset_specs(args)
    command = "python bench/ablation.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for spec in specs:
        spec["settings"] = settings(args, spec["name"])
    payload = {"command": command.strip(), "machine": machine(), "settings": settings(args), "seeds": seeds,
               "rows": rows, "datasets": specs, "skipped": skipped, "runs": []}
    started = time.perf_counter()
    for spec in specs:
        for seed in seeds:  # seed-major: a partial result already has every row for the first seeds
            for losses in rows:
                record = cached_run(args, spec["name"], losses, seed) if args.reuse else None
                if record is None:
                    try:
                        record = run_one(args, spec, losses, seed)
                    except Exception as exc:  # one diverged run must not lose the others
                        failure = {"bench": "ablation_run_failed", "dataset": spec["name"], "losses": losses,
                                   "seed": seed, "error": f"{type(exc).__name__}: {exc}"}
                        print(json.dumps(failure), flush=True)
                        payload.setdefault("failed", []).append(failure)
                        write_outputs(payload, out_dir)
                        continue
                else:
                    record = {**record, "reused": True}
                print(json.dumps({k: v for k, v in record.items() if k not in ("settings",)}), flush=True)
                payload["runs"].append(record)
                payload["summary"] = summarise(payload["runs"])
                payload["wall_s"] = round(time.perf_counter() - started, 1)
                write_outputs(payload, out_dir)
    payload["summary"] = summarise(payload["runs"])
    payload["wall_s"] = round(time.perf_counter() - started, 1)
    write_outputs(payload, out_dir)
    return payload


if __name__ == "__main__":
    main()
