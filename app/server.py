"""Command line and launch: ``python app.py [--checkpoint CKPT --data DIR --host --port --topk --share]``.

Locked down by default: binds 127.0.0.1, never shares publicly unless ``--share`` is given, Gradio
analytics and hub look-ups off, and the only local folders it serves are the dataset's and its own
cache (``allowed_paths``); Gradio's upload/cache folder holds what the app itself returns.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)

from app.demo import DEFAULT_CACHE_DIR, DEFAULT_CHECKPOINT, DEFAULT_STORE_DIR, ensure_demo_data
from app.settings import AppSettings, resolve


def _topk_argument(text: str) -> int | str:
    """``--topk``: a positive integer or ``all`` (parsed here: the rankings module would import torch)."""
    if text.strip().lower() == "all":
        return "all"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'all', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 or 'all', got {value}")
    return value


def _input_size_argument(text: str) -> str:
    """``--input-size HxW`` checked here (casn_core parses it again; importing it here would import torch)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"must be HxW with positive integers (e.g. 256x128), got {text!r}")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="app.py", description="CASN explainability app (Gradio).")
    parser.add_argument("--checkpoint", default=None,
                        help=f"CASN checkpoint (default: the bundled {DEFAULT_CHECKPOINT.relative_to(DEFAULT_CHECKPOINT.parents[1])})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", default=None,
                        help="Market-layout dataset root with query/ and bounding_box_test/ (default: the demo set, "
                             "generated into the cache folder at first start)")
    source.add_argument("--gallery", default=None,
                        help="any folder of person crops (searched recursively; jpg, png, bmp, webp; no naming "
                             "convention needed): search it with an uploaded image or one of its own images")
    parser.add_argument("--arch", default=None,
                        help="read --checkpoint as a torchreid checkpoint of this model name (e.g. osnet_x1_0); "
                             "needs the torchreid extra. A checkpoint of `casn fit-head` needs no --arch")
    parser.add_argument("--input-size", type=_input_size_argument, default=None,
                        help="with --arch: HxW the model was trained at (default 256x128, torchreid's)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--topk", type=_topk_argument, default=None,
                        help="K, gallery images re-ranked with Siamese attention (an integer or 'all'). With neither "
                             "--topk nor --attention-weight the app uses the checkpoint's stored (w, K) pair, else the "
                             "paper's ranking (w = 1, K = all); with one of them, the other is the paper's")
    parser.add_argument("--threshold", type=float, default=None, help="alignment threshold (default: the checkpoint's)")
    parser.add_argument("--attention-weight", type=float, default=None,
                        help="w in d = norm(d_f) + w norm(d_a) (see --topk for the default)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="demo data and exports")
    parser.add_argument("--store-dir", default=str(DEFAULT_STORE_DIR),
                        help="map stores (casn_core.store), shared with `python -m casn_core eval --store-dir` "
                             "(default: the repository's .cache/store, eval's default when run from the repository)")
    parser.add_argument("--map-dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"),
                        help="dtype of the stored maps (auto: float32 while the gallery's float32 maps take <= 4 GiB, "
                             "else bfloat16: the same rule as eval's, so the two share one store)")
    parser.add_argument("--share", action="store_true", help="opt in to a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ranking-cache", type=int, default=512,
                        help="rankings memoised per query (LRU; 0 = recompute every request, as benchmarks want)")
    args = parser.parse_args(argv)
    if args.ranking_cache < 0:
        parser.error("--ranking-cache must be >= 0")
    return args


def build_service(checkpoint: str | os.PathLike, data: str | os.PathLike, cache_dir: str | os.PathLike,
                  settings: AppSettings | None = None, **overrides):
    """Load the checkpoint and data: the Gradio-free :class:`app.service.AppService`.

    ``settings`` (:class:`app.settings.AppSettings`; keyword ``overrides`` replace its fields). The
    dataset summary (every query's CASN ranking scored) comes from its cache beside the map stores, else
    is computed in a background thread (``background_summary=False``: here, before returning); requests
    that need it wait for it (:class:`app.summary.SummaryJob`).
    """
    from app.service import AppService
    from app.state import load_state
    from app.summary import SummaryJob

    config = resolve(settings, **overrides)
    state = load_state(checkpoint, data, cache_dir, config)
    summary = SummaryJob(state, background=config.background_summary,
                         progress=config.progress and not config.background_summary)
    return AppService(state, summary, config.max_upload_bytes, config.ranking_cache)


