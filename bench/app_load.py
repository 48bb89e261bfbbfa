"""App under load: many ``gradio_client`` clients at once, every answer checked, memory watched.

Starts ``python app.py`` as its own process on a free 127.0.0.1 port (``bench/app_server.py``) with
``--ranking-cache 0`` (rankings are recomputed on every request, under load too), computes the
expected answer of every request with one client, one request at a time, then runs ``--clients``
threads, each with its own ``gradio_client.Client``, each making ``--requests`` requests that
cycle through rankings (``/rank_query``), cached-pair explanations (``/explain_pair``) and uploads
(``/explain_upload``: both images uploaded, decoded and run through the backbone). Every answer is
compared with the sequential one (rankings entry by entry, floats to 1e-5 relative).

Memory is the app process's resident set (``VmRSS`` in ``/proc/<pid>/status``), sampled every 20 ms
during the rounds; ``growth`` is the RSS after the last round minus the RSS after the warm-up
(sequential) pass.

    python bench/app_load.py [--checkpoint CKPT] [--data DIR] [--clients 16] [--requests 10] [--rounds 2]

Without ``--checkpoint`` the bundled ``checkpoints/casn_mobilenetv2_synth.pt`` is used, or, when it
is missing, a randomly initialised MobileNetV2 CASN at 256x128 (reported as such). Without
``--data`` a set like the app's demo set (60 identities, 480 query + gallery images) is generated.
Prints JSON: p50/p95 latency (seconds) per request kind and overall, errors, mismatches, RSS (MiB).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

KINDS = ("rank", "explain", "upload")


def upload_files(folder: Path, query_paths: list[str], gallery_paths: list[str], count: int) -> list[tuple[str, str]]:
    """``count`` upload pairs: dataset images as they are, and re-encoded as grayscale PNG / RGBA PNG /
    JPEG so that uploads exercise the format conversion too."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for i in range(count):
        first = query_paths[(i * 3) % len(query_paths)]
        second = gallery_paths[(i * 5 + 1) % len(gallery_paths)]
        if i % 4:
            image = Image.open(second)
            mode, fmt = (("L", "PNG"), ("RGBA", "PNG"), ("RGB", "JPEG"))[i % 4 - 1]
            target = folder / f"upload{i}.{fmt.lower()}"
            buffer = io.BytesIO()
            image.convert(mode).save(buffer, format=fmt)
            target.write_bytes(buffer.getvalue())
            second = str(target)
        pairs.append((first, second))
    return pairs


def plan(clients: int, requests: int, num_query: int, num_gallery: int, num_uploads: int,
         num_distinct: int = 8) -> list[list[tuple]]:
    """Requests of each client: kinds in rotation (shifted per client), arguments from a small set
    (``num_distinct`` queries) so that the expected answers can be computed up front."""
    queries = [(i * 7 + 1) % num_query for i in range(min(num_distinct, num_query))]
    out = []
    for c in range(clients):
        calls = []
        for j in range(requests):
            kind = KINDS[(c + j) % len(KINDS)]
            q = queries[(c * 3 + j) % len(queries)]
            if kind == "rank":
                calls.append(("rank", q))
            elif kind == "explain":
                calls.append(("explain", q, (q * 11 + 3) % num_gallery))
            else:
                calls.append(("upload", (c + j) % num_uploads))
        out.append(calls)
    return out


def call(client, request: tuple, uploads: list[tuple[str, str]]):
    from gradio_client import handle_file

    kind = request[0]
    if kind == "rank":
        return client.predict(request[1], api_name="/rank_query")
    if kind == "explain":
        return client.predict(request[1], request[2], api_name="/explain_pair")
    first, second = uploads[request[1]]
    return client.predict(handle_file(first), handle_file(second), api_name="/explain_upload")


