"""Training input: JPEG decoded every step against decoded once (``train --decode-cache``), and what
that does to whole training steps.

Line 1 (``"part": "input"``): milliseconds per augmented training image of each path, the same records
and random draws, and their ratio. Line 2 (``"part": "step"``): images per second of whole CASN training
steps (loader + ``casn_loss`` forward/backward + SGD), the two paths alternating step by step (and
which goes first) in this process so that a busy machine slows both alike; ``ratio`` = decoded / JPEG.

    python bench/train_input.py --data /path/to/Market-1501 [--height 256 --width 128 --losses ide,ia,sa]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from casn_core.data import PairDataset, PairSampling, build_train_transform, load_market
from casn_core.data.decoded import DecodedImages, build_uint8_train_transform
from casn_core.engine.inference import autocast_context
from casn_core.losses import LossConfig, casn_loss
from casn_core.models import build_model


def _pair_sets(args, records, cache_dir):
    jpeg = PairDataset(records, build_train_transform(args.height, args.width), PairSampling(seed=0))
    images = DecodedImages(records, args.height, args.width, cache_dir, progress=False)
    decoded = PairDataset(records, build_uint8_train_transform(args.height, args.width), PairSampling(seed=0),
                           images=images)
    return {"jpeg": jpeg, "decoded": decoded}


def time_input(sets: dict, pairs: int) -> dict:
    out = {}
    for name, dataset in sets.items():
        torch.manual_seed(0)
        started = time.perf_counter()
        for index in range(pairs):
            dataset[index]
        out[f"{name}_ms_per_image"] = round(1000 * (time.perf_counter() - started) / (2 * pairs), 3)
    out["ratio"] = round(out["jpeg_ms_per_image"] / out["decoded_ms_per_image"], 2)
    return out


def time_steps(args, sets: dict, num_classes: int) -> dict:
    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=num_classes, pretrained="none").train()
    model = model.to(memory_format=torch.channels_last)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = LossConfig.from_names(args.losses)
    seconds = {name: [] for name in sets}
    names = list(sets)
    for step in range(args.warmup + args.steps):
        # the order alternates: the second step of a pair runs measurably slower on a busy CPU
        for name in (names if step % 2 == 0 else names[::-1]):
            dataset = sets[name]
            started = time.perf_counter()
            items = [dataset[step * args.batch_size + i] for i in range(args.batch_size)]
            batch = [torch.stack([item[0] for item in items]), torch.stack([item[1] for item in items]),
                     torch.tensor([item[2] for item in items]) % num_classes,
                     torch.tensor([item[3] for item in items]) % num_classes,
                     torch.tensor([item[4] for item in items])]
            batch[0] = batch[0].contiguous(memory_format=torch.channels_last)
            batch[1] = batch[1].contiguous(memory_format=torch.channels_last)
            with autocast_context(torch.device("cpu"), args.amp):
                terms = casn_loss(model, *batch, config)
            optimiser.zero_grad(set_to_none=True)
            terms.total.backward()
            optimiser.step()
            if step >= args.warmup:
                seconds[name].append(time.perf_counter() - started)
    images = 2 * args.batch_size
    out = {f"{name}_images_per_s": round(images / statistics.median(times), 2) for name, times in seconds.items()}
    out["ratio"] = round(out["decoded_images_per_s"] / out["jpeg_images_per_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="Market-layout dataset root (bounding_box_train/)")
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--images", type=int, default=2000, help="training images used (decoded once)")
    parser.add_argument("--pairs", type=int, default=400, help="pairs timed for the input line")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--losses", default="ide,ia,sa")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--amp", default="bf16", choices=("none", "bf16"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    records = list(load_market(args.data, splits=("train",)).train)[: args.images]
    with tempfile.TemporaryDirectory() as cache_dir:
        sets = _pair_sets(args, records, cache_dir)
        common = {"height": args.height, "width": args.width, "threads": torch.get_num_threads()}
        print(json.dumps({"part": "input", **common, **time_input(sets, args.pairs)}), flush=True)
        num_classes = max(r.label for r in records) + 1
        print(json.dumps({"part": "step", "backbone": args.backbone, "losses": args.losses, "amp": args.amp,
                          "batch_pairs": args.batch_size, **common, **time_steps(args, sets, num_classes)}), flush=True)


if __name__ == "__main__":
    main()
