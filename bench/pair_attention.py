"""Pairs per second of the batched Siamese-attention fast path against the literal oracle.

Both start from the same cached ResNet50-sized feature maps (default 2048 x 16 x 8, a resnet50 CASN
model in eval mode, no backbone pass):

- fast: ``casn_core.attention.pair_attention_grid`` on N queries x M gallery maps (every pair's
  indicator, maps, row vectors, aligned vectors and distance); the pooled features ``f`` are passed
  in as cached (they are the retrieval features ranking already holds; computing them is per image,
  not per pair);
- oracle: ``casn_core.attention.oracle_pair_attention``, one pair at a time with full autograd.

Prints one JSON line per storage dtype of the cached maps (float32, bfloat16). Timing: a warm-up
call, then ``--repeats`` timed calls with ``time.perf_counter``; the median is reported (the best is
included as ``*_best``). The oracle is timed next to each fast measurement. For speed on glibc machines run with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736`` (large temporaries then
stay in the heap instead of being mmap'ed and page-faulted on every call).

    python bench/pair_attention.py [--grids 32x256,1x1024 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from casn_core.attention import oracle_pair_attention, pair_attention_grid
from casn_core.models import build_model
from casn_core.models.casn import randomise_bce_head


def random_maps(n: int, k: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Non-negative (post-ReLU) maps with a random vertical profile per image."""
    gen = torch.Generator().manual_seed(seed)
    profile = torch.rand(n, 1, h, 1, generator=gen) * 2
    return torch.relu(torch.randn(n, k, h, w, generator=gen)) * profile


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", default="32x256,1x1024",
                        help="comma-separated NxM grids (N queries x M gallery maps); 1xM is the ranking/app shape")
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--oracle-pairs", type=int, default=40, help="pairs timed one by one per oracle repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=751, pretrained="none").eval()
    randomise_bce_head(model)
    k, h, w = args.channels, args.height, args.width
    grids = [tuple(int(v) for v in item.lower().split("x")) for item in args.grids.split(",")]
    max_n, max_m = max(n for n, _ in grids), max(m for _, m in grids)
    queries = random_maps(max_n, k, h, w, 1)
    gallery = random_maps(max_m, k, h, w, 2)
    with torch.no_grad():
        feats_q, feats_g = model.pool(queries), model.pool(gallery)

    # Oracle: float32 maps, one pair at a time, over distinct (query, gallery) pairs.
    pairs = [(i % max_n, (i * 7) % max_m) for i in range(args.oracle_pairs)]

    def run_oracle() -> None:
        for i, j in pairs:
            oracle_pair_attention(model, queries[i], gallery[j])

    for (n, m), name in ((grid, name) for grid in grids for name in args.dtypes.split(",")):
        num_pairs = n * m
        dtype = getattr(torch, name.strip())
        # channels-last, as casn_core.engine.extraction.extract caches them
        q = queries[:n].to(dtype).contiguous(memory_format=torch.channels_last)
        g = gallery[:m].to(dtype).contiguous(memory_format=torch.channels_last)
        fq, fg = feats_q[:n], feats_g[:m]

        def run_fast() -> None:
            pair_attention_grid(model, q, g, query_features=fq, gallery_features=fg, keep_maps=False)

        # The oracle is re-timed next to every fast measurement so that both see the same machine load.
        oracle_times = _time(run_oracle, args.repeats)
        oracle_rate = args.oracle_pairs / statistics.median(oracle_times)
        times = _time(run_fast, args.repeats)
        fast = num_pairs / statistics.median(times)
        print(json.dumps({
            "bench": "pair_attention",
            "fast_pairs_per_s": round(fast, 1),
            "fast_pairs_per_s_best": round(num_pairs / min(times), 1),
            "oracle_pairs_per_s": round(oracle_rate, 1),
            "oracle_pairs_per_s_best": round(args.oracle_pairs / min(oracle_times), 1),
            "ratio": round(fast / oracle_rate, 1),
            "dtype": name.strip(),
            "threads": torch.get_num_threads(),
            "num_pairs": num_pairs,
            "queries": n,
            "gallery": m,
            "map": [k, h, w],
            "oracle_dtype": "float32",
            "layout": "channels_last",
            "malloc_tuned": "MALLOC_MMAP_THRESHOLD_" in os.environ,
        }), flush=True)

if __name__ == "__main__":
    main()
