"""``casn synth``: write a procedural Market-layout dataset with person masks (docs/design.md, sec. 6)."""
from __future__ import annotations

import argparse
import sys
import time

from casn_core.data.synth import MAX_CAMERAS, SynthSpec, generate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m casn_core synth``."""
    parser.add_argument("--out", required=True, help="output folder (Market-1501 layout)")
    parser.add_argument("--ids", type=int, required=True, help="number of identities (half train, half test)")
    parser.add_argument("--cameras", type=int, required=True, help=f"number of cameras (2..{MAX_CAMERAS})")
    parser.add_argument("--images-per-id", type=int, required=True, help="images per identity")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0,
                        help="rendering processes (default 0: render in this process; each worker process pays "
                             "a few seconds of start-up, so use them for large sets on many cores; same output)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m casn_core synth``; returns the exit status."""
    workers = int(getattr(args, "workers", 0) or 0)
    started = time.perf_counter()
    try:
        spec = SynthSpec(args.ids, args.cameras, args.images_per_id, args.seed, args.height, args.width)
        manifest = generate_dataset(args.out, spec, workers, getattr(args, "overwrite", False))
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    parts = ", ".join(f"{s} {v['images']} images / {v['ids']} ids" for s, v in manifest["splits"].items())
    print(f"wrote {manifest['num_images']} images and masks to {args.out} ({parts}) in {seconds:.1f} s, "
          f"{manifest['num_images'] / max(seconds, 1e-9):.0f} images/s")
    return 0
