"""Scale: peak memory and speed of ``python -m casn_core eval`` on the map store, by gallery size.

For each size of ``--sizes`` (query + gallery images; default one size, ``--query`` + ``--gallery``,
the Market-1501 test set's 3,368 + 19,732), a Market-layout set is generated once at the largest
size with :func:`casn_core.data.generate_dataset` (or taken from ``--data``), and the smaller sizes
are views of it (symlinks to the first identities' images). Then ``eval`` runs as a child process:

- ``cold``: empty store: extraction into the store + feature ranking + CASN re-ranking;
- ``warm``: the same command again: the store is reused (no extraction);
- ``memory`` (baseline, only up to ``--baseline-max-images``): ``eval --in-memory``, every map in RAM
  as without the store; ``ratio_peak_rss`` = store / in-memory.

Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``), so each run is measured alone. One JSON
object per line.

The app (``--app``, per size): ``python app.py --checkpoint ... --data ... --store-dir <eval's store
dir> --port P`` as a child process, measured from outside: ``start_s`` until ``GET /config``
answers (warm: the stores eval built are reused, so this is the app's warm start; with
``--app-cold-max-images`` >= the size, first a cold start on an empty store folder), the first
``/rank_query`` through ``gradio_client`` (``first_rank_s``), and the child's ``VmRSS`` after it
plus its ``VmHWM`` (peak) from ``/proc/<pid>/status``.

    python bench/scale.py --query 300 --gallery 1500 --threads 1                     # small, CPU
    python bench/scale.py --sizes 6000,12000,23100 --threads 2 --app --work /tmp/scale   # the curve
    python bench/scale.py --backbone resnet50 --height 288 --width 144 --device cuda --map-dtype float32
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
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
    parser.add_argument("--eval-workers", type=int, default=0,
                        help="the eval child's --workers (image-decoding processes; 0 decodes in the main process)")
    parser.add_argument("--render-workers", type=int, default=0, help="processes rendering the generated set")
    parser.add_argument("--baseline-max-images", type=int, default=6000,
                        help="also run the in-memory eval (the baseline) up to this many images")
    parser.add_argument("--runs", default="cold,warm", help="eval runs per size: cold (empty store), warm (reused)")
    parser.add_argument("--cold-max-images", type=int, default=10 ** 9,
                        help="cold runs only up to this many images (larger sizes reuse their stores)")
    parser.add_argument("--app", action="store_true", help="also measure the app at each size (warm start)")
    parser.add_argument("--app-cold-max-images", type=int, default=0,
                        help="also measure the app's cold start (own empty store) up to this many images")
    parser.add_argument("--app-topk", type=int, default=10, help="the app's --topk (its default)")
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
    from casn_core.data import SynthSpec, generate_dataset

    test_ids = max(2, math.ceil(query / QUERIES_PER_ID))
    per_id = max(3, round(gallery / test_ids + QUERIES_PER_ID))
    started = time.perf_counter()
    spec = SynthSpec(num_ids=2 * test_ids, num_cameras=6, images_per_id=per_id, seed=0, height=height, width=width)
    generate_dataset(out, spec, workers=workers, overwrite=True)
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


def _child_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
            "OMP_WAIT_POLICY": "PASSIVE"}


def run_child(command: list[str], threads: int) -> tuple[int, float, float, str]:
    """``(returncode, wall seconds, peak RSS GB of that child alone, stderr tail)``."""
    env = {**os.environ, **_child_env(threads)}
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        err.seek(0)
        tail = err.read()[-2000:]
    return proc.returncode, wall, usage.ru_maxrss / 1024 ** 2, tail  # ru_maxrss is KiB on Linux


def query_n(data: Path) -> int:
    return sum(1 for _ in (Path(data) / "query").glob("*.jpg"))


def measure_app(checkpoint: Path, data: Path, store: Path, log_file: Path, threads: int, topk: int,
                timeout: float = 3600.0) -> dict:
    """Start ``python app.py`` as a child on ``store`` and measure it from outside (see the module docstring).

    The child is run by ``bench/app_server.py``'s :func:`served_app` (imported here, at use: a bench
    script's folder is on ``sys.path`` when it runs as ``python bench/scale.py``)."""
    from app_server import proc_status_kib, served_app
    from gradio_client import Client

    def status_gb(pid: int) -> dict[str, float]:
        return {name: kib / 1024 ** 2 for name, kib in proc_status_kib(pid).items()}

    extra = ["--topk", str(topk), "--threads", str(threads)]
    try:
        with served_app(checkpoint, data, store.parent / "app-cache", extra, timeout, log_file, store_dir=store,
                        env=_child_env(threads)) as (url, process, start_s):
            after_start = status_gb(process.pid)
            client = Client(url, verbose=False, download_files=False)
            first = time.perf_counter()
            client.predict(0, api_name="/rank_query")
            first_rank_s = time.perf_counter() - first
            second = time.perf_counter()
            client.predict(1, api_name="/rank_query")
            second_rank_s = time.perf_counter() - second
            after_rank = status_gb(process.pid)
    except (RuntimeError, TimeoutError) as exc:
        return {"error": str(exc)}
    return {"start_s": round(start_s, 2), "first_rank_s": round(first_rank_s, 3),
            "second_rank_s": round(second_rank_s, 3), "rss_gb_after_start": round(after_start["VmRSS"], 3),
            "rss_gb_after_first_rank": round(after_rank["VmRSS"], 3),
            "peak_rss_gb": round(after_rank["VmHWM"], 3)}


