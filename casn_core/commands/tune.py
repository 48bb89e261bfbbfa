"""``casn tune``: choose the ranking's w and K on a validation set and store them in the checkpoint."""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from casn_core.atomic import write_json_atomic
from casn_core.commands import show_library_log
from casn_core.engine.tune import RULES, TOPK_GRID, WEIGHT_GRID, parse_grid, tune_ranking


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m casn_core tune``."""
    parser.add_argument("--checkpoint", required=True, help="checkpoint to tune; rewritten in place (atomically)")
    parser.add_argument("--data", required=True,
                        help="VALIDATION set in the Market layout (query/ and bounding_box_test/ of identities "
                             "held out from training). Never the test split: a weight tuned on the test "
                             "split is fitted to the numbers it is judged by")
    parser.add_argument("--weights", default=",".join(f"{w:g}" for w in WEIGHT_GRID),
                        help="grid of w in d = d_f + w d_a (0 is always added)")
    parser.add_argument("--topk", default=",".join(str(k) for k in TOPK_GRID), help="grid of K ('all' allowed)")
    parser.add_argument("--rule", choices=RULES, default="one-se",
                        help="one-se: the smallest w (then K) within one standard error of the best validation "
                             "mAP (default); best: the best validation mAP")
    parser.add_argument("--out", help="write the tuned checkpoint here instead of over --checkpoint")
    parser.add_argument("--json", help="write the curve and the choice here")
    parser.add_argument("--dry-run", action="store_true", help="report the curve, write no checkpoint")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``python -m casn_core tune``."""
    from casn_core.checkpoint import CheckpointError, checkpoint_info, load_model, save_checkpoint
    from casn_core.engine.pair_signals import dataset_caches

    show_library_log()  # the validation curve, row by row, reaches stderr
    try:
        weights, topks = parse_grid(args.weights, float), parse_grid(args.topk, int)
        model, payload = load_model(args.checkpoint, "cpu")
        info = checkpoint_info(payload)
        query, gallery = dataset_caches(model, args.data, info.input_size)
        result = tune_ranking(model, query, gallery, info.threshold, weights, topks, args.rule)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"chosen: w = {result.attention_weight:g}, K = {result.topk}: validation mAP {100 * result.mAP:.2f}% "
          f"(feature ranking {100 * result.feature_mAP:.2f}%), rank-1 {100 * result.rank1:.2f}% "
          f"(feature {100 * result.feature_rank1:.2f}%)")
    entry = result.ranking_entry(f"casn tune on {args.data}")
    if args.json:
        write_json_atomic(args.json, {"checkpoint": args.checkpoint, **asdict(result)}, indent=1)
    if not args.dry_run:
        payload = {k: v for k, v in payload.items() if k not in ("format", "version")}
        payload["ranking"] = entry
        target = save_checkpoint(args.out or args.checkpoint, payload)
        print(f"stored in {target} as payload['ranking']")
    return 0
