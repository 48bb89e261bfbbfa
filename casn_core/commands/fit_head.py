"""``casn fit-head``: the BCE head (eq. 3) on a frozen torchreid model's features, written as a CASN checkpoint."""
from __future__ import annotations

import argparse
import sys

from casn_core.checkpoint import CheckpointError
from casn_core.commands import show_library_log
from casn_core.engine.fit_head import FitHeadSettings, fit_head
from casn_core.models.torchreid_adapter import DEFAULT_SIZE_TEXT, parse_input_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``casn fit-head``."""
    parser.add_argument("--checkpoint", required=True, help="torchreid checkpoint (its state_dict is read)")
    parser.add_argument("--arch", required=True, help="torchreid model name it was trained as (e.g. osnet_x1_0)")
    parser.add_argument("--input-size", type=parse_input_size, default=DEFAULT_SIZE_TEXT,
                        help=f"HxW the model was trained at (default {DEFAULT_SIZE_TEXT}, torchreid's)")
    parser.add_argument("--data", required=True, help="labelled Market-layout dataset with bounding_box_train/")
    parser.add_argument("--out", required=True, help="the CASN checkpoint to write (model + BCE head)")
    parser.add_argument("--head-steps", type=int, default=FitHeadSettings.head_steps,
                        help="SGD steps of --batch-size pairs (half positive) on the frozen features")
    parser.add_argument("--batch-size", type=int, default=FitHeadSettings.batch_size, help="pairs per step")
    parser.add_argument("--lr", type=float, default=FitHeadSettings.lr, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--val-ids", type=int, default=FitHeadSettings.val_ids,
                        help="identities held out to score p(same) on (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``casn fit-head``."""
    from casn_core.data.market import DatasetError

    show_library_log()
    settings = FitHeadSettings(checkpoint=args.checkpoint, arch=args.arch, data=args.data, out=args.out,
                               input_size=args.input_size, head_steps=args.head_steps, batch_size=args.batch_size,
                               lr=args.lr, val_ids=args.val_ids, seed=args.seed, device=args.device)
    try:
        result = fit_head(settings)
    except (CheckpointError, DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stage = result["head_stage"]
    print(f"BCE head of torchreid:{args.arch}: {stage['head_steps']} steps on {result['train_images']} images of "
          f"{result['train_ids']} identities, L_bce {stage['head_loss_first']:.3f} -> {stage['head_loss_last']:.3f}")
    held = result.get("held_out")
    if held:
        print(f"held-out identities {held['ids']} ({held['images']} images, {held['num_pairs_positive']} true and "
              f"{held['num_pairs_negative']} other cross-camera pairs): p(same) AUC "
              f"{held['auc_same_probability']:.3f}, feature distance AUC {held['auc_feature_distance']:.3f}, "
              f"attention distance AUC {held['auc_attention_distance']:.3f}")
    print(f"wrote {args.out}")
    return 0
