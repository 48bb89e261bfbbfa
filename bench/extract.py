"""Images per second of feature-map extraction: float32 against bfloat16 autocast + channels_last.

Extraction = ``model.feature_map`` (the backbone) + pooling into ``f``, model in eval mode under
``torch.no_grad`` -- what building a gallery cache costs. The fast setting runs the backbone under
``torch.autocast(device_type, dtype=torch.bfloat16)`` with the model and the input in
``channels_last`` memory format. Works on CPU and CUDA (``--device auto`` picks CUDA when present).
One warm-up batch, then ``--repeats`` timed batches; the median is reported.

    python bench/extract.py [--backbone resnet18 --batch-size 16 --height 256 --width 128]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from casn_core.engine.inference import resolve_device
from casn_core.models import BACKBONES, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def images_per_second(model, images: torch.Tensor, fast: bool, repeats: int) -> tuple[float, torch.Tensor]:
    device = images.device
    if fast:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def run() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            maps = model.feature_map(images)
        return model.features(maps.float())

    features = run()  # warm-up (also oneDNN / cuDNN kernel selection)
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return images.shape[0] / statistics.median(times), features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", choices=BACKBONES)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    torch.manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.height, args.width, device=device)
    model = build_model(args.backbone, num_classes=751, pretrained="none").to(device).eval()
    fp32, ref = images_per_second(model, images, fast=False, repeats=args.repeats)
    fast, feats = images_per_second(model, images, fast=True, repeats=args.repeats)
    cosine = torch.nn.functional.cosine_similarity(ref.float(), feats.float(), dim=1).min()
    print(json.dumps({
        "bench": "extract",
        "fp32_images_per_s": round(fp32, 2),
        "fast_images_per_s": round(fast, 2),
        "ratio": round(fast / fp32, 2),
        "fast": "bf16 autocast + channels_last",
        "min_feature_cosine": round(float(cosine), 5),
        "backbone": args.backbone,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "batch": args.batch_size,
        "size": [args.height, args.width],
    }), flush=True)

if __name__ == "__main__":
    main()
