"""Training: ``python -m casn_core train`` (single process, or DDP under ``torchrun``).

Paper sec. 4 defaults: SGD momentum 0.9, lr 0.03, lr x0.1 at 3/4 of the epochs (30 of 40), batch
16 pairs, lambda1 0.5, lambda2 0.05, alpha 0.2, half positive and half negative pairs. Options marked
"ours" in :class:`TrainConfig` are not in the paper; each defaults to the paper's behaviour.

Every epoch writes ``RUN_DIR/last.pt`` atomically (weights, optimizer, scheduler, epoch, the full
config; the random state is seeded per epoch, and saved only inside one, see :mod:`casn_core.engine.epoch`), and ``best.pt`` when ``--eval-every`` asks for evaluation on the test split. The
data order and the random augmentation of epoch ``e`` are seeded from ``(seed, e)``, so ``--resume``
continues exactly where a run stopped and reproduces the uninterrupted run. With ``--val-ids N``,
N training identities are held out and the ranking weight w (and K) is chosen on them after the last
epoch (:mod:`casn_core.engine.tune`) and stored as ``payload["ranking"]``.

``train()`` is a sequence of named steps: :func:`setup_run`, :func:`build_data`, :func:`build_model`,
:func:`resume_state`, :func:`~casn_core.engine.epoch.run_epoch` (which also writes ``last.pt`` every
``--save-every`` steps), :func:`save_epoch`, :func:`finish_bce_head` (``--head-steps``),
:func:`tune_after_training` (``--val-ids``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from casn_core.atomic import write_json_atomic, write_text_atomic
from casn_core.checkpoint import (
    CheckpointError, load_checkpoint, model_from_checkpoint, remove_stale_temporaries, save_checkpoint,
)
from casn_core.dist import init_distributed, launch_environment
from casn_core.engine.epoch import PARTIAL_KEY, epoch_payload, run_epoch, training_features
from casn_core.engine.extraction import resolve_device
from casn_core.losses import LossConfig, LossTerms, casn_loss
from casn_core.engine.train_config import TrainConfig
from casn_core.engine.train_state import (  # noqa: F401  (NonFiniteLossError, TrainResult, relabel re-exported)
    NonFiniteLossError, RunContext, TrainData, TrainResult, TrainState, relabel,
)
from casn_core.models.casn import CASN, ModelConfig

log = logging.getLogger("casn_core.train")


class TrainStep(nn.Module):
    """Wraps the model so that the whole loss of eq. 6 is one ``forward`` (what DDP needs)."""

    def __init__(self, model: CASN, loss_config: LossConfig) -> None:
        super().__init__()
        self.model = model
        self.loss_config = loss_config

    def forward(self, images1, images2, labels1, labels2, same) -> LossTerms:  # noqa: D401
        return casn_loss(self.model, images1, images2, labels1, labels2, same, self.loss_config)


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


@contextlib.contextmanager
def _run_log_also_gets(name: str):
    """While inside, the records of logger ``name`` (at INFO) also reach the run's log handlers."""
    other = logging.getLogger(name)
    level, propagate, added = other.level, other.propagate, [h for h in log.handlers if h not in other.handlers]
    other.setLevel(logging.INFO)
    other.propagate = False  # as the run's own logger: a configured root logger would print each record twice
    for handler in added:
        other.addHandler(handler)
    try:
        yield
    finally:
        for handler in added:
            other.removeHandler(handler)
        other.setLevel(level)
        other.propagate = propagate


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
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def setup_run(config: TrainConfig) -> RunContext:
    """Step 1: rank/world from torchrun, the device, the process group (created here only when the
    caller has none), the run folder and the log."""
    rank = launch_environment()[0]
    run_dir = Path(config.out)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    _setup_logging(run_dir, rank == 0)
    launch = init_distributed(resolve_device(config.device))
    if launch.is_main:
        remove_stale_temporaries(run_dir)
    return RunContext(launch.rank, launch.world_size, launch.device, run_dir, launch.owns_group)


