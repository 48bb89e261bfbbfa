"""Scale: peak memory and speed of ``python -m casn_core eval`` on the map store, by gallery size (issue 13).

For each size of ``--sizes`` (query + gallery images; default one size, ``--query`` + ``--gallery``,
the Market-1501 test set's 3,368 + 19,732), a Market-layout set is generated once at the largest
size with :func:`casn_core.data.generate_dataset` (or taken from ``--data``), and the smaller sizes
are views of it (symlinks to the first identities' images). Then ``eval`` runs as a child process:

- ``cold``: empty store: extraction into the store + feature ranking + CASN re-ranking;
- ``warm``: the same command again: the store is reused (no extraction);
- ``memory`` (baseline, only up to ``--baseline-max-images``): ``eval --in-memory``, every map in RAM
  as before issue 13; ``ratio_peak_rss`` = store / in-memory.

Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``), so each run is measured alone. One JSON
object per line. The app's numbers come from ``bench/app_latency.py`` run on the same checkpoint
and data (its own JSON line); ``--skip-app`` leaves them out.

    python bench/scale.py --query 300 --gallery 1500 --threads 1 --skip-app          # small, CPU
    python bench/scale.py --sizes 6000,12000,23100 --threads 2 --skip-app            # the memory curve
    python bench/scale.py --backbone resnet50 --height 288 --width 144 --device cuda --map-dtype float32
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MARKET_QUERY, MARKET_GALLERY = 3368, 19732
QUERY_SHARE = MARKET_QUERY / (MARKET_QUERY + MARKET_GALLERY)
QUERIES_PER_ID = 1.45  # the generator draws 1 or 2 queries per test identity (about this many on average)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="a Market-layout dataset (default: generated)")
    parser.add_argument("--work", default=None, help="folder for generated data, checkpoint and stores (default: temp)")
    parser.add_argument("--query", type=int, default=MARKET_QUERY)
    parser.add_argument("--gallery", type=int, default=MARKET_GALLERY)
    parser.add_argument("--sizes", default=None,
                        help="comma-separated query+gallery totals (Market's query share), e.g. 6000,12000,23100")
    parser.add_argument("--checkpoint", default=None, help="default: a random-init model of --backbone")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--map-dtype", default="auto")
    parser.add_argument("--topk", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the eval child")
    parser.add_argument("--render-workers", type=int, default=0, help="processes rendering the generated set")
    parser.add_argument("--baseline-max-images", type=int, default=6000,
                        help="also run the in-memory eval (the baseline) up to this many images")
    parser.add_argument("--skip-app", action="store_true", help="do not run bench/app_latency.py")
    parser.add_argument("--app-repeats", type=int, default=10)
    return parser.parse_args(argv)


def _sizes(args: argparse.Namespace) -> list[tuple[int, int]]:
    if not args.sizes:
        return [(args.query, args.gallery)]
    out = []
    for total in (int(v) for v in args.sizes.split(",")):
        query = round(total * QUERY_SHARE)
        out.append((query, total - query))
    return out


def generate(out: Path, query: int, gallery: int, height: int, width: int, workers: int) -> dict:
    """A generated Market-layout set with about ``query`` / ``gallery`` test images (plus the train half)."""
    from casn_core.data import generate_dataset

    test_ids = max(2, math.ceil(query / QUERIES_PER_ID))
    per_id = max(3, round(gallery / test_ids + QUERIES_PER_ID))
    started = time.perf_counter()
    generate_dataset(out, num_ids=2 * test_ids, num_cameras=6, images_per_id=per_id, seed=0, height=height,
                     width=width, workers=workers, overwrite=True)
    return {"generate_s": time.perf_counter() - started, "num_ids": 2 * test_ids, "images_per_id": per_id}


def subset(root: Path, out: Path, query: int) -> Path:
    """A view of ``root`` with the test identities (sorted) whose queries add up to about ``query``."""
    from casn_core.data import load_market

    data = load_market(root, splits=("query", "gallery"))
    pids = sorted({r.pid for r in data.query})
    keep, count = set(), 0
    for pid in pids:
        if count >= query:
            break
        keep.add(pid)
        count += sum(1 for r in data.query if r.pid == pid)
    for split, folder in (("query", "query"), ("gallery", "bounding_box_test")):
        target = out / folder
        target.mkdir(parents=True, exist_ok=True)
        for record in getattr(data, split):
            if record.pid in keep:
                link = target / Path(record.path).name
                if not link.exists():
                    link.symlink_to(Path(record.path).resolve())
    return out


def run_child(command: list[str], threads: int) -> tuple[int, float, float, str]:
    """``(returncode, wall seconds, peak RSS GB of that child alone, stderr tail)``."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
           "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        err.seek(0)
        tail = err.read()[-2000:]
    return proc.returncode, wall, usage.ru_maxrss / 1024 ** 2, tail  # ru_maxrss is KiB on Linux


