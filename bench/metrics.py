"""Seconds of CMC/mAP/mINP (``casn_core.metrics.evaluate_rank``) against a plain per-query loop.

The problem is Market-1501 sized and random: 3,368 queries x 15,913 gallery images (float32
distances, uniform in [0, 1)), 750 identities, 6 cameras, gallery id 0 = distractor. ``seconds`` is
the best of ``--repeats`` runs of :func:`evaluate_rank`. ``loop_seconds`` is the plain-loop
implementation below (torchreid's ``eval_market1501`` structure: per query, a stable argsort of
the row, drop same id + same camera, then cumulative sums and a Python list for AP). The loop's
cost is linear in the number of queries, so by default it runs on the first ``--loop-queries``
queries and is scaled to the full query set (``loop_extrapolated_from_queries`` says how many it
ran on; null when it ran on all). Both are checked to agree on that subset (``agrees``).

    python bench/metrics.py [--loop-queries 400] [--repeats 3] [--seed 0]

Prints one JSON line: ``seconds``, ``loop_seconds``, ``ratio`` (loop_seconds / seconds),
``num_query``, ``num_gallery``, ``loop_extrapolated_from_queries``, ``agrees``, ``torch_threads``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from casn_core.metrics import evaluate_rank


def loop_evaluate(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                  g_camids: np.ndarray, max_rank: int = 50) -> dict:
    """Plain per-query Market-1501 evaluation (torchreid's ``eval_market1501`` loop, stable ties)."""
    all_cmc, all_ap, all_inp = [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        keep = ~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))
        raw_cmc = (g_pids[order][keep] == q_pids[q]).astype(np.int32)
        if not raw_cmc.any():
            continue
        cmc = raw_cmc.cumsum()
        last = int(np.max(np.where(raw_cmc == 1)))
        all_inp.append(cmc[last] / (last + 1.0))
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        precision = np.asarray([x / (i + 1.0) for i, x in enumerate(raw_cmc.cumsum())]) * raw_cmc
        all_ap.append(precision.sum() / raw_cmc.sum())
    return {"cmc": np.asarray(all_cmc, dtype=np.float64).mean(0), "mAP": float(np.mean(all_ap)),
            "mINP": float(np.mean(all_inp)), "num_valid_queries": len(all_ap)}


def market_sized_problem(seed: int, num_query: int = 3368, num_gallery: int = 15913, num_ids: int = 750,
                         num_cams: int = 6):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, num_ids + 1, num_query)
    g_pids = rng.integers(0, num_ids + 1, num_gallery)
    q_camids = rng.integers(0, num_cams, num_query)
    g_camids = rng.integers(0, num_cams, num_gallery)
    distmat = rng.random((num_query, num_gallery), dtype=np.float32)
    return distmat, q_pids, g_pids, q_camids, g_camids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop-queries", type=int, default=400,
                        help="queries the plain loop runs on before scaling (0 = all of them)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    distmat, q_pids, g_pids, q_camids, g_camids = market_sized_problem(args.seed)
    num_query, num_gallery = distmat.shape

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
        times.append(time.perf_counter() - start)
    seconds = min(times)

    subset = num_query if args.loop_queries <= 0 else min(args.loop_queries, num_query)
    start = time.perf_counter()
    loop = loop_evaluate(distmat[:subset], q_pids[:subset], g_pids, q_camids[:subset], g_camids, max_rank=50)
    loop_seconds = (time.perf_counter() - start) * num_query / subset

    fast = evaluate_rank(distmat[:subset], q_pids[:subset], g_pids, q_camids[:subset], g_camids, max_rank=50)
    agrees = (fast["num_valid_queries"] == loop["num_valid_queries"]
              and bool(np.allclose(fast["cmc"], loop["cmc"], rtol=0, atol=1e-9))
              and abs(fast["mAP"] - loop["mAP"]) < 1e-9 and abs(fast["mINP"] - loop["mINP"]) < 1e-9)

    print(json.dumps({
        "seconds": round(seconds, 4),
        "loop_seconds": round(loop_seconds, 3),
        "ratio": round(loop_seconds / seconds, 1),
        "num_query": num_query,
        "num_gallery": num_gallery,
        "loop_extrapolated_from_queries": None if subset == num_query else subset,
        "agrees": agrees,
        "torch_threads": torch.get_num_threads(),
    }))

if __name__ == "__main__":
    main()
