"""``casn search``: rank any folder of person crops for query images.

JSON output (``--json``): for one ``--query`` an object ``{"query", "results", "gallery",
"num_gallery", "rerank_k", "attention_weight", "threshold"}`` (plus ``query_pid``/``query_camid``
when the query's name is Market-style, ``excluded`` when the query is a gallery image left out of
its own ranking), with ``results`` a list of ``{"path" (relative to --gallery), "rank",
"feature_distance", "distance", "attention_distance"}`` (plus ``pid``/``camid`` when parsed); for
several ``--query`` a list of such objects, in the order given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from casn_core.atomic import write_text_atomic
from casn_core.commands import show_library_log
from casn_core.engine.extraction import ExtractionConfig
from casn_core.models.torchreid_adapter import add_arch_arguments
from casn_core.search.features import DEFAULT_CACHE_DIR
from casn_core.search.index import DEFAULT_TOPK, RankingChoice, SearchResult, open_search_index
from casn_core.store import MAP_DTYPE_CHOICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``casn search``."""
    parser.add_argument("--checkpoint", required=True, help="CASN checkpoint (.pt)")
    parser.add_argument("--gallery", required=True,
                        help="folder of person crops, searched recursively (jpg, jpeg, png, bmp, webp); "
                             "no naming convention needed, Market-style names give labels when present")
    parser.add_argument("--query", required=True, action="append",
                        help="query image; repeat for several (a gallery image's path ranks the others)")
    parser.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="results shown per query (default 20)")
    parser.add_argument("--rerank-k", type=int, default=None,
                        help="K: gallery images re-scored with Siamese attention. With neither this nor "
                             "--attention-weight, the checkpoint's stored (w, K) pair, else the paper's (w = 1, "
                             "every image); with one of them, the other is the paper's")
    parser.add_argument("--attention-weight", type=float, default=None,
                        help="w in d = norm(d_f) + w norm(d_a) (see --rerank-k for the default)")
    parser.add_argument("--threshold", type=float, default=None, help="alignment threshold (default: the checkpoint's)")
    parser.add_argument("--json", default=None, help="write the results as JSON (see casn_core.commands.search)")
    parser.add_argument("--figure", default=None, help="write a ranked strip PNG (one row per query)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="feature cache folder, outside the gallery (default .cache/search)")
    parser.add_argument("--map-dtype", default="auto", choices=MAP_DTYPE_CHOICES,
                        help="dtype of the cached maps (auto: float32 while they take <= 4 GiB, else bfloat16)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_arch_arguments(parser)


def format_result(result: SearchResult) -> str:
    """The ranked list as text: rank, combined distance, feature distance, path (and labels)."""
    labels = "" if result.query_pid is None else f" (pid {result.query_pid}, camera {result.query_camid})"
    lines = [f"query {result.query}{labels}: top {len(result.results)} of {result.num_gallery} "
             f"(feature + Siamese attention on the top {result.rerank_k}, w = {result.attention_weight:g})",
             f"{'rank':>5} {'distance':>9} {'feature':>8}  path"]
    for hit in result.results:
        tag = "" if hit.pid is None else f"  [pid {hit.pid} c{hit.camid}]"
        lines.append(f"{hit.rank:>5} {hit.distance:>9.4f} {hit.feature_distance:>8.4f}  {hit.path}{tag}")
    return "\n".join(lines)


def write_json(payload: object, path: str | os.PathLike) -> Path:
    """Write JSON atomically (:mod:`casn_core.atomic`)."""
    return write_text_atomic(path, json.dumps(payload, indent=1) + "\n")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``casn search``; returns the exit status (1 with a message naming the bad input)."""
    from casn_core.checkpoint import CheckpointError
    from casn_core.images import ImageInputError

    if args.topk < 1:
        print(f"error: --topk must be >= 1, got {args.topk}", file=sys.stderr)
        return 1
    show_library_log()  # the library's messages (skipped files, cache, store) reach stderr
    log = lambda message: print(message, file=sys.stderr)  # noqa: E731 -- results go to stdout, the log to stderr
    try:
        # --input-size is a torchreid checkpoint's (with --arch); a CASN checkpoint brings its own
        extraction = ExtractionConfig(input_size=args.input_size if args.arch else None, batch_size=args.batch_size,
                                      map_dtype=args.map_dtype, progress=not args.no_progress)
        ranking = RankingChoice(attention_weight=args.attention_weight, rerank_k=args.rerank_k,
                                threshold=args.threshold)
        index = open_search_index(args.checkpoint, args.gallery, args.cache_dir, args.device, arch=args.arch,
                                  extraction=extraction, ranking=ranking)
        results = [index.search(query, args.topk) for query in args.query]
    except (CheckpointError, ImageInputError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n\n".join(format_result(result) for result in results))
    if args.json:
        documents = [result.to_json() for result in results]
        write_json(documents[0] if len(documents) == 1 else documents, args.json)
        log(f"wrote {args.json}")
    if args.figure:
        from casn_core.search.figure import save_figure, strip_figure

        images = []
        for query in args.query:
            own = index.gallery_index(query)
            images.append(index.images[own].path if own is not None else query)
        save_figure(strip_figure(results, args.gallery, images, max_results=min(args.topk, 20)), args.figure)
        log(f"wrote {args.figure}")
    return 0
