"""Training: ``python -m casn_core train`` (single process, or DDP under ``torchrun``).

Paper sec. 4 defaults: SGD momentum 0.9, lr 0.03, lr x0.1 at 3/4 of the epochs (30 of 40), batch
16 pairs, lambda1 0.5, lambda2 0.05, alpha 0.2, half positive and half negative pairs.

Every epoch writes ``RUN_DIR/last.pt`` atomically (weights, optimizer, scheduler, epoch, RNG state,
the full config), and ``best.pt`` when ``--eval-every`` asks for evaluation on the test split. The
data order and the random augmentation of epoch ``e`` are seeded from ``(seed, e)``, so ``--resume``
continues exactly where a run stopped and reproduces the uninterrupted run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from casn_core.checkpoint import (
    CheckpointError, load_checkpoint, model_from_checkpoint, remove_stale_temporaries, save_checkpoint,
)
from casn_core.engine.inference import autocast_context, resolve_device
from casn_core.losses import LOSS_CHOICES, LossConfig, LossTerms, casn_loss
from casn_core.models.backbones import BACKBONES
from casn_core.models.casn import CASN, ModelConfig

log = logging.getLogger("casn_core.train")


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint."""

    data: str
    out: str
    backbone: str = "resnet50"
    losses: str = "ide,ia,sa"
    epochs: int = 40
    batch_size: int = 16
    height: int = 288
    width: int = 144
    pretrained: str = "imagenet"
    seed: int = 0
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_step_fraction: float = 0.75
    lambda1: float = 0.5
    lambda2: float = 0.05
    alpha: float = 0.2
    threshold: float = 0.3
    positive_fraction: float = 0.5
    pairs_per_epoch: int | None = None
    last_stride: int = 1
    dropout: float = 0.5
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    compile: bool = False
    workers: int = 0
    eval_every: int = 0
    eval_topk: int | None = 100
    max_steps_per_epoch: int | None = None
    skip_bad_images: bool = False
    extra: dict = field(default_factory=dict)

    def loss_config(self) -> LossConfig:
        return LossConfig.from_names(
            self.losses, lambda1=self.lambda1, lambda2=self.lambda2, alpha=self.alpha, threshold=self.threshold
        )

    def resume_key(self) -> dict:
        """The settings that must not change between a run and its ``--resume``."""
        keys = ("backbone", "losses", "epochs", "batch_size", "height", "width", "seed", "lr", "momentum",
                "weight_decay", "lr_step_fraction", "lambda1", "lambda2", "alpha", "threshold",
                "positive_fraction", "pairs_per_epoch", "last_stride", "dropout", "max_steps_per_epoch")
        return {k: getattr(self, k) for k in keys}


@dataclass
class TrainResult:
    """What :func:`train` returns: the last epoch's metrics record and the trained model."""

    record: dict
    model: CASN


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped without overwriting the last good checkpoint."""


class TrainStep(nn.Module):
    """Wraps the model so that the whole loss of eq. 6 is one ``forward`` (what DDP needs)."""

    def __init__(self, model: CASN, loss_config: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.loss_config = loss_config

    def forward(self, images1, images2, labels1, labels2, same) -> LossTerms:  # noqa: D401
        return casn_loss(self.model, images1, images2, labels1, labels2, same, self.loss_config)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m casn_core train`` (defaults are the paper's, sec. 4)."""
    d = TrainConfig(data="", out="")
    parser.add_argument("--data", required=True, help="Market-1501-layout dataset root (bounding_box_train/ ...)")
    parser.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, train.log)")
    parser.add_argument("--backbone", choices=BACKBONES, default=d.backbone)
    parser.add_argument("--losses", choices=LOSS_CHOICES, default=d.losses, help="the paper's ablation rows")
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per step (2x images)")
    parser.add_argument("--height", type=int, default=d.height)
    parser.add_argument("--width", type=int, default=d.width)
    parser.add_argument("--pretrained", default=d.pretrained, help="imagenet, none, or a weight file path")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--momentum", type=float, default=d.momentum)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--lambda1", type=float, default=d.lambda1)
    parser.add_argument("--lambda2", type=float, default=d.lambda2)
    parser.add_argument("--alpha", type=float, default=d.alpha)
    parser.add_argument("--threshold", type=float, default=d.threshold, help="alignment threshold t")
    parser.add_argument("--positive-fraction", type=float, default=d.positive_fraction)
    parser.add_argument("--pairs-per-epoch", type=int, default=None, help="default: one pair per training image")
    parser.add_argument("--last-stride", type=int, choices=(1, 2), default=d.last_stride)
    parser.add_argument("--dropout", type=float, default=d.dropout)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default=d.amp)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    parser.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="evaluate on query/gallery every N epochs and keep best.pt (off by default)")
    parser.add_argument("--eval-topk", default="100", help="CASN re-ranking depth during evaluation, or 'all'")
    parser.add_argument("--max-steps-per-epoch", type=int, default=None, help="cap steps per epoch (smoke tests)")
    parser.add_argument("--skip-bad-images", action="store_true", help="drop unreadable images instead of stopping")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    topk = None if str(args.eval_topk).lower() == "all" else int(args.eval_topk)
    return TrainConfig(
        data=args.data, out=args.out, backbone=args.backbone, losses=args.losses, epochs=args.epochs,
        batch_size=args.batch_size, height=args.height, width=args.width, pretrained=args.pretrained,
        seed=args.seed, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        lambda1=args.lambda1, lambda2=args.lambda2, alpha=args.alpha, threshold=args.threshold,
        positive_fraction=args.positive_fraction, pairs_per_epoch=args.pairs_per_epoch,
        last_stride=args.last_stride, dropout=args.dropout, device=args.device, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, workers=args.workers,
        eval_every=args.eval_every, eval_topk=topk, max_steps_per_epoch=args.max_steps_per_epoch,
        skip_bad_images=args.skip_bad_images,
    )


