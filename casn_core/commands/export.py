"""``casn export``: a checkpoint without its training state, the file to ship."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from casn_core.checkpoint import CheckpointError, checkpoint_info, export_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``casn export``."""
    parser.add_argument("--checkpoint", required=True, help="a training checkpoint (e.g. RUN/last.pt)")
    parser.add_argument("--out", required=True, help="where to write the copy without optimizer state")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``casn export``."""
    try:
        payload = export_checkpoint(args.checkpoint, args.out)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the folder of --out missing or not writable
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    info = checkpoint_info(payload)
    ranking = info.default_ranking()
    size = Path(args.out).stat().st_size / 2**20
    print(f"wrote {args.out} ({size:.1f} MiB): {info.backbone}, {info.num_classes} identities, input "
          f"{info.input_size[0]} x {info.input_size[1]}, epoch {int(payload.get('epoch', -1)) + 1}, "
          f"default ranking {ranking.label()}")
    return 0