def same(a, b, tol: float = 1e-5, where: str = "") -> str | None:
    """``None`` when ``a`` and ``b`` agree (floats to ``tol``), else where they first differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where}: keys {sorted(set(a) ^ set(b))}"
        for key in a:
            found = same(a[key], b[key], tol, f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            found = same(x, y, tol, f"{where}[{i}]")
            if found:
                return found
        return None
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None or isinstance(a, (str, bool)) or isinstance(b, (str, bool)):
            return f"{where}: {a!r} != {b!r}"
        if math.isnan(a) and math.isnan(b):
            return None
        return None if abs(a - b) <= tol * max(1.0, abs(a), abs(b)) else f"{where}: {a!r} != {b!r}"
    return None if a == b else f"{where}: {a!r} != {b!r}"


def check_answer(request: tuple, answer, expected) -> str | None:
    """Content checks beyond equality with the sequential answer: the right query, pair and files."""
    kind = request[0]
    if kind == "rank" and answer["query"]["index"] != request[1]:
        return f"rank_query({request[1]}) answered query {answer['query']['index']}"
    if kind == "explain" and "same_probability" not in answer:
        return "explain_pair answer without same_probability"
    return same(answer, expected, where=kind)


def run_load(url: str, query_paths: list[str], gallery_paths: list[str], clients: int, requests: int, workdir: Path,
             rounds: int = 1, num_uploads: int = 6, probe: Callable[[], dict] | None = None) -> dict:
    """Warm up (sequential expected answers), then ``rounds`` rounds of ``clients`` x ``requests``.

    ``query_paths``/``gallery_paths``: image files to upload. ``probe()`` (optional) returns the
    server's ``{"rss_mib": ..., "python_objects": ...}`` (either may be absent); it is called after
    the warm-up and after each round.
    """
    from gradio_client import Client

    sequential = Client(url, verbose=False, download_files=False)
    summary = sequential.predict(api_name="/dataset_summary")
    uploads = upload_files(workdir / "uploads", query_paths, gallery_paths, num_uploads)
    calls = plan(clients, requests, summary["num_query"], summary["num_gallery"], len(uploads))
    distinct = sorted({r for client_calls in calls for r in client_calls}, key=repr)
    probe = probe or dict
    expected = {r: call(sequential, r, uploads) for r in distinct}
    for r in distinct:  # once more: the sequential answers themselves are reproducible
        problem = same(call(sequential, r, uploads), expected[r], where=f"repeat {r}")
        if problem:
            raise AssertionError(problem)
    clients_list = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
    warm = probe()

    latencies: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: list[str] = []
    mismatches: list[str] = []
    lock = threading.Lock()

    def worker(index: int) -> None:
        client = clients_list[index]
        for request in calls[index]:
            start = time.perf_counter()
            try:
                answer = call(client, request, uploads)
            except Exception as exc:  # counted, reported; the run goes on
                with lock:
                    errors.append(f"{request}: {type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - start
            problem = check_answer(request, answer, expected[request])
            with lock:
                latencies[request[0]].append(elapsed)
                if problem:
                    mismatches.append(f"{request}: {problem}")

    after_rounds = []
    wall = []
    for _ in range(rounds):
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(worker, range(clients)))
        wall.append(time.perf_counter() - start)
        after_rounds.append(probe())

    def pct(samples: list[float]) -> dict:
        if not samples:
            return {"n": 0}
        return {"n": len(samples), "p50_s": round(float(np.percentile(samples, 50)), 4),
                "p95_s": round(float(np.percentile(samples, 95)), 4), "max_s": round(max(samples), 4)}

    everything = [t for k in KINDS for t in latencies[k]]
    total = clients * requests * rounds
    return {
        "clients": clients, "requests_per_client": requests, "rounds": rounds, "requests": total,
        "answered": len(everything), "errors": len(errors), "mismatches": len(mismatches),
        "latency": {**{k: pct(latencies[k]) for k in KINDS}, "overall": pct(everything)},
        "throughput_rps": round(total / sum(wall), 2), "wall_s_per_round": [round(w, 2) for w in wall],
        "server_after_warmup": warm, "server_after_each_round": after_rounds,
        "distinct_requests_checked": len(distinct),
        "error_samples": errors[:5], "mismatch_samples": mismatches[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default=None, help="Market-layout dataset (default: a demo-sized generated set)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from app_server import RssSampler, bench_inputs, dataset_images, rss_mib, served_app

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, data, note = bench_inputs(args.checkpoint, args.data, Path(tmp))
        extra = ["--topk", str(args.topk), "--ranking-cache", "0"]
        with served_app(checkpoint, data, Path(tmp) / "cache", extra, log_file=Path(tmp) / "app.log") as (url, proc, _):
            loaded = rss_mib(proc.pid)
            query_paths, gallery_paths = dataset_images(data)
            with RssSampler(proc.pid) as sampler:
                results = run_load(url, query_paths, gallery_paths, args.clients, args.requests, Path(tmp),
                                   rounds=args.rounds, probe=lambda: {"rss_mib": round(rss_mib(proc.pid), 1)})
            rss = [r["rss_mib"] for r in results["server_after_each_round"]]
            warm = results["server_after_warmup"]["rss_mib"]
            results["rss_mib"] = {"app_loaded": round(loaded, 1), "after_warmup": warm, "after_each_round": rss,
                                  "peak": round(sampler.peak, 1), "growth": round(rss[-1] - warm, 1)}
            results.update(checkpoint=note, topk=args.topk, device="cpu", app="separate process (python app.py)")
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if results["errors"] == 0 and results["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
