"""App under load: many ``gradio_client`` clients at once, every answer checked, memory watched.

Launches the app in this process on a free 127.0.0.1 port (``app.testing.running_app``), computes
the expected answer of every request with one client, one request at a time, then runs
``--clients`` threads, each with its own ``gradio_client.Client``, each making ``--requests``
requests that cycle through rankings (``/rank_query``), cached-pair explanations
(``/explain_pair``) and uploads (``/explain_upload``: both images uploaded, decoded and run through
the backbone). Every answer is compared with the sequential one (rankings entry by entry, floats to
1e-5 relative). The rankings memo is cleared before each round so rankings are recomputed under load.

Memory is this process's resident set (``VmRSS`` in ``/proc/self/status``; it holds the server and
the clients), sampled every 20 ms during the rounds; ``rss_growth_mib`` is the RSS after the last
round minus the RSS after the warm-up (sequential) pass.

    python bench/app_load.py [--checkpoint CKPT] [--data DIR] [--clients 16] [--requests 10] [--rounds 2]

Without ``--checkpoint`` the bundled ``checkpoints/casn_mobilenetv2_synth.pt`` is used, or, when it
is missing, a randomly initialised MobileNetV2 CASN at 256x128 (reported as such). Without
``--data`` the demo set (60 identities, 480 query + gallery images) is generated into the cache.
Prints JSON: p50/p95 latency (seconds) per request kind and overall, errors, mismatches, RSS (MiB).
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import math
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import app.offline  # noqa: E402,F401  (before gradio)

import numpy as np  # noqa: E402

KINDS = ("rank", "explain", "upload")


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


class RssSampler:
    """Samples :func:`rss_mib` in a background thread; ``peak`` is the largest value seen."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mib())


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


def run_load(url: str, handlers, clients: int, requests: int, workdir: Path, rounds: int = 1,
             num_uploads: int = 6) -> dict:
    """Warm up (sequential expected answers), then ``rounds`` rounds of ``clients`` x ``requests``."""
    from gradio_client import Client

    state = handlers.state
    uploads = upload_files(workdir / "uploads", state.query.paths, state.gallery.paths, num_uploads)
    calls = plan(clients, requests, len(state.query), len(state.gallery), len(uploads))
    distinct = sorted({r for client_calls in calls for r in client_calls}, key=repr)

    sequential = Client(url, verbose=False, download_files=False)
    expected = {r: call(sequential, r, uploads) for r in distinct}
    for r in distinct:  # once more: the sequential answers themselves are reproducible
        problem = same(call(sequential, r, uploads), expected[r], where=f"repeat {r}")
        if problem:
            raise AssertionError(problem)
    clients_list = [Client(url, verbose=False, download_files=False) for _ in range(clients)]
    rss_warm = rss_mib()

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

    rss_after_rounds = []
    objects_after_rounds = []  # Python objects tracked by gc: a leak of objects shows here, not allocator growth
    wall = []
    with RssSampler() as sampler:
        for _ in range(rounds):
            handlers._rankings.clear()  # rankings are recomputed under load, not served from the memo
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(worker, range(clients)))
            wall.append(time.perf_counter() - start)
            gc.collect()
            rss_after_rounds.append(rss_mib())
            objects_after_rounds.append(len(gc.get_objects()))

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
        "rss_mib": {"after_warmup": round(rss_warm, 1), "after_each_round": [round(r, 1) for r in rss_after_rounds],
                    "peak": round(sampler.peak, 1), "growth": round(rss_after_rounds[-1] - rss_warm, 1)},
        "python_objects_after_each_round": objects_after_rounds,
        "distinct_requests_checked": len(distinct),
        "error_samples": errors[:5], "mismatch_samples": mismatches[:5],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--data", default=None, help="Market-layout dataset (default: the demo set)")
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=10, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--topk", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    from app.testing import bench_inputs, running_app

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(args.cache_dir or tmp)
        checkpoint, data, note = bench_inputs(args.checkpoint, args.data, cache_dir, Path(tmp), log=lambda *_: None)
        rss_start = rss_mib()
        with running_app(checkpoint, data, cache_dir, topk=args.topk) as (url, handlers):
            rss_loaded = rss_mib()
            results = run_load(url, handlers, args.clients, args.requests, Path(tmp), rounds=args.rounds)
            results.update(checkpoint=note, backbone=handlers.state.backbone,
                           input_size=list(handlers.state.input_size), num_query=len(handlers.state.query),
                           num_gallery=len(handlers.state.gallery), topk=args.topk,
                           torch_threads=torch.get_num_threads(), device="cpu")
            results["rss_mib"].update(before_app=round(rss_start, 1), app_loaded=round(rss_loaded, 1))
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if results["errors"] == 0 and results["mismatches"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
