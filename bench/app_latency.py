"""App latency: start-up and request seconds of ``python app.py``, measured as a client sees them.

The app runs as its own process (``bench/app_server.py``); requests go through ``gradio_client``.

- ``start_cold_s``: process start until the page answers, with an empty cache (features extracted);
  ``start_warm_s``: the same with the cache of the first start (the warm start).
- ``first_rank_s``: the first ``/rank_query`` after the warm start.
- ``rank``: ``/rank_query`` -- rank one query with Siamese attention on the top K (cached maps;
  the app runs with ``--ranking-cache 0`` so every request ranks).
- ``explain``: ``/explain_pair`` -- explain a dataset pair from the cached maps.
- ``upload``: ``/explain_upload`` -- upload both files, decode, two backbone passes, Siamese attention.

    python bench/app_latency.py [--checkpoint CKPT] [--data DIR] [--repeats 30] [--json out.json]

Without ``--checkpoint`` the bundled ``checkpoints/casn_mobilenetv2_synth.pt`` is used, or, when it
is missing, a randomly initialised MobileNetV2 CASN at 256x128 (same cost; reported as such).
Prints one JSON object (seconds; ``rss_mib_after_warm_start`` of the app process).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default=None, help="Market-layout dataset (default: a demo-sized generated set)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the app process")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from gradio_client import Client, handle_file

    from app_server import bench_inputs, dataset_images, rss_mib, served_app

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, data, note = bench_inputs(args.checkpoint, args.data, Path(tmp))
        cache = Path(tmp) / "cache"
        extra = ["--topk", str(args.topk), "--ranking-cache", "0"]
        if args.threads:
            extra += ["--threads", str(args.threads)]
        with served_app(checkpoint, data, cache, extra, log_file=Path(tmp) / "cold.log") as (_, _, cold):
            results["start_cold_s"] = round(cold, 3)
        with served_app(checkpoint, data, cache, extra, log_file=Path(tmp) / "warm.log") as (url, process, warm):
            results["start_warm_s"] = round(warm, 3)
            client = Client(url, verbose=False, download_files=False)
            start = time.perf_counter()
            client.predict(0, api_name="/rank_query")
            results["first_rank_s"] = round(time.perf_counter() - start, 4)
            results["rss_mib_after_warm_start"] = round(rss_mib(process.pid), 1)
            summary = client.predict(api_name="/dataset_summary")
            num_query, num_gallery = summary["num_query"], summary["num_gallery"]
            queries, galleries = dataset_images(data)
            client.predict(handle_file(queries[0]), handle_file(galleries[0]), api_name="/explain_upload")  # warm-up
            samples: dict[str, list[float]] = {"rank": [], "explain": [], "upload": []}
            for i in range(args.repeats):
                q = (i * 7 + 1) % num_query
                calls = {"rank": ((q,), "/rank_query"), "explain": ((q, (i * 11 + 3) % num_gallery), "/explain_pair"),
                         "upload": ((handle_file(queries[i % len(queries)]),
                                     handle_file(galleries[(i * 5) % len(galleries)])), "/explain_upload")}
                for kind, (call_args, api_name) in calls.items():
                    start = time.perf_counter()
                    client.predict(*call_args, api_name=api_name)
                    samples[kind].append(time.perf_counter() - start)
            for kind, values in samples.items():
                p50, p95 = _percentiles(values)
                results[f"{kind}_p50_s"] = round(p50, 4)
                results[f"{kind}_p95_s"] = round(p95, 4)
            results.update(repeats=args.repeats, topk=args.topk, num_query=num_query, num_gallery=num_gallery,
                           checkpoint=note, backbone=summary["backbone"], input_size=summary["input_size"],
                           device="cpu", app="separate process (python app.py)")
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
