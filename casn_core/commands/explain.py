"""``casn explain``: both explanations of one image pair, as JSON and as a figure."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from casn_core.atomic import write_bytes_atomic, write_json_atomic
from casn_core.checkpoint import CheckpointError, checkpoint_info, load_model
from casn_core.engine.explain import explain_files
from casn_core.engine.extraction import resolve_device
from casn_core.models.foreign import NO_HEAD_NOTE, require_explainable
from casn_core.models.torchreid_adapter import add_arch_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--image1", required=True, help="first image (the query)")
    parser.add_argument("--image2", required=True, help="second image (the gallery image)")
    parser.add_argument("--json", help="write the explanation here (PairExplanation.to_json())")
    parser.add_argument("--figure", help="write a PNG figure here")
    parser.add_argument("--threshold", type=float, default=None, help="alignment threshold (default: the checkpoint's)")
    parser.add_argument("--device", default="auto")
    add_arch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``casn explain``."""
    from casn_core.images import ImageInputError
    from casn_core.visualize import explanation_figure, figure_png

    try:
        model, payload = load_model(args.checkpoint, resolve_device(args.device), arch=args.arch,
                                    input_size=args.input_size)
        require_explainable(model)
        info = checkpoint_info(payload)
        threshold = info.threshold if args.threshold is None else args.threshold
        explanation, image1, image2 = explain_files(model, info.input_size, args.image1, args.image2, threshold)
    except (CheckpointError, ImageInputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not info.has_bce_head:
        print(NO_HEAD_NOTE, file=sys.stderr)
    print(f"same-person probability {explanation.same_probability:.4f}  feature distance "
          f"{explanation.feature_distance:.4f}  attention distance {explanation.attention_distance:.4f}  "
          f"similarity {explanation.similarity:.4f}")
    data = explanation.to_json()
    if args.json:
        write_json_atomic(args.json, data)
    if args.figure:
        title = f"{Path(args.image1).name} vs {Path(args.image2).name}"
        write_bytes_atomic(args.figure, figure_png(explanation_figure(image1, image2, data, title)))
    return 0
