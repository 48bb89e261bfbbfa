"""Command line and launch: ``python app.py [--checkpoint CKPT --data DIR --host --port --topk --share]``.

Locked down by default: binds 127.0.0.1, never shares publicly unless ``--share`` is given, Gradio
analytics and hub look-ups off, and the only local folders it serves are the dataset's and its own
cache (``allowed_paths``); Gradio's upload/cache folder holds what the app itself returns.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

import app.offline  # noqa: F401  (before gradio)

from app.demo import DEFAULT_CACHE_DIR, DEFAULT_CHECKPOINT, ensure_demo_data
from app.uploads import MAX_UPLOAD_BYTES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="app.py", description="CASN explainability app (Gradio).")
    parser.add_argument("--checkpoint", default=None,
                        help=f"CASN checkpoint (default: the bundled {DEFAULT_CHECKPOINT.relative_to(DEFAULT_CHECKPOINT.parents[1])})")
    parser.add_argument("--data", default=None,
                        help="Market-layout dataset root with query/ and bounding_box_test/ (default: the demo set, "
                             "generated into the cache folder at first start)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--topk", type=int, default=10, help="gallery images re-ranked with Siamese attention (K)")
    parser.add_argument("--threshold", type=float, default=None, help="alignment threshold (default: the checkpoint's)")
    parser.add_argument("--attention-weight", type=float, default=1.0, help="w in d = norm(d_f) + w norm(d_a)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="feature cache, demo data and exports")
    parser.add_argument("--share", action="store_true", help="opt in to a public gradio.live link (off by default)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.topk < 1:
        parser.error("--topk must be >= 1")
    return args


def build(checkpoint: str | os.PathLike, data: str | os.PathLike, cache_dir: str | os.PathLike, topk: int = 10,
          threshold: float | None = None, attention_weight: float = 1.0, max_upload_bytes: int = MAX_UPLOAD_BYTES,
          progress: bool = True, log=print):
    """Load everything and build the page: ``(gr.Blocks, App handlers)``."""
    from app.ranking import summarise_dataset
    from app.state import load_state
    from app.ui import App, build_ui

    state = load_state(checkpoint, data, cache_dir, topk=topk, threshold=threshold,
                       attention_weight=attention_weight, progress=progress, log=log)
    summary = summarise_dataset(state, progress=progress)
    handlers = App(state, summary, max_upload_bytes)
    return build_ui(handlers), handlers


def launch_kwargs(handlers, host: str = "127.0.0.1", port: int = 7860, share: bool = False) -> dict:
    """``Blocks.launch`` arguments: only the dataset and cache folders are served from disk."""
    from app.ui import CSS

    return {
        "server_name": host, "server_port": port, "share": bool(share), "show_error": True, "ssr_mode": False,
        "allowed_paths": [str(handlers.state.data_root), str(handlers.state.cache_dir)],
        "max_file_size": int(handlers.max_upload_bytes * 1.25) + 2**20, "css": CSS,
        "footer_links": ["api"],
    }


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from casn_core.checkpoint import CheckpointError
    from casn_core.images import ImageInputError

    from app.state import DatasetError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    cache_dir = Path(args.cache_dir)
    checkpoint = Path(args.checkpoint) if args.checkpoint else DEFAULT_CHECKPOINT
    if not checkpoint.is_file():
        hint = ("the bundled demo checkpoint is missing from this checkout; pass --checkpoint CKPT"
                if args.checkpoint is None else "no such file")
        print(f"error: checkpoint {checkpoint}: {hint}", file=sys.stderr)
        return 2
    try:
        data = Path(args.data) if args.data else ensure_demo_data(cache_dir)
        demo, handlers = build(checkpoint, data, cache_dir, args.topk, args.threshold, args.attention_weight)
    except (CheckpointError, DatasetError, ImageInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: binding {args.host}: the app is reachable from other machines on this network",
              file=sys.stderr)
    if args.share:
        print("warning: --share creates a public gradio.live link to this app", file=sys.stderr)
    print(f"ready in {time.perf_counter() - start:.1f} s: http://{args.host}:{args.port}")
    demo.queue(default_concurrency_limit=2).launch(**launch_kwargs(handlers, args.host, args.port, args.share))
    return 0