def _distributed() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))


def _setup_logging(run_dir: Path, is_main: bool) -> None:
    log.setLevel(logging.INFO)
    log.handlers.clear()
    log.propagate = False
    if not is_main:
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    for handler in (logging.StreamHandler(sys.stderr), logging.FileHandler(run_dir / "train.log")):
        handler.setFormatter(fmt)
        log.addHandler(handler)


def lr_milestone(config: TrainConfig) -> int:
    """Epoch at which the lr drops x0.1 (30 of the paper's 40)."""
    return max(1, round(config.lr_step_fraction * config.epochs))


def _bad_image_report(records: list, skip: bool) -> list:
    """Check every training image decodes with the reader training uses (``casn_core.data.read_image``,
    so a truncated JPEG that PIL's header check would pass is caught here, not mid-epoch); report bad
    ones by path; drop them with ``skip``."""
    from casn_core.data import read_image
    from casn_core.images import ImageInputError

    good, bad = [], []
    for record in records:
        try:
            read_image(record.path)
            good.append(record)
        except ImageInputError as exc:  # its message names the file and the reason
            bad.append(str(exc))
    if bad:
        listing = "\n  ".join(bad[:20]) + ("" if len(bad) <= 20 else f"\n  ... and {len(bad) - 20} more")
        if not skip:
            raise ValueError(
                f"{len(bad)} unreadable training image(s); fix or remove them, or pass --skip-bad-images:\n  {listing}"
            )
        log.warning("skipping %d unreadable training image(s):\n  %s", len(bad), listing)
    return good