def build_gallery(checkpoint: str | os.PathLike, gallery: str | os.PathLike, cache_dir: str | os.PathLike,
                  settings: AppSettings | None = None, **overrides):
    """Unlabelled mode: index any folder of images and build its search page: ``(gr.Blocks, SearchService)``."""
    from app.search import SearchService, open_gallery
    from app.search_ui import build_search_ui

    config = resolve(settings, **overrides)
    index, payload = open_gallery(checkpoint, gallery, cache_dir, config)
    service = SearchService(index, cache_dir, config.max_upload_bytes, payload=payload)
    return build_search_ui(service), service


def build(checkpoint: str | os.PathLike, data: str | os.PathLike, cache_dir: str | os.PathLike,
          settings: AppSettings | None = None, **overrides):
    """Load everything and build the page: ``(gr.Blocks, AppService)``; ``arch``: a torchreid checkpoint."""
    from app.search import SearchService, index_from_state
    from app.ui import build_ui

    config = resolve(settings, **overrides)
    service = build_service(checkpoint, data, cache_dir, config)
    search = SearchService(index_from_state(service.state), service.state.cache_dir, config.max_upload_bytes,
                           payload=service.state.payload)
    return build_ui(service, search), service


def launch_kwargs(service, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> dict:
    """``Blocks.launch`` arguments: only the dataset and cache folders are served from disk."""
    from app.ui import CSS

    return {
        "server_name": host, "server_port": port, "share": bool(share), "show_error": True, "ssr_mode": False,
        "allowed_paths": [str(folder) for folder in service.served_folders],
        "max_file_size": int(service.max_upload_bytes), "css": CSS,
        "footer_links": ["api"],
    }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """``python app.py``; ``started``: ``time.perf_counter()`` at the process's first line, so the
    start-up line includes the imports (torch, torchvision and gradio: most of a warm start)."""
    started = time.perf_counter() if started is None else started
    args = parse_args(argv)
    if not logging.getLogger().handlers:  # the library's and the app's messages (map stores, features,
        # demo data, dataset summary) on stderr; gradio's and httpx's INFO stay quiet
        logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
        for name in ("casn_core", "app"):
            logging.getLogger(name).setLevel(logging.INFO)
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not checkpoint.is_file():  # before the imports: a mistyped path is answered at once
        hint = ("the bundled demo checkpoint is missing from this checkout; pass --checkpoint CKPT"
                if args.checkpoint is None else "no such file")
        print(f"error: checkpoint {checkpoint}: {hint}", file=sys.stderr)
        return 2
    import gradio  # noqa: F401  (imported here so that the start-up line can say what the imports took)

    import app.ui  # noqa: F401
    from app.core import CheckpointError, ImageInputError, SearchError
    from app.state import DatasetError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    imported = time.perf_counter()
    cache_dir = Path(args.cache_dir)
    try:
        settings = AppSettings(topk=args.topk, threshold=args.threshold, attention_weight=args.attention_weight,
                               map_dtype=args.map_dtype, arch=args.arch, input_size=args.input_size,
                               ranking_cache=args.ranking_cache, store_dir=args.store_dir)
        if args.gallery:
            demo, service = build_gallery(checkpoint, args.gallery, cache_dir, settings)
        else:
            data = Path(args.data) if args.data else ensure_demo_data(cache_dir)
            demo, service = build(checkpoint, data, cache_dir, settings)
    except (CheckpointError, DatasetError, ImageInputError, SearchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the app is reachable from other machines on this network",
              file=sys.stderr)
    if args.share:
        print("warning: --share creates a public gradio.live link to this app", file=sys.stderr)
    ready = time.perf_counter()
    print(f"ready in {ready - started:.1f} s (imports {imported - started:.1f} s, model, map stores and page "
          f"{ready - imported:.1f} s): http://{args.host}:{args.port}")
    demo.queue(default_concurrency_limit=2).launch(**launch_kwargs(service, args.host, args.port, args.share))
    return 0
