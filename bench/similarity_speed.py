"""Pairs per second of the similarity decomposition against the Siamese-attention fast path.

One query against ``--gallery`` cached gallery maps at ResNet50 size (default 1 x 1024, maps
2048 x 16 x 8, stored channels-last as ``casn_core.engine.extraction.extract`` caches them), a real
``build_model("resnet50", pretrained="none")`` in eval mode for the head and the pooling:

- decomposition: ``casn_core.attention.similarity.similarity_grid`` (similarity, both maps and both
  row vectors of every pair; Stylianou et al., WACV 2019);
- baseline: ``casn_core.attention.pair_attention_grid`` on the same grid (``keep_maps=True``: the
  Siamese maps, as an explanation view needs them).

Both get the cached pooled features ``f``, as ranking holds them. Timing: one warm-up call, then
``--repeats`` timed calls of each, interleaved so that both see the same machine load; the median is
reported (``*_best``: the fastest). ``ratio`` = decomposition pairs/s / baseline pairs/s (the target
is >= 1). One JSON line per maps dtype. For speed on glibc machines run with
``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=68719476736``.

    python bench/similarity_speed.py --threads 1 [--repeats 5 --device cpu --dtypes float32,bfloat16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from casn_core.attention import pair_attention_grid
from casn_core.attention.similarity import similarity_grid
from casn_core.engine.inference import resolve_device
from casn_core.models import build_model
from pair_attention import random_maps  # bench/ is on sys.path when this runs as a script


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=1)
    parser.add_argument("--gallery", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=2048)
    parser.add_argument("--height", type=int, default=16)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    args = parser.parse_args()
    for name in ("queries", "gallery", "channels", "height", "width", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet50", num_classes=751, pretrained="none").eval().to(device)
    k, h, w = args.channels, args.height, args.width
    if k != model.spec.channels:
        raise SystemExit(f"--channels {k}: the resnet50 head needs {model.spec.channels}")
    queries = random_maps(args.queries, k, h, w, 1).to(device)
    gallery = random_maps(args.gallery, k, h, w, 2).to(device)
    pairs = args.queries * args.gallery
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name.strip(), None)
        if not isinstance(dtype, torch.dtype):
            raise SystemExit(f"--dtypes: unknown dtype {name!r}")
        q = queries.to(dtype).contiguous(memory_format=torch.channels_last)
        g = gallery.to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            fq, fg = model.pool(q.float()), model.pool(g.float())

            def run_similarity() -> None:
                similarity_grid(model, q, g, query_features=fq, gallery_features=fg)

            def run_attention() -> None:
                pair_attention_grid(model, q, g, query_features=fq, gallery_features=fg, keep_maps=True)

            run_similarity(), run_attention()  # warm-up
            sim_times, att_times = [], []
            for _ in range(args.repeats):
                sim_times.append(_timed(run_similarity, device))
                att_times.append(_timed(run_attention, device))
        sim_rate = pairs / statistics.median(sim_times)
        att_rate = pairs / statistics.median(att_times)
        print(json.dumps({
            "bench": "similarity_speed",
            "grid": f"{args.queries}x{args.gallery}",
            "maps": [k, h, w],
            "dtype": name.strip(),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "pairs_per_s": round(sim_rate, 1),
            "pairs_per_s_best": round(pairs / min(sim_times), 1),
            "baseline_pairs_per_s": round(att_rate, 1),
            "baseline_pairs_per_s_best": round(pairs / min(att_times), 1),
            "ratio": round(sim_rate / att_rate, 3),
            "repeats": args.repeats,
        }), flush=True)


if __name__ == "__main__":
    main()