def build_data(config: TrainConfig, world: int = 1) -> TrainData:
    """Step 2: check and relabel the training images, hold out ``--val-ids`` identities, build the pairs."""
    from casn_core.data import PairDataset, PairSampling, build_train_transform, load_market
    from casn_core.engine.tune import validation_split

    dataset = load_market(config.data, splits=("train",))
    records = _bad_image_report(list(dataset.train), config.skip_bad_images)
    val_query: list = []
    val_gallery: list = []
    if config.val_ids:
        records, val_query, val_gallery = validation_split(records, config.val_ids, config.seed)
    records, num_classes = relabel(records)
    images = None
    if config.decode_cache:
        from casn_core.data.decoded import DecodedImages, build_uint8_train_transform

        images = DecodedImages(records, config.height, config.width, config.decode_cache)
        transform = build_uint8_train_transform(config.height, config.width, random_erasing=config.random_erasing)
    else:
        transform = build_train_transform(config.height, config.width, random_erasing=config.random_erasing)
    sampling = PairSampling(config.positive_fraction, config.pairs_per_epoch, config.seed,
                            hard_fraction=config.hard_negatives,
                            identity_batch=config.batch_size if config.identity_batches else None, world=world)
    pairs = PairDataset(records, transform, sampling, images=images)
    return TrainData(pairs, records, num_classes, val_query, val_gallery)


def build_model(config: TrainConfig, num_classes: int, ctx: RunContext, resume: bool) -> TrainState:
    """Step 3: the model (fresh, or from ``last.pt`` with ``resume``), optimizer and lr schedule."""
    model_config = ModelConfig(backbone=config.backbone, num_classes=num_classes,
                               last_stride=config.last_stride, dropout=config.dropout)
    state = resume_state(config, num_classes, ctx) if resume else None
    if state is not None:
        model = model_from_checkpoint(state, ctx.last_path,
                                      expect={"backbone": config.backbone, "num_classes": num_classes})
    elif config.init_checkpoint:
        torch.manual_seed(config.seed)
        model = model_from_checkpoint(load_checkpoint(config.init_checkpoint), config.init_checkpoint,
                                      expect={"backbone": config.backbone, "num_classes": num_classes,
                                              "last_stride": config.last_stride})
        model.train()
    else:
        torch.manual_seed(config.seed)
        model = CASN(model_config, pretrained=config.pretrained)
    model.to(ctx.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[lr_milestone(config)], gamma=0.1)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=config.amp == "fp16")
    train_state = TrainState(model, model_config, optimizer, scheduler, scaler=scaler)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        scheduler.load_state_dict(state["scheduler"])
        train_state.start_epoch = int(state["epoch"]) + 1
        train_state.best_map = float(state.get("best_map", -1.0))
        train_state.head_done = bool(state.get("head_stage"))
        train_state.partial = state.get(PARTIAL_KEY)
        if train_state.partial and int(train_state.partial.get("world", 1)) != ctx.world:
            raise CheckpointError(
                f"{ctx.last_path} stopped inside epoch {train_state.start_epoch + 1} of a run on "
                f"{train_state.partial.get('world', 1)} process(es); resume it on as many (the pairs it has "
                f"not trained on are that run's), or resume the previous epoch's end")
        if ctx.is_main:
            _trim_metrics(ctx.run_dir / "metrics.jsonl", train_state.start_epoch)
        if train_state.partial:
            log.info("resumed from %s inside epoch %d, before step %d", ctx.last_path,
                     train_state.start_epoch + 1, int(train_state.partial["step"]) + 1)
        else:
            log.info("resumed from %s after epoch %d", ctx.last_path, train_state.start_epoch)
    return train_state