def eval_command(args: argparse.Namespace, checkpoint: Path, data: Path, store: Path, out: Path,
                 in_memory: bool = False) -> list[str]:
    command = [sys.executable, "-m", "casn_core", "eval", "--checkpoint", str(checkpoint), "--data", str(data),
               "--device", args.device, "--topk", str(args.topk), "--batch-size", str(args.batch_size),
               "--json", str(out), "--store-dir", str(store), "--map-dtype", args.map_dtype,
               "--workers", str(args.eval_workers)]
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
        runs = [(name, False) for name in args.runs.split(",")
                if name and (name != "cold" or query + gallery <= args.cold_max_images)]
        if query + gallery <= args.baseline_max_images:
            runs.append(("memory", True))
        for name, in_memory in runs:
            if name == "cold" and store.exists():
                shutil.rmtree(store)  # cold = extraction into an empty store folder
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
                "feature_ranking_s": round(seconds["feature_ranking"], 2),
                "casn_rerank_s": round(seconds["casn_rerank"], 2),
                "casn_rerank_s_per_query": seconds["casn_rerank"] / max(1, result["num_query"]),
                "feature_rank1": result["feature"]["rank1"], "casn_rank1": result["casn"]["rank1"],
                "casn_mAP": result["casn"]["mAP"],
            }
            if name != "warm":
                line["extract_images_per_s"] = round(images / seconds["extract_or_open"], 1)
            baseline_rss[(query + gallery, name)] = rss
            print(json.dumps(line), flush=True)
        if (query + gallery, "memory") in baseline_rss and (query + gallery, "cold") in baseline_rss:
            cold = json.loads((work / f"eval-{query + gallery}-cold.json").read_text())
            memory = json.loads((work / f"eval-{query + gallery}-memory.json").read_text())
            same = all(abs(cold[r][k] - memory[r][k]) <= 1e-9 for r in ("feature", "casn") for k in memory[r])
            print(json.dumps({"kind": "baseline", "images": query + gallery,
                              "metrics_equal_to_in_memory_1e-9": same,
                              "ratio_peak_rss": baseline_rss[(query + gallery, "cold")]
                              / baseline_rss[(query + gallery, "memory")], "store_map_dtype": cold["storage"]["map_dtype"],
                              "casn_mAP_store_minus_memory": cold["casn"]["mAP"] - memory["casn"]["mAP"]}), flush=True)
        if args.app:
            starts = ["warm"]
            if query + gallery <= args.app_cold_max_images:
                starts.insert(0, "cold")
            for start in starts:
                app_store = work / f"app-cold-store-{query + gallery}" if start == "cold" else store
                if start == "cold" and app_store.exists():
                    shutil.rmtree(app_store)
                line = measure_app(checkpoint, data, app_store, work / f"app-{query + gallery}-{start}.log",
                                   args.threads, args.app_topk)
                print(json.dumps({"kind": "app", "start": start, "images": query + gallery, "num_query": query_n(data),
                                  "threads": args.threads, "topk": args.app_topk, **line}), flush=True)
                if start == "cold":
                    shutil.rmtree(app_store, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