def _trim_metrics(path: Path, completed_epochs: int) -> None:
    """Keep only the metrics records of epochs the checkpoint holds (1-based ``epoch`` field)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= completed_epochs:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by the crash
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def relabel(records: list) -> tuple[list, int]:
    """Identity labels 0..C-1 in sorted pid order (after any images were dropped)."""
    pids = sorted({r.pid for r in records})
    index = {pid: i for i, pid in enumerate(pids)}
    return [replace(r, label=index[r.pid]) for r in records], len(pids)


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train CASN (see the module docstring). Under torchrun the process group is created here
    and destroyed at the end, unless the caller had already created it."""
    from casn_core.data import PairDataset, build_train_transform, load_market

    rank, world, local_rank = _distributed()
    owns_group = False
    is_main = rank == 0
    run_dir = Path(config.out)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir, is_main)

    device = resolve_device(config.device)
    if world > 1:
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        owns_group = not dist.is_initialized()
        if owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    loss_config = config.loss_config()

    dataset = load_market(config.data, splits=("train",))
    records = _bad_image_report(list(dataset.train), config.skip_bad_images)
    records, num_classes = relabel(records)
    transform = build_train_transform(config.height, config.width)
    pairs = PairDataset(records, transform, config.positive_fraction, config.pairs_per_epoch, config.seed)

    model_config = ModelConfig(backbone=config.backbone, num_classes=num_classes,
                               last_stride=config.last_stride, dropout=config.dropout)
    start_epoch = 0
    state = None
    last_path = run_dir / "last.pt"
    if is_main:
        remove_stale_temporaries(run_dir)
    if resume:
        state = load_checkpoint(last_path)
        saved = TrainConfig(**state["train_config"])
        if saved.resume_key() != config.resume_key():
            changed = {k: (v, config.resume_key()[k]) for k, v in saved.resume_key().items() if config.resume_key()[k] != v}
            raise CheckpointError(f"{last_path}: cannot resume with different settings (saved, now): {changed}")
        model = model_from_checkpoint(state, last_path, expect={"backbone": config.backbone, "num_classes": num_classes})
        start_epoch = int(state["epoch"]) + 1
    else:
        torch.manual_seed(config.seed)
        model = CASN(model_config, pretrained=config.pretrained)
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[lr_milestone(config)], gamma=0.1)
    best_map = -1.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_map = float(state.get("best_map", -1.0))
        if is_main:
            _trim_metrics(run_dir / "metrics.jsonl", start_epoch)
        log.info("resumed from %s after epoch %d", last_path, start_epoch)

    step_module: nn.Module = TrainStep(model, loss_config)
    if config.compile:
        model.backbone.compile()  # in place: state_dict keys stay unprefixed, checkpoints stay portable
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=not loss_config.use_sa,
        )
    if is_main:
        log.info("training %s on %s: %d images, %d identities, %d pairs/epoch, device %s x%d, losses %s",
                 config.backbone, config.data, len(records), num_classes, len(pairs), device, world, config.losses)

    record: dict = {}
    for epoch in range(start_epoch, config.epochs):
        torch.manual_seed(config.seed * 1000 + epoch)  # augmentation and dropout of this epoch
        pairs.set_epoch(epoch)
        sampler = DistributedSampler(pairs, world, rank, shuffle=False) if world > 1 else None
        loader = DataLoader(pairs, batch_size=config.batch_size, sampler=sampler, shuffle=False,
                            num_workers=config.workers, pin_memory=device.type == "cuda", drop_last=True,
                            persistent_workers=False)
        if len(loader) == 0:
            raise ValueError(f"{len(pairs)} pairs per rank cannot fill one batch of {config.batch_size}")
        step_module.train()
        sums: dict[str, float] = {}
        steps, images_seen, started = 0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and is_main), unit="step")
        for step, (images1, images2, labels1, labels2, same) in enumerate(bar):
            if config.max_steps_per_epoch is not None and step >= config.max_steps_per_epoch:
                break
            batch = [t.to(device, non_blocking=True) for t in (images1, images2, labels1, labels2, same)]
            if config.channels_last:
                batch[0] = batch[0].contiguous(memory_format=torch.channels_last)
                batch[1] = batch[1].contiguous(memory_format=torch.channels_last)
            with autocast_context(device, config.amp):
                terms = step_module(*batch)
            if not torch.isfinite(terms.total):
                raise NonFiniteLossError(
                    f"loss is {float(terms.total.detach())} at epoch {epoch + 1}, step {step + 1} "
                    f"(terms {terms.as_floats()}); stopped, {last_path} keeps the last good epoch"
                )
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            values = terms.as_floats()
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
            images_seen += 2 * batch[0].shape[0] * world
            bar.set_postfix(loss=f"{values['total']:.3f}")
        elapsed = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        record = {"epoch": epoch + 1, "lr": lr, "steps": steps, "seconds": round(elapsed, 3),
                  "images_per_s": round(images_seen / max(elapsed, 1e-9), 2),
                  **{f"loss_{k}": v / max(steps, 1) for k, v in sums.items()}}
        if is_main:
            payload = {
                "model": model.state_dict(), "model_config": model_config.to_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "epoch": epoch, "train_config": asdict(config), "input_size": [config.height, config.width],
                "best_map": best_map,
            }
            if config.eval_every and (epoch + 1) % config.eval_every == 0:
                from casn_core.engine.evaluate import evaluate_model

                results = evaluate_model(model, config.data, config.height, config.width, device=device,
                                         amp=config.amp, topk=config.eval_topk, progress=False)
                record["eval"] = results
                if results["feature"]["mAP"] > best_map:
                    best_map = results["feature"]["mAP"]
                    payload["best_map"] = best_map
                    save_checkpoint(run_dir / "best.pt", payload)
                model.train()
            # metrics first: a crash between the two writes repeats this epoch on --resume, and
            # _trim_metrics then drops the record of the epoch that the checkpoint does not hold
            with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            save_checkpoint(last_path, payload)
            log.info("epoch %d: %s", epoch + 1, json.dumps({k: v for k, v in record.items() if k != "eval"}))
            if "eval" in record:
                log.info("epoch %d eval: %s", epoch + 1, json.dumps(record["eval"]))
        if world > 1:
            dist.barrier()
    if world > 1 and owns_group:
        dist.destroy_process_group()
    return TrainResult(record, model)


def run_train(args: argparse.Namespace) -> int:
    """Entry point of ``python -m casn_core train``."""
    config = config_from_args(args)
    try:
        train(config, resume=args.resume)
    except (NonFiniteLossError, CheckpointError, ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0

