"""App latency: p50/p95 seconds from request to answer, through ``gradio_client``, on the demo set.

- ``rank``: ``/rank_query`` -- rank one query with Siamese attention on the top 10 (cached maps).
- ``explain``: ``/explain_upload`` -- explain an uploaded pair (upload both files, decode, two
  backbone passes, Siamese attention).

Also, in-process, the UI handlers that draw the pictures (``rank_ui``: ranked strip thumbnails;
``explain_ui``: upload explanation with overlays, vector plots and PNG/JSON export).

    python bench/app_latency.py [--checkpoint CKPT] [--data DIR] [--repeats 30] [--json out.json]

Without ``--checkpoint`` the bundled ``checkpoints/casn_mobilenetv2_synth.pt`` is used, or, when it
is missing, a randomly initialised MobileNetV2 CASN at 256x128 (same cost; reported as such).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app.offline  # noqa: E402,F401

import numpy as np  # noqa: E402


def _percentiles(samples: list[float]) -> tuple[float, float]:
    return float(np.percentile(samples, 50)), float(np.percentile(samples, 95))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default=None, help="Market-layout dataset (default: the demo set)")
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch
    from gradio_client import Client, handle_file

    from app.testing import bench_inputs, running_app
    from app.ui import App

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(args.cache_dir or tmp)
        checkpoint, data, note = bench_inputs(args.checkpoint, args.data, cache_dir, Path(tmp), log=print)
        with running_app(checkpoint, data, cache_dir, topk=args.topk) as (url, handlers):
            handlers: App
            client = Client(url, verbose=False, download_files=False)
            num_query = len(handlers.state.query)
            queries = handlers.state.query.paths
            galleries = handlers.state.gallery.paths
            # warm-up
            client.predict(0, api_name="/rank_query")
            client.predict(handle_file(queries[0]), handle_file(galleries[0]), api_name="/explain_upload")
            rank, explain, rank_ui, explain_ui = [], [], [], []
            for i in range(args.repeats):
                q = (i * 7 + 1) % num_query  # distinct queries: the app memoises rankings per query
                handlers._rankings.clear()
                start = time.perf_counter()
                result = client.predict(q, api_name="/rank_query")
                rank.append(time.perf_counter() - start)
                assert result["query"]["index"] == q
                start = time.perf_counter()
                result = client.predict(handle_file(queries[q]), handle_file(galleries[(i * 5) % len(galleries)]),
                                        api_name="/explain_upload")
                explain.append(time.perf_counter() - start)
                assert "same_probability" in result
                handlers._rankings.clear()
                start = time.perf_counter()
                handlers.show_query(q)
                rank_ui.append(time.perf_counter() - start)
                start = time.perf_counter()
                handlers.explain_upload_view(queries[q], galleries[(i * 5) % len(galleries)])
                explain_ui.append(time.perf_counter() - start)
            results = {}
            for key, samples in (("rank", rank), ("explain", explain), ("rank_ui", rank_ui), ("explain_ui", explain_ui)):
                p50, p95 = _percentiles(samples)
                results[f"{key}_p50_s"] = round(p50, 4)
                results[f"{key}_p95_s"] = round(p95, 4)
            results.update(repeats=args.repeats, topk=args.topk, num_query=num_query, num_gallery=len(galleries),
                           checkpoint=note, backbone=handlers.state.backbone,
                           input_size=list(handlers.state.input_size), torch_threads=torch.get_num_threads(),
                           device="cpu")
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
