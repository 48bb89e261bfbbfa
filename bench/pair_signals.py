"""How much signal the Siamese side of a checkpoint carries, one JSON object per line.

Over every cross-camera query/gallery pair of a Market-layout set: ROC AUC of the feature distance,
of the attention consistency distance d_a and of the BCE head's p(same) (true vs other pairs, 0.5 =
chance), mean p(same) of each class, and feature vs CASN rank-1/mAP with the checkpoint's stored
ranking weight w and depth K (or the ones given). One line per ``--attention-weight``.

    python bench/pair_signals.py --checkpoint checkpoints/casn_mobilenetv2_synth.pt --data DIR
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from casn_core.checkpoint import checkpoint_info, load_model
from casn_core.engine.pair_signals import dataset_caches, pair_scores, ranking_numbers, signal_summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="Market-layout root with query/ and bounding_box_test/")
    parser.add_argument("--attention-weight", type=float, action="append",
                        help="w of the combined ranking (repeatable; default: the checkpoint's, else 1)")
    parser.add_argument("--topk", type=int, default=None, help="K (default: the checkpoint's stored K, else all, the paper's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, payload = load_model(args.checkpoint, "cpu")
    info = checkpoint_info(payload)
    query, gallery = dataset_caches(model, args.data, info.input_size)
    weights = args.attention_weight or [info.attention_weight]
    topk = args.topk if args.topk is not None else info.default_ranking().topk  # None: all
    signals = signal_summary(pair_scores(model, query, gallery, info.threshold))  # the same for every w
    for weight in weights:
        line = {**signals, **ranking_numbers(model, query, gallery, info.threshold, weight, topk)}
        line.update({"checkpoint": args.checkpoint, "data": args.data, "weight_source":
                     "argument" if args.attention_weight else info.attention_weight_source,
                     "seconds": round(time.perf_counter() - started, 2)})
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