def resume_state(config: TrainConfig, num_classes: int, ctx: RunContext) -> dict:
    """Step 3a: ``last.pt``, refused when a setting that shapes the run has changed."""
    state = load_checkpoint(ctx.last_path)
    missing = [key for key in ("optimizer", "scheduler", "train_config") if key not in state]
    if missing:
        raise CheckpointError(f"{ctx.last_path} cannot be resumed: it has no {', '.join(missing)} state (an "
                              f"exported checkpoint keeps only the model; --init-checkpoint starts a new run from it)")
    saved = TrainConfig(**state["train_config"]).resume_key()
    now = config.resume_key()
    if saved != now:
        changed = {k: (v, now[k]) for k, v in saved.items() if now[k] != v}
        raise CheckpointError(f"{ctx.last_path}: cannot resume with different settings (saved, now): {changed}")
    return state


def wrap_step(config: TrainConfig, state: TrainState, ctx: RunContext) -> nn.Module:
    """Step 4: the loss module (compiled backbone, DDP wrapper when distributed)."""
    loss_config = config.loss_config()
    step_module: nn.Module = TrainStep(state.model, loss_config)
    if config.compile:
        state.model.backbone.compile()  # in place: state_dict keys stay unprefixed, checkpoints stay portable
    if ctx.world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=not loss_config.use_sa,
        )
    return step_module