def eval_command(args: argparse.Namespace, checkpoint: Path, data: Path, store: Path, out: Path,
                 in_memory: bool = False) -> list[str]:
    command = [sys.executable, "-m", "casn_core", "eval", "--checkpoint", str(checkpoint), "--data", str(data),
               "--device", args.device, "--topk", str(args.topk), "--batch-size", str(args.batch_size),
               "--json", str(out), "--store-dir", str(store), "--map-dtype", args.map_dtype]
    return command + (["--in-memory"] if in_memory else [])


def make_checkpoint(args: argparse.Namespace, work: Path) -> Path:
    if args.checkpoint:
        return Path(args.checkpoint)
    import torch

    from casn_core.checkpoint import model_payload, save_checkpoint
    from casn_core.models import build_model

    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=751, pretrained="none")
    return save_checkpoint(work / f"{args.backbone}_random.pt",
                           model_payload(model, input_size=[args.height, args.width]))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="casn-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = make_checkpoint(args, work)
    sizes = _sizes(args)
    if args.data:
        full = Path(args.data)
    else:
        full = work / "data"
        query, gallery = max(sizes)
        if not (full / "manifest.json").is_file():
            facts = generate(full, query, gallery, args.height, args.width, args.render_workers)
            print(json.dumps({"kind": "generate", **facts}), flush=True)
    baseline_rss = {}
    for query, gallery in sorted(sizes):
        data = full if (query, gallery) == max(sizes) else subset(full, work / f"data-{query + gallery}", query)
        store = work / f"store-{query + gallery}"
        runs = [("cold", False), ("warm", False)]
        if query + gallery <= args.baseline_max_images:
            runs.append(("memory", True))
        for name, in_memory in runs:
            out = work / f"eval-{query + gallery}-{name}.json"
            code, wall, rss, tail = run_child(eval_command(args, checkpoint, data, store, out, in_memory), args.threads)
            if code != 0:
                print(json.dumps({"kind": "eval", "run": name, "error": tail}), flush=True)
                return 1
            result = json.loads(out.read_text())
            seconds = result["seconds"]
            images = result["num_query"] + result["num_gallery"]
            line = {
                "kind": "eval", "run": name, "num_query": result["num_query"], "num_gallery": result["num_gallery"],
                "backbone": args.backbone, "input": f"{args.height}x{args.width}", "device": args.device,
                "map_dtype": result["storage"]["map_dtype"], "topk": args.topk, "threads": args.threads,
                "peak_rss_gb": round(rss, 3), "total_s": round(wall, 2),
                "extract_or_open_s": round(seconds["extract_or_open"], 2),
                "casn_rerank_s": round(seconds["casn_rerank"], 2),
                "casn_rerank_s_per_query": seconds["casn_rerank"] / max(1, result["num_query"]),
                "feature_rank1": result["feature"]["rank1"], "casn_rank1": result["casn"]["rank1"],
                "casn_mAP": result["casn"]["mAP"],
            }
            if name != "warm":
                line["extract_images_per_s"] = round(images / seconds["extract_or_open"], 1)
            baseline_rss[(query + gallery, name)] = rss
            print(json.dumps(line), flush=True)
        if (query + gallery, "memory") in baseline_rss:
            cold = json.loads((work / f"eval-{query + gallery}-cold.json").read_text())
            memory = json.loads((work / f"eval-{query + gallery}-memory.json").read_text())
            same = all(abs(cold[r][k] - memory[r][k]) <= 1e-9 for r in ("feature", "casn") for k in memory[r])
            print(json.dumps({"kind": "baseline", "images": query + gallery,
                              "metrics_equal_to_in_memory_1e-9": same,
                              "ratio_peak_rss": baseline_rss[(query + gallery, "cold")]
                              / baseline_rss[(query + gallery, "memory")], "store_map_dtype": cold["storage"]["map_dtype"],
                              "casn_mAP_store_minus_memory": cold["casn"]["mAP"] - memory["casn"]["mAP"]}), flush=True)
        if not args.skip_app:
            app_json = work / f"app-{query + gallery}.json"
            bench = Path(__file__).resolve().parent / "app_latency.py"
            code, wall, rss, tail = run_child([sys.executable, str(bench), "--checkpoint", str(checkpoint), "--data",
                                               str(data), "--repeats", str(args.app_repeats), "--json",
                                               str(app_json)], args.threads)
            app = json.loads(app_json.read_text()) if code == 0 else {"error": tail}
            print(json.dumps({"kind": "app", "images": query + gallery, "bench_wall_s": round(wall, 1), **app}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
