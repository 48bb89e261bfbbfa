"""Attention quality of a trained CASN model on generated data with person masks (command line).

The measurements (mass inside the person mask, consistency distances, deletion curves) are
:func:`casn_core.attention.quality.attention_quality`; see its module docstring.

    python bench/attention_quality.py --checkpoint RUN/last.pt --data SYNTH_ROOT [--json out.json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from casn_core.attention.quality import QualitySettings, attention_quality
from casn_core.checkpoint import checkpoint_info, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a CASN checkpoint (last.pt of a training run)")
    parser.add_argument("--data", required=True, help="a dataset written by `python -m casn_core synth` (has masks/)")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--deletion-pairs", type=int, default=48)
    parser.add_argument("--deletion-steps", type=int, default=10)
    parser.add_argument("--max-fraction", type=float, default=0.5)
    parser.add_argument("--amp", choices=("none", "bf16"), default="none")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, payload = load_model(args.checkpoint, torch.device("cpu"))
    info = checkpoint_info(payload)
    settings = QualitySettings(info.threshold, args.amp, args.pairs, args.deletion_pairs, args.deletion_steps,
                               args.max_fraction)
    result = attention_quality(model, args.data, info.input_size, settings)
    result = {"bench": "attention_quality", "checkpoint": args.checkpoint,
              "losses": payload.get("train_config", {}).get("losses"), **result}
    print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
