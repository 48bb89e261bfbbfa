"""Seconds per training step: IDE alone against full CASN (``ide`` vs ``ide,ia,sa``).

One step = ``casn_loss`` forward (both images of every pair through the shared backbone; for CASN
also the differentiable Grad-CAM, the masked-image pass of ``L_ia`` and the Siamese attention of
``L_sa``) + backward + an SGD step (momentum 0.9, the paper's optimiser). Same backbone, same batch,
same random data for both. Warm-up steps are not timed; the median step time is reported.

With ``--amp none,bf16`` one line per precision (autocast around the loss, as ``casn train --amp``),
each with ``vs_first_amp``: its CASN step time over the first precision's, measured in the same process.

With ``--profile`` a line splits one CASN step into its parts (forward + L_ide, the
L_ia branch, the L_sa branch, backward, optimiser step).

    python bench/train_step.py [--backbone resnet18 --batch-size 8 --height 128 --width 64 --steps 6 --amp none,bf16]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from casn_core.losses import (
    LossConfig, casn_loss, identification_attention_loss, ide_loss, siamese_attention_loss,
)
from casn_core.engine.extraction import AMP_CHOICES
from casn_core.engine.inference import autocast_context, resolve_device
from casn_core.models import BACKBONES, build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch(batch: int, height: int, width: int, num_classes: int, device: torch.device, seed: int = 0):
    """``batch`` pairs, half positive (same identity) and half negative."""
    gen = torch.Generator().manual_seed(seed)
    images1 = torch.randn(batch, 3, height, width, generator=gen)
    images2 = torch.randn(batch, 3, height, width, generator=gen)
    labels1 = torch.randint(0, num_classes, (batch,), generator=gen)
    labels2 = (labels1 + 1 + torch.randint(0, num_classes - 1, (batch,), generator=gen)) % num_classes
    same = torch.zeros(batch)
    same[: (batch + 1) // 2] = 1
    labels2 = torch.where(same > 0, labels1, labels2)
    return [t.to(device) for t in (images1, images2, labels1, labels2, same)]


def time_steps(losses: str, args, device: torch.device, amp: str = "none") -> list[float]:
    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=args.num_classes, pretrained="none").to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = LossConfig.from_names(losses)
    data = _batch(args.batch_size, args.height, args.width, args.num_classes, device)
    times = []
    for step in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        optimiser.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            terms = casn_loss(model, *data, config)
        terms.total.backward()
        optimiser.step()
        _sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return times


def profile_casn_step(args, device: torch.device, repeats: int = 3) -> dict:
    """Median seconds of each part of one CASN step (the same computation as ``casn_loss``)."""
    torch.manual_seed(0)
    model = build_model(args.backbone, num_classes=args.num_classes, pretrained="none").to(device).train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    config = LossConfig()
    images1, images2, labels1, labels2, same = _batch(args.batch_size, args.height, args.width, args.num_classes, device)
    parts: dict[str, list[float]] = {}

    def mark(name: str, start: float) -> float:
        _sync(device)
        now = time.perf_counter()
        parts.setdefault(name, []).append(now - start)
        return now

    batch = images1.shape[0]
    for step in range(1 + repeats):
        optimiser.zero_grad(set_to_none=True)
        _sync(device)
        t = time.perf_counter()
        images = torch.cat([images1, images2])
        labels = torch.cat([labels1, labels2])
        out = model(images)
        total = ide_loss(out.logits, labels)
        t = mark("forward_ide_s", t)
        ia, _ = identification_attention_loss(model, images, out.feature_map, out.logits, labels, config.omega, config.sigma)
        total = total + config.lambda1 * ia
        t = mark("ia_forward_s", t)
        sa, *_ = siamese_attention_loss(model, out.feature_map[:batch], out.feature_map[batch:], out.features[:batch],
                                        out.features[batch:], same, config.siamese)
        total = total + config.lambda2 * sa
        t = mark("sa_forward_s", t)
        total.backward()
        t = mark("backward_s", t)
        optimiser.step()
        mark("optimiser_s", t)
        if step == 0:  # warm-up
            parts.clear()
    return {name: round(statistics.median(values), 4) for name, values in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18", choices=BACKBONES)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per step (2x images)")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--num-classes", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per loss setting")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--amp", default="none",
                        help="comma list of precisions to time, each as `casn train --amp` (none, bf16, fp16)")
    parser.add_argument("--profile", action="store_true", help="also print the split of one CASN step (float32)")
    args = parser.parse_args()
    amps = args.amp.split(",")
    if not amps or any(a not in AMP_CHOICES for a in amps):
        parser.error(f"--amp {args.amp!r}: a comma list of {', '.join(AMP_CHOICES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    first_casn = None
    for amp in amps:
        ide = statistics.median(time_steps("ide", args, device, amp))
        casn = statistics.median(time_steps("ide,ia,sa", args, device, amp))
        first_casn = first_casn or casn
        print(json.dumps({
            "bench": "train_step",
            "amp": amp,
            "ide_step_s": round(ide, 4),
            "casn_step_s": round(casn, 4),
            "ratio": round(casn / ide, 2),
            "vs_first_amp": round(casn / first_casn, 2),
            "casn_images_per_s": round(2 * args.batch_size / casn, 1),
            "backbone": args.backbone,
            "batch": args.batch_size,
            "images_per_step": 2 * args.batch_size,
            "height": args.height,
            "width": args.width,
            "device": str(device),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "steps": args.steps,
        }), flush=True)
    if args.profile:
        print(json.dumps({"bench": "train_step_profile", "losses": "ide,ia,sa", "backbone": args.backbone,
                          **profile_casn_step(args, device)}), flush=True)

if __name__ == "__main__":
    main()
