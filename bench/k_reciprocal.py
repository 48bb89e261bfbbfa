"""Seconds and peak memory of ``casn_core.k_reciprocal`` against torchreid's copy of the reference code.

Both re-rank the same features: generated identities (``--ids`` centres, Gaussian spread) split into
query and gallery, 1280-d as MobileNetV2's. The reference takes the three distance matrices (computed
outside its timing, from the same normalised features); ours takes the features. Each method runs in a
child process of its own, so that its memory is its own: ``*_peak_rss_gb`` is the child's peak resident
size (``ru_maxrss``) minus its resident size just before the call.

Prints one JSON line per size: ``images``, ``ours_s``, ``reference_s``, ``ratio`` (reference / ours),
``ours_peak_rss_gb``, ``reference_peak_rss_gb``, ``max_abs_diff`` (of the two re-ranked distances) and
``rank1_agree`` (share of queries whose first gallery image is the same).

    python bench/k_reciprocal.py [--sizes 500x2500,1000x5000 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from casn_core.k_reciprocal import k_reciprocal_distance


def clustered(images: int, ids: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(ids, dim, generator=gen)
    labels = torch.randint(0, ids, (images,), generator=gen)
    return centres[labels] + 0.8 * torch.randn(images, dim, generator=gen)


def resident_gb() -> float:
    with open("/proc/self/statm") as stat:
        return int(stat.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def child(args: argparse.Namespace) -> None:
    """Run one method on one size; save its distances to ``args.out`` and print its time and memory."""
    torch.set_num_threads(args.threads)
    num_query, num_gallery = (int(x) for x in args.sizes.split("x"))
    features = clustered(num_query + num_gallery, max(2, (num_query + num_gallery) // 8), args.dim, args.seed)
    query, gallery = features[:num_query], features[num_query:]
    if args.child == "ours":
        call = lambda: k_reciprocal_distance(query, gallery)  # noqa: E731
    else:
        with warnings.catch_warnings():  # torchreid warns at import that its Cython ranking is unavailable
            warnings.simplefilter("ignore", UserWarning)
            from torchreid.reid.utils.rerank import re_ranking
        unit_q, unit_g = F.normalize(query, dim=1), F.normalize(gallery, dim=1)
        dist = lambda a, b: torch.cdist(a, b).numpy()  # noqa: E731  Euclidean, as the reference expects
        q_g, q_q, g_g = dist(unit_q, unit_g), dist(unit_q, unit_q), dist(unit_g, unit_g)
        call = lambda: re_ranking(q_g, q_q, g_g, 20, 6, 0.3)  # noqa: E731
    before = resident_gb()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    np.save(args.out, result)
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak - before}))


def run_child(method: str, size: str, args: argparse.Namespace, out: Path) -> tuple[dict, np.ndarray]:
    command = [sys.executable, __file__, "--child", method, "--sizes", size, "--dim", str(args.dim),
               "--threads", str(args.threads), "--seed", str(args.seed), "--out", str(out)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(printed.strip().splitlines()[-1]), np.load(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500x2500,1000x5000", help="QUERYxGALLERY, comma-separated")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes.split(","):
            num_query, num_gallery = (int(x) for x in size.split("x"))
            ours_run, ours = run_child("ours", size, args, Path(folder) / "ours.npy")
            reference_run, reference = run_child("reference", size, args, Path(folder) / "reference.npy")
            print(json.dumps({
                "images": num_query + num_gallery, "query": num_query, "gallery": num_gallery,
                "threads": args.threads, "ours_s": round(ours_run["seconds"], 3),
                "reference_s": round(reference_run["seconds"], 3),
                "ratio": round(reference_run["seconds"] / ours_run["seconds"], 2),
                "ours_peak_rss_gb": round(ours_run["peak_rss_gb"], 3),
                "reference_peak_rss_gb": round(reference_run["peak_rss_gb"], 3),
                "max_abs_diff": float(np.abs(ours - reference).max()),
                "rank1_agree": float((ours.argmin(1) == reference.argmin(1)).mean()),
            }), flush=True)


if __name__ == "__main__":
    main()