def save_epoch(config: TrainConfig, ctx: RunContext, state: TrainState, epoch: int, record: dict) -> None:
    """Step 6 (main process): optional test evaluation and ``best.pt``, the metrics line, ``last.pt``."""
    payload = epoch_payload(config, state, epoch)
    if config.eval_every and (epoch + 1) % config.eval_every == 0:
        from casn_core.engine.evaluate import evaluate_model
        from casn_core.engine.extraction import ExtractionConfig
        from casn_core.rankings import paper_ranking

        extraction = ExtractionConfig((config.height, config.width), amp=config.amp, progress=False)
        results = evaluate_model(state.model, config.data, extraction,
                                 [paper_ranking(config.threshold, config.eval_topk)])
        record["eval"] = results
        if results["feature"]["mAP"] > state.best_map:
            state.best_map = results["feature"]["mAP"]
            payload["best_map"] = state.best_map
            save_checkpoint(ctx.run_dir / "best.pt", payload)
        state.model.train()
    # metrics first: a crash between the two writes repeats this epoch on --resume, and
    # _trim_metrics then drops the record of the epoch that the checkpoint does not hold
    with open(ctx.run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    save_checkpoint(ctx.last_path, payload)
    log.info("epoch %d: %s", epoch + 1, json.dumps({k: v for k, v in record.items() if k != "eval"}))
    if "eval" in record:
        log.info("epoch %d eval: %s", epoch + 1, json.dumps(record["eval"]))


def finish_bce_head(config: TrainConfig, ctx: RunContext, state: TrainState, data: TrainData) -> dict | None:
    """Step 6b (main process, ``--head-steps``, ours): train only the BCE head (eq. 3) on frozen features.

    Measured (BENCHMARKS.md, "Siamese signals"): in joint training the head chases features that move
    under it, and ends far from what it can reach on the final ones. Each step draws ``batch_size``
    pairs (``positive_fraction`` positive, seeded by ``(seed, "head")``) from the features of the
    unaugmented training images, extracted once. The head keeps its dropout and BatchNorm in train
    mode, as in joint training. Returns ``{"head_steps", "head_loss_first", "head_loss_last"}``
    (mean L_bce of the first and last 10% of the steps); the caller saves ``last.pt``.
    """
    if not config.head_steps:
        return None
    import numpy as np

    from casn_core.data.pairs import pair_indices
    from casn_core.losses import bce_loss

    feats = training_features(state.model, data.records, config)
    labels = np.array([r.label for r in data.records])
    head = state.model.bce_head
    optimizer = torch.optim.SGD(head.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    rng = np.random.default_rng([config.seed, 0x4EAD])
    torch.manual_seed(config.seed * 1000 + config.epochs)  # the head's dropout
    head.train()
    losses = []
    for _ in range(config.head_steps):
        rows = torch.as_tensor(pair_indices(labels, config.batch_size, config.positive_fraction, rng),
                               device=feats.device)
        loss = bce_loss(head(feats[rows[:, 0]] - feats[rows[:, 1]]), rows[:, 2])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    state.model.train()
    tenth = max(1, len(losses) // 10)
    summary = {"head_steps": config.head_steps, "head_loss_first": sum(losses[:tenth]) / tenth,
               "head_loss_last": sum(losses[-tenth:]) / tenth}
    log.info("BCE head trained alone for %d steps on frozen features: L_bce %.3f -> %.3f", config.head_steps,
             summary["head_loss_first"], summary["head_loss_last"])
    return summary


def tune_after_training(config: TrainConfig, ctx: RunContext, state: TrainState, data: TrainData) -> dict | None:
    """Step 7 (main process, ``--val-ids``): choose w and K on the held-out identities, log the curve,
    write ``tune.json`` and store ``payload["ranking"]`` in ``last.pt`` (and ``best.pt``)."""
    if not config.val_ids:
        return None
    from casn_core.engine.pair_signals import extract_records
    from casn_core.engine.tune import tune_ranking

    was_training = state.model.training
    state.model.eval()
    size = (config.height, config.width)
    query = extract_records(state.model, data.val_query, size, desc="validation query")
    gallery = extract_records(state.model, data.val_gallery, size, desc="validation gallery")
    with _run_log_also_gets(tune_ranking.__module__):  # the validation curve, row by row, into train.log
        result = tune_ranking(state.model, query, gallery, config.threshold, rule=config.val_rule)
    state.model.train(was_training)
    entry = result.ranking_entry(f"train --val-ids {config.val_ids} (held-out training identities)")
    log.info("ranking chosen on %d validation identities: w = %g, K = %s (mAP %.2f%%, feature %.2f%%)",
             config.val_ids, result.attention_weight, result.topk, 100 * result.mAP, 100 * result.feature_mAP)
    write_json_atomic(ctx.run_dir / "tune.json", entry, indent=1)
    for path in (ctx.last_path, ctx.run_dir / "best.pt"):
        if path.is_file():
            payload = {k: v for k, v in load_checkpoint(path).items() if k not in ("format", "version")}
            payload["ranking"] = entry
            save_checkpoint(path, payload)
    return entry


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train CASN (see the module docstring). Under torchrun the process group is created here
    and destroyed at the end, unless the caller had already created it."""
    ctx = setup_run(config)
    data = build_data(config, ctx.world)
    state = build_model(config, data.num_classes, ctx, resume)
    step_module = wrap_step(config, state, ctx)
    if ctx.is_main and config.save_every and ctx.world > 1:
        log.warning("--save-every is for one process: under torchrun (%d processes) last.pt is written at "
                    "epoch ends only", ctx.world)
    if ctx.is_main:
        log.info("training %s on %s: %d images, %d identities, %d pairs/epoch, device %s x%d, losses %s",
                 config.backbone, config.data, len(data.records), data.num_classes, len(data.pairs), ctx.device,
                 ctx.world, config.losses)
    record: dict = {}
    durations: list[float] = []
    for epoch in range(state.start_epoch, config.epochs):
        record = run_epoch(config, ctx, state, step_module, data, epoch, progress)
        if ctx.is_main:
            save_epoch(config, ctx, state, epoch, record)
            durations.append(record["seconds"])
            left = config.epochs - epoch - 1
            log.info("epoch %d/%d took %.0f s (%.1f images/s); %d to go, ETA %.1f min", epoch + 1, config.epochs,
                     record["seconds"], record["images_per_s"], left, left * sum(durations) / len(durations) / 60)
        if ctx.world > 1:
            dist.barrier()
    if ctx.is_main and config.head_steps and not state.head_done:
        head = finish_bce_head(config, ctx, state, data)
        payload = epoch_payload(config, state, config.epochs - 1)
        payload["head_stage"] = head
        save_checkpoint(ctx.last_path, payload)
        record["head_stage"] = head
    if ctx.is_main:
        ranking = tune_after_training(config, ctx, state, data)
        if ranking is not None:
            record["ranking"] = {k: v for k, v in ranking.items() if k != "curve"}
    if ctx.world > 1 and ctx.owns_group:
        dist.destroy_process_group()
    return TrainResult(record, state.model)
